"""Per-trial artifacts of a sweep: confusion heat map, per-class CSV and weight plots.

The files are written here and uploaded to MLflow by the caller, so this module stays free of
torch and mlflow and can be tested on its own. Figures follow Guo et al. (NeurIPS 2022): classes
are shown head first (Fig. 2) and learned per-sample weights are grouped by class (Fig. 1).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: trials run on workers without a display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker

__all__ = [
    "frequency_order",
    "mass_plot_classes",
    "ordered_normalised_confusion",
    "selection_note",
    "write_confusion_png",
    "write_fig1_png",
    "write_fig2_png",
    "write_per_class_csv",
    "write_weight_png",
]

_MAX_TICK_LABELS = 30  # above this many classes the tick labels are unreadable
_MAX_MASS_LINES = 20  # above this many classes only the head and tail are drawn
_MAX_LEGEND = 10
_DPI = 120


def frequency_order(train_counts: Sequence[int]) -> list[int]:
    """Class indices by training count, descending; ties by class index so plots are stable."""
    return sorted(range(len(train_counts)), key=lambda c: (-train_counts[c], c))


def ordered_normalised_confusion(
    confusion: Sequence[Sequence[int]], train_counts: Sequence[int]
) -> tuple[np.ndarray, list[int]]:
    """Row-normalise a confusion matrix and re-order rows and columns head classes first.

    Rows are true classes, columns predicted ones. A row with no test samples stays all zeros
    rather than NaN so the heat map has no holes. Returns the matrix and the order used.
    """
    k = len(train_counts)
    rows = list(confusion)
    if k == 0 or len(rows) != k or any(len(r) != k for r in rows):
        shape = f"{len(rows)} rows of lengths {sorted({len(r) for r in rows})}"
        raise ValueError(
            f"confusion must be {k} x {k} (one per class in train_counts); got {shape}"
        )
    counts = np.asarray(rows, dtype=float)
    if (counts < 0).any():
        raise ValueError("confusion must not contain negative counts")
    support = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, support, out=np.zeros_like(counts), where=support > 0)
    order = frequency_order(train_counts)
    return normalised[np.ix_(order, order)], order


def write_confusion_png(
    confusion: Sequence[Sequence[int]],
    train_counts: Sequence[int],
    path: Path,
    *,
    title: str = "",
) -> list[int]:
    """Draw the row-normalised confusion matrix, head classes first, to ``path`` as a PNG.

    Ordering by training frequency makes the tail's collapse onto head classes visible as mass
    in the lower-left. Returns the class order used on both axes.
    """
    matrix, order = ordered_normalised_confusion(confusion, train_counts)
    k = len(order)
    fig, ax = plt.subplots(figsize=(6.0, 5.0), dpi=_DPI)
    try:
        image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        fig.colorbar(image, ax=ax, label="fraction of true class")
        ax.set_ylabel("true class (by training frequency)")
        ax.set_xlabel("predicted class")
        if k <= _MAX_TICK_LABELS:
            ticks = list(range(k))
            names = [str(c) for c in order]
            ax.set_xticks(ticks, names, rotation=90 if k > 10 else 0)
            ax.set_yticks(ticks, names)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        if title:
            ax.set_title(title)
        _save(fig, path, layout=True)
    finally:
        plt.close(fig)
    return order


def write_per_class_csv(
    per_class_acc: Sequence[float | None], train_counts: Sequence[int], path: Path
) -> None:
    """Write ``class,train_count,test_accuracy`` rows in class-index order; None -> empty cell.

    A class without test samples has no accuracy; an empty cell keeps it distinct from 0.
    """
    if len(per_class_acc) != len(train_counts):
        raise ValueError(
            f"per_class_acc has {len(per_class_acc)} entries but train_counts has "
            f"{len(train_counts)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "train_count", "test_accuracy"])
        for c, (acc, count) in enumerate(zip(per_class_acc, train_counts, strict=True)):
            # float() so numpy scalars are written as plain numbers, not "np.float64(...)"
            writer.writerow([c, int(count), "" if acc is None else float(acc)])


def selection_note(
    per_class_acc: Sequence[float | None],
    train_counts: Sequence[int],
    *,
    epoch: int,
    run_id: str,
    learned_mass: Sequence[float] | None = None,
    start_mass: Sequence[float] | None = None,
    figures: Sequence[str] = (),
) -> str:
    """A run's description (Markdown; MLflow shows it first on the run's page): the
    validation-selected epoch's per-class test accuracy and, where weights were learned, each
    class's weight mass at that epoch beside its start and 1/K, then the run's ``figures``
    (PNG artifact names) inline. Classes head first; beyond 20, the 10 most and 10 least
    frequent (the CSV artifact holds all)."""
    k = len(train_counts)
    if len(per_class_acc) != k:
        raise ValueError(f"per_class_acc has {len(per_class_acc)} entries but {k} classes")
    has_mass = learned_mass is not None and start_mass is not None
    head = f"**Validation-selected model, stage-2 epoch {epoch}**: test accuracy per class"
    if has_mass:
        head += f", and the learned weight mass beside its start (balanced share 1/K = {1 / k:.3g})"
    cols = ["class", "train n", "test acc (%)"]
    if has_mass:
        cols += ["mass at start", "learned mass", "learned / start"]
    rows = [head + ":", "", "| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
    many = k > _MAX_MASS_LINES
    shown = mass_plot_classes(k, train_counts) if many else frequency_order(train_counts)
    for i, c in enumerate(shown):
        if many and i == _MAX_MASS_LINES // 2:
            rows.append("| … |" + " |" * (len(cols) - 1))
        acc = per_class_acc[c]
        cells = [str(c), str(int(train_counts[c])), "–" if acc is None else f"{float(acc):.1f}"]
        if has_mass:
            start, learned = float(start_mass[c]), float(learned_mass[c])
            ratio = f"{learned / start:.2f}×" if start > 0 else "–"
            cells += [f"{start:.3g}", f"{learned:.3g}", ratio]
        rows.append("| " + " | ".join(cells) + " |")
    if many:
        rows += ["", f"The 10 most and 10 least frequent of {k} classes: all in per_class_acc.csv."]
    for name in figures:
        rows += ["", f"![{name}](get-artifact?path={name}&run_uuid={run_id})"]
    return "\n".join(rows)


def mass_plot_classes(num_classes: int, train_counts: Sequence[int] | None = None) -> list[int]:
    """Classes drawn in the weight-mass panel: all of them, or head and tail when there are many.

    Beyond 20 lines the plot is unreadable, so it keeps the 10 most and 10 least frequent
    classes (by ``train_counts``), or the first 20 when counts are unknown.
    """
    if num_classes <= _MAX_MASS_LINES:
        return list(range(num_classes))
    if train_counts is None:
        return list(range(_MAX_MASS_LINES))
    order = frequency_order(train_counts)
    half = _MAX_MASS_LINES // 2
    return order[:half] + order[-half:]


def write_weight_png(
    weight_mass: Sequence[Sequence[float]],
    path: Path,
    *,
    sample_weights: Sequence[float] | None = None,
    labels: Sequence[int] | None = None,
    train_counts: Sequence[int] | None = None,
    raw_mass: Sequence[Sequence[float]] | None = None,
    raw_sample_weights: Sequence[float] | None = None,
    start_mass: Sequence[float] | None = None,
) -> None:
    """Plot how the learned weights distribute over classes, to ``path`` as a PNG.

    Left: total weight mass per class over stage-2 epochs (``weight_mass[e][c]``), from
    ``start_mass`` (the mass before the first OT step, drawn at epoch 0, "start") where given,
    against the balanced share 1/K: with uniform starting weights a tail class starts far
    below 1/K, and a learned mass under 1/K may still be several times its start. Right, when
    ``sample_weights`` and ``labels`` are given: each training sample's weight grouped by
    class, head classes first, as in Fig. 1 of Guo et al. Positive weights are drawn on log
    scales, so a head class's mass leaves the tail's readable, and the per-sample axis spans
    the central 98% of the weights and the class means: a few outlying samples are counted in
    a note on the panel instead of flattening the rest. With ``raw_mass``
    (stage2.loss_weights=raw), a second row shows the raw weights the CE multiplies
    (per-class sums against their mean, and per sample), each row labelled.
    """
    mass = _validate_mass(weight_mass)
    k = mass.shape[1]
    if train_counts is not None and len(train_counts) != k:
        raise ValueError(f"train_counts has {len(train_counts)} entries but weight_mass has {k}")
    if start_mass is not None and len(start_mass) != k:
        raise ValueError(f"start_mass has {len(start_mass)} entries but weight_mass has {k}")
    if (sample_weights is None) != (labels is None):
        raise ValueError("sample_weights and labels must be given together")
    two_panels = sample_weights is not None and labels is not None
    if two_panels:
        weights, classes = _validate_samples(sample_weights, labels, k)
    rows = [("", mass, weights if two_panels else None)]
    if raw_mass is not None:
        raw = _validate_mass(raw_mass)
        if raw.shape[1] != k:
            raise ValueError(f"raw_mass has {raw.shape[1]} classes but weight_mass has {k}")
        raw_w = None
        if two_panels:
            if raw_sample_weights is None:
                raise ValueError("raw_sample_weights must come with sample_weights")
            raw_w, _ = _validate_samples(raw_sample_weights, labels, k)
        rows = [
            ("softmax mass (the OT measure): ", mass, rows[0][2]),
            ("raw weights (what the CE multiplies): ", raw, raw_w),
        ]
    cols = 2 if two_panels else 1
    fig, axes = plt.subplots(
        len(rows), cols, figsize=(6.0 * cols, 4.5 * len(rows)), squeeze=False, dpi=_DPI
    )
    try:
        for r, (prefix, m, w) in enumerate(rows):
            reference = None if r == 0 else float(m[-1].sum()) / k
            start = start_mass if r == 0 else None  # the softmax mass's start, not the raw's
            _draw_mass(axes[r][0], m, train_counts, prefix=prefix, reference=reference, start=start)
            if two_panels:
                _draw_samples(axes[r][1], w, classes, k, train_counts, prefix=prefix)
        _save(fig, path, layout=True)
    finally:
        plt.close(fig)


def _validate_mass(weight_mass: Sequence[Sequence[float]]) -> np.ndarray:
    rows = list(weight_mass)
    if not rows:
        raise ValueError("weight_mass is empty; expected E x K with E >= 1 epochs")
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise ValueError(f"weight_mass is not rectangular: row lengths {sorted(lengths)}")
    if 0 in lengths:
        raise ValueError("weight_mass has no classes; expected E x K with K >= 1")
    return np.asarray(rows, dtype=float)


def _validate_samples(
    sample_weights: Sequence[float], labels: Sequence[int], k: int
) -> tuple[np.ndarray, np.ndarray]:
    if len(sample_weights) != len(labels):
        raise ValueError(
            f"sample_weights has {len(sample_weights)} entries but labels has {len(labels)}"
        )
    weights = np.asarray(sample_weights, dtype=float).reshape(-1)
    classes = np.asarray(labels, dtype=int).reshape(-1)
    if classes.size and (classes.min() < 0 or classes.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}) to match weight_mass")
    return weights, classes


def _draw_mass(
    ax: plt.Axes,
    mass: np.ndarray,
    train_counts: Sequence[int] | None,
    *,
    prefix: str = "",
    reference: float | None = None,
    start: Sequence[float] | None = None,
) -> None:
    """``reference``: the level of the balanced line (default 1/K, for normalised weights);
    ``start``: each class's mass before the first OT step, the curves' first point (epoch 0)."""
    epochs, k = mass.shape
    x = np.arange(1, epochs + 1)
    if start is not None:
        x = np.arange(0, epochs + 1)
        mass = np.vstack([np.asarray(start, dtype=float)[None, :], mass])
    # a single epoch would otherwise draw nothing; a start is marked where each class begins
    marker = "o" if len(x) == 1 or start is not None else None
    every = [0] if start is not None else None
    shown = mass_plot_classes(k, train_counts)
    for c in shown:
        name = f"class {c}" if train_counts is None else f"class {c} (n={train_counts[c]})"
        ax.plot(x, mass[:, c], marker=marker, markevery=every, linewidth=1.2, label=name)
    level = 1.0 / k if reference is None else reference
    label = "balanced (1/K)" if reference is None else "balanced (total / K)"
    ax.axhline(level, color="black", linestyle="--", linewidth=1.0, label=label)
    values = mass[:, shown]
    if reference is None and (values > 0).all():
        # log: the tail's mass is readable beside the head's (100 times more at IF 100)
        ax.set_yscale("log")
        _log_axis(ax.yaxis)  # after the scale, which sets its own formatters
    if start is not None:
        ax.xaxis.set_major_formatter(
            ticker.FuncFormatter(lambda v, _: "start" if v == 0 else f"{v:g}")
        )
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_xlabel("stage-2 epoch")
    ax.set_ylabel("total weight mass" if reference is None else "sum of raw weights")
    if k > _MAX_MASS_LINES:
        which = "10 most and 10 least frequent" if train_counts is not None else "first 20"
        ax.set_title(f"{prefix}weight mass per class ({which} of {k})")
    else:
        ax.set_title(f"{prefix}weight mass per class")
    if k <= _MAX_LEGEND:
        # below the axes, so no curve (the head class's starts highest) is hidden under it
        ax.legend(
            fontsize="small",
            loc="upper center",
            bbox_to_anchor=(0.5, -0.2),
            ncol=min(4, len(ax.get_lines())),
        )


def _draw_samples(
    ax: plt.Axes,
    weights: np.ndarray,
    classes: np.ndarray,
    k: int,
    train_counts: Sequence[int] | None,
    *,
    prefix: str = "",
) -> None:
    order = frequency_order(train_counts) if train_counts is not None else list(range(k))
    position = np.empty(k, dtype=int)
    position[order] = np.arange(k)
    jitter = np.random.default_rng(0).uniform(-0.3, 0.3, size=weights.size)
    ax.scatter(position[classes] + jitter, weights, s=6, alpha=0.4, linewidths=0, label="sample")
    present = [c for c in order if (classes == c).any()]
    means = [weights[classes == c].mean() for c in present]
    ax.scatter(
        position[present],
        means,
        marker="_",
        s=200,
        linewidths=2,
        color="tab:red",
        label="class mean",
        zorder=3,
    )
    off = _robust_y(ax, weights, np.asarray(means, dtype=float))
    ax.set_xlim(-0.5, k - 0.5)
    by_freq = train_counts is not None
    ax.set_xlabel("class (by training frequency)" if by_freq else "class")
    ax.set_ylabel("sample weight")
    ax.set_title(f"{prefix}per-sample weights by class" + (f"\n{off}" if off else ""))
    if k <= _MAX_TICK_LABELS:
        ax.set_xticks(list(range(k)), [str(c) for c in order], rotation=90 if k > 10 else 0)
    else:
        ax.set_xticks([])
    ax.legend(fontsize="small")


_CENTRAL = (0.01, 0.99)  # the per-sample axis spans these quantiles (and the class means)


def _robust_y(ax: plt.Axes, values: np.ndarray, means: np.ndarray) -> str:
    """A y axis the bulk of ``values`` fills: log when all are positive (softmax weights span
    decades), limited to their central 98%. Returns a note counting the samples and class
    ``means`` beyond it ("" when none), so two outlying weights (or the mean they pull up)
    cannot flatten the others against the axis."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return ""
    lo, hi = np.quantile(finite, _CENTRAL)
    if (finite > 0).all():
        ax.set_yscale("log")
        _log_axis(ax.yaxis)  # after the scale, which sets its own formatters
        span = max(np.log10(hi / lo), 0.2)  # at least a fifth of a decade shown
        bottom, top = lo / 10 ** (0.08 * span), hi * 10 ** (0.08 * span)
    else:
        pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.1
        bottom, top = lo - pad, hi + pad
    ax.set_ylim(bottom, top)
    notes = []
    for what, v in (("sample", finite), ("class mean", means)):
        for side, beyond, end in (("above", v > top, "max"), ("below", v < bottom, "min")):
            n = int(beyond.sum())
            if n:
                most = getattr(np, end)(v[beyond])
                notes.append(f"{n} {what}{'s' * (n > 1)} {side} the axis ({end} {most:.3g})")
    return "\n".join(notes)


def _log_axis(axis) -> None:
    """Plain numbers on a log axis (0.02, not 2e-02). Minor ticks are labelled where the axis
    shows few major ones: all of them within half a decade, the 2s and 5s within 1.5."""

    def minor(value: float, _pos) -> str:
        lo, hi = sorted(axis.get_view_interval())
        if lo <= 0 or value <= 0:
            return ""
        lead = round(value / 10 ** np.floor(np.log10(value)))
        if hi / lo < 3 or (hi / lo < 30 and lead in (2, 5)):
            return f"{value:.3g}"
        return ""

    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _pos: f"{value:.3g}"))
    axis.set_minor_formatter(ticker.FuncFormatter(minor))


def _save(fig: plt.Figure, path: Path, *, tight: bool = False, layout: bool = False) -> None:
    """Save ``fig`` as a PNG at ``_DPI``, compressed lightly (zlib level 1: a sweep draws two
    per run, and level 6 took a third of the saving time for files 10% smaller).

    ``layout``: laid out by ``tight_layout`` first (the figures a sweep draws for every run).
    They are created at ``_DPI``, so the layout measures the text on the renderer the saving
    draws with (its text metrics are cached per renderer), and the placeholder layout engine
    ``tight_layout`` leaves behind is dropped: with it, ``savefig`` draws the whole figure a
    second time, without output. ``tight``: the saved area cropped to what is drawn (a second
    rendering pass; the figures drawn once per report)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout:
        fig.tight_layout()
        fig.set_layout_engine(None)
    extra = {"bbox_inches": "tight"} if tight else {}
    fig.savefig(path, dpi=_DPI, pil_kwargs={"compress_level": 1}, **extra)


def write_fig1_png(masses: dict, path: Path, *, title: str = "") -> None:
    """Paper Fig. 1: per-class mass of the learned weights of a 10..1 batch, one bar group per
    class and one bar per cost, against the uniform weights' mass (count / batch size)."""
    classes, counts = masses["classes"], np.asarray(masses["counts"], dtype=float)
    costs = list(masses["mass"])
    x = np.arange(len(classes))
    width = 0.8 / (len(costs) + 1)
    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    try:
        ax.bar(x, counts / counts.sum(), width, label="uniform (n / batch)", color="0.75")
        for i, cost in enumerate(costs):
            ax.bar(x + (i + 1) * width, masses["mass"][cost], width, label=f"OT, {cost} cost")
        ax.set_xticks(
            x + width * len(costs) / 2,
            [f"{c}\n(n={int(n)})" for c, n in zip(classes, counts, strict=True)],
        )
        ax.set_xlabel("class (samples in the batch)")
        ax.set_ylabel("weight mass")
        ax.legend(fontsize="small")
        if title:
            ax.set_title(title)
        _save(fig, path, tight=True)  # drawn once per report
    finally:
        plt.close(fig)


def write_fig2_png(confusions: dict[str, dict], path: Path, *, title: str = "") -> None:
    """Paper Fig. 2: the row-normalised test confusion matrices of two runs side by side,
    classes ordered by training frequency. ``confusions``: label -> {confusion, train_counts}."""
    items = list(confusions.items())
    fig, axes = plt.subplots(1, len(items), figsize=(5.2 * len(items), 4.6), squeeze=False)
    try:
        for ax, (label, conf) in zip(axes[0], items, strict=True):
            matrix, order = ordered_normalised_confusion(conf["confusion"], conf["train_counts"])
            image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(label, fontsize="medium")
            ax.set_xlabel("predicted class")
            ax.set_ylabel("true class (by training frequency)")
            if len(order) <= _MAX_TICK_LABELS:
                ticks = list(range(len(order)))
                ax.set_xticks(ticks, [str(c) for c in order])
                ax.set_yticks(ticks, [str(c) for c in order])
            else:
                ax.set_xticks([])
                ax.set_yticks([])
        fig.colorbar(image, ax=list(axes[0]), label="fraction of true class")
        if title:
            fig.suptitle(title)
        _save(fig, path, tight=True)  # drawn once per report
    finally:
        plt.close(fig)
