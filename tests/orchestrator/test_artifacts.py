"""Tests for the per-trial sweep artifacts (confusion PNG, per-class CSV, weight PNG)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from orchestrator.artifacts import (
    frequency_order,
    mass_plot_classes,
    ordered_normalised_confusion,
    selection_note,
    write_confusion_png,
    write_per_class_csv,
    write_weight_png,
)


def _assert_png(path: Path) -> None:
    """A PNG that decodes to a picture with something drawn on it (not one flat colour)."""
    image = plt.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert np.unique(image.reshape(-1, image.shape[2]), axis=0).shape[0] > 20


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The figures the writers save, kept open for the test to read what was drawn."""
    import orchestrator.artifacts as artifacts

    figures: list = []
    save = artifacts._save

    def keep(fig, path, **kw):
        save(fig, path, **kw)
        figures.append(
            {
                "axes": [
                    {
                        "images": [im.get_array().copy() for im in ax.get_images()],
                        "lines": [(ln.get_label(), ln.get_ydata().copy()) for ln in ax.lines],
                        "xticks": [t.get_text() for t in ax.get_xticklabels()],
                        "yticks": [t.get_text() for t in ax.get_yticklabels()],
                        "title": ax.get_title(),
                        "yscale": ax.get_yscale(),
                        "ylim": ax.get_ylim(),
                        "legend": [t.get_text() for t in ax.get_legend().get_texts()]
                        if ax.get_legend()
                        else [],
                        "points": [c.get_offsets().copy() for c in ax.collections],
                        "legend_over_plot": bool(
                            ax.get_legend()
                            and ax.get_legend().get_window_extent().overlaps(ax.get_window_extent())
                        ),
                    }
                    for ax in fig.axes
                ]
            }
        )

    monkeypatch.setattr(artifacts, "_save", keep)
    return figures


@pytest.fixture(autouse=True)
def _no_leaked_figures():
    plt.close("all")
    yield
    assert plt.get_fignums() == [], "a figure was left open"


def test_per_run_figures_are_rendered_once_at_the_saving_dpi(tmp_path, monkeypatch) -> None:
    """A sweep draws two figures per run: each is laid out by tight_layout and then rendered
    once (tight_layout's leftover placeholder engine made savefig render it a second time,
    without output), at the DPI it is saved at."""
    from matplotlib.figure import Figure

    import orchestrator.artifacts as artifacts

    passes: list = []
    draw = Figure.draw

    def counted(fig, renderer):
        passes.append((fig.dpi, fig.get_layout_engine()))
        return draw(fig, renderer)

    monkeypatch.setattr(Figure, "draw", counted)
    write_confusion_png([[3, 1], [0, 2]], [4, 2], tmp_path / "c.png", title="t")
    assert passes == [(artifacts._DPI, None)]
    passes.clear()
    write_weight_png(
        [[0.5, 0.5], [0.6, 0.4]],
        tmp_path / "w.png",
        sample_weights=[0.2, 0.3, 0.5],
        labels=[0, 0, 1],
        train_counts=[2, 1],
    )
    assert passes == [(artifacts._DPI, None)]
    for name in ("c.png", "w.png"):  # the saved size is the figure's at that DPI
        assert (
            plt.imread(tmp_path / name).shape[:2]
            == {
                "c.png": (600, 720),
                "w.png": (540, 1440),
            }[name]
        )


def test_frequency_order_descending_with_ties_by_index() -> None:
    # counts: 0->5, 1->10, 2->5, 3->0, 4->10
    assert frequency_order([5, 10, 5, 0, 10]) == [1, 4, 0, 2, 3]
    assert frequency_order([]) == []


def test_ordered_normalised_confusion_hand_example() -> None:
    confusion = [
        [2, 1, 1],  # class 0: 4 test samples
        [0, 0, 0],  # class 1: no test samples
        [1, 0, 3],  # class 2: 4 test samples
    ]
    train_counts = [5, 1, 9]  # order: 2, 0, 1
    matrix, order = ordered_normalised_confusion(confusion, train_counts)
    assert order == [2, 0, 1]
    expected = np.array(
        [
            [0.75, 0.25, 0.0],  # true 2 -> predicted 2, 0, 1
            [0.25, 0.5, 0.25],  # true 0
            [0.0, 0.0, 0.0],  # true 1, zero support
        ]
    )
    assert not np.isnan(matrix).any()
    np.testing.assert_allclose(matrix, expected)


def test_confusion_png_written_and_order_returned(tmp_path: Path, drawn: list) -> None:
    path = tmp_path / "sub" / "confusion.png"
    order = write_confusion_png([[3, 1, 0], [0, 0, 0], [2, 0, 5]], [4, 4, 7], path, title="trial 0")
    assert order == [2, 0, 1]
    _assert_png(path)
    (fig,) = drawn
    ax = fig["axes"][0]
    # rows and columns in training-frequency order: 2 (7), 0 (4), 1 (4); each row sums to 1
    expected = [[5 / 7, 2 / 7, 0.0], [0.0, 0.75, 0.25], [0.0, 0.0, 0.0]]
    np.testing.assert_allclose(ax["images"][0], expected)
    assert ax["xticks"] == ["2", "0", "1"] and ax["yticks"] == ["2", "0", "1"]
    assert ax["title"] == "trial 0"


def test_confusion_png_many_classes(tmp_path: Path, drawn: list) -> None:
    k = 40
    rng = np.random.default_rng(1)
    confusion = rng.integers(0, 5, size=(k, k)).tolist()
    counts = rng.integers(1, 100, size=k).tolist()
    path = tmp_path / "confusion.png"
    assert write_confusion_png(confusion, counts, path) == frequency_order(counts)
    _assert_png(path)
    ax = drawn[0]["axes"][0]
    want, _ = ordered_normalised_confusion(confusion, counts)
    np.testing.assert_allclose(ax["images"][0], want)
    assert ax["xticks"] == []  # 40 classes: no tick labels


@pytest.mark.parametrize(
    ("confusion", "train_counts"),
    [
        ([[1, 2, 3], [4, 5, 6]], [1, 2, 3]),  # 2 x 3
        ([[1, 2], [3, 4]], [1, 2, 3]),  # K x K but K != len(train_counts)
        ([[1, 2, 3], [4, 5], [6, 7, 8]], [1, 2, 3]),  # ragged
        ([], []),  # no classes
    ],
)
def test_confusion_wrong_shape_raises(
    tmp_path: Path, confusion: list[list[int]], train_counts: list[int]
) -> None:
    path = tmp_path / "confusion.png"
    with pytest.raises(ValueError, match="confusion must be") as info:
        write_confusion_png(confusion, train_counts, path)
    assert "\n" not in str(info.value)
    assert not path.exists()


def test_per_class_csv_round_trip(tmp_path: Path) -> None:
    acc = [0.75, None, 0.1, 1.0, np.float64(0.2)]
    counts = [100, 3, 20, 7, 0]
    path = tmp_path / "per_class.csv"
    write_per_class_csv(acc, counts, path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["class", "train_count", "test_accuracy"]
        rows = list(reader)
    assert [int(r["class"]) for r in rows] == list(range(5))
    assert [int(r["train_count"]) for r in rows] == counts
    assert rows[1]["test_accuracy"] == ""
    got = [None if r["test_accuracy"] == "" else float(r["test_accuracy"]) for r in rows]
    assert got == [0.75, None, 0.1, 1.0, 0.2]


def test_per_class_csv_length_mismatch_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_per_class_csv([0.5, 0.5], [1, 2, 3], tmp_path / "x.csv")


def _mass(epochs: int, k: int) -> list[list[float]]:
    rng = np.random.default_rng(2)
    m = rng.random((epochs, k))
    return (m / m.sum(axis=1, keepdims=True)).tolist()


def test_weight_png_k3_mass_only(tmp_path: Path, drawn: list) -> None:
    path = tmp_path / "weights.png"
    mass = _mass(4, 3)
    write_weight_png(mass, path)
    _assert_png(path)
    (ax,) = drawn[0]["axes"]
    labels = [name for name, _ in ax["lines"]]
    assert labels == ["class 0", "class 1", "class 2", "balanced (1/K)"]
    for c in range(3):  # one curve per class: its mass over the epochs
        np.testing.assert_allclose(ax["lines"][c][1], [row[c] for row in mass])
    np.testing.assert_allclose(ax["lines"][3][1], [1 / 3, 1 / 3])
    assert ax["legend"] == labels  # every class, the head included, is in the legend
    assert not ax["legend_over_plot"]  # and the legend hides none of the curves


def test_weight_png_k3_single_epoch(tmp_path: Path) -> None:
    path = tmp_path / "weights.png"
    write_weight_png(_mass(1, 3), path, train_counts=[5, 3, 1])
    _assert_png(path)


def test_weight_png_k3_with_samples(tmp_path: Path, drawn: list) -> None:
    labels = [0, 0, 0, 1, 1, 2]
    weights = [0.1, 0.1, 0.1, 0.2, 0.2, 0.3]
    path = tmp_path / "weights.png"
    write_weight_png(
        _mass(4, 3), path, sample_weights=weights, labels=labels, train_counts=[3, 2, 1]
    )
    _assert_png(path)
    left, right = drawn[0]["axes"]
    assert [name for name, _ in left["lines"]][:3] == [
        "class 0 (n=3)",
        "class 1 (n=2)",
        "class 2 (n=1)",
    ]
    samples, means = right["points"]
    assert sorted(np.round(samples[:, 1], 6).tolist()) == sorted(weights)
    # class means at the classes' positions (head first): 0 -> 0.1, 1 -> 0.2, 2 -> 0.3
    np.testing.assert_allclose(means, [[0, 0.1], [1, 0.2], [2, 0.3]])
    assert right["xticks"] == ["0", "1", "2"]
    one_panel = tmp_path / "one.png"
    write_weight_png(_mass(4, 3), one_panel)
    # the two-panel figure is wider, so the file differs from the one-panel one
    assert path.read_bytes() != one_panel.read_bytes()


def test_weight_png_draws_each_class_from_its_start_against_1_over_k(
    tmp_path: Path, drawn: list
) -> None:
    counts = [80, 15, 5]  # uniform starting weights: the mass starts at each class's share
    start = [c / sum(counts) for c in counts]
    mass = [[0.6, 0.25, 0.15], [0.5, 0.3, 0.2]]
    write_weight_png(mass, tmp_path / "w.png", train_counts=counts, start_mass=start)
    (ax,) = drawn[0]["axes"]
    for c in range(3):  # every curve begins at the class's start (epoch 0), then its epochs
        np.testing.assert_allclose(ax["lines"][c][1], [start[c], mass[0][c], mass[1][c]])
    # the tail class (5%) sits under 1/K from the start: its learned 20% is 4 times its start
    (balanced,) = [y for name, y in ax["lines"] if name == "balanced (1/K)"]
    np.testing.assert_allclose(balanced, [1 / 3, 1 / 3])
    assert "start" in ax["xticks"]
    assert ax["yscale"] == "log"  # the head's mass leaves the tail's curve readable
    assert ax["ylim"][0] < min(start) and ax["ylim"][1] > max(start)
    with pytest.raises(ValueError, match="start_mass has 2 entries"):
        write_weight_png(mass, tmp_path / "x.png", start_mass=[0.5, 0.5])


def test_two_outlying_weights_do_not_flatten_the_others(tmp_path: Path, drawn: list) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 1000)
    weights = 1e-3 * (1 + 0.2 * rng.random(1000) + 0.5 * labels)  # tail classes weigh more
    weights[[3, 7]] = [0.4, 0.3]  # two samples the weights ran away with
    write_weight_png(
        _mass(2, 4), tmp_path / "w.png", sample_weights=weights, labels=labels,
        train_counts=[400, 300, 200, 100],
    )  # fmt: skip
    _, samples = drawn[0]["axes"]
    bottom, top = samples["ylim"]
    assert samples["yscale"] == "log"
    assert top < 0.3  # the outliers are off the axis ...
    bulk = np.delete(weights, [3, 7])
    inside = (bulk >= bottom) & (bulk <= top)
    assert inside.mean() >= 0.98  # ... the others on it, and they fill it
    assert np.log(bulk.max() / bulk.min()) / np.log(top / bottom) > 0.7
    assert "2 samples above the axis (max 0.4)" in samples["title"]  # and counted
    assert "below" not in samples["title"]


def test_weight_png_is_deterministic(tmp_path: Path) -> None:
    kwargs = {"sample_weights": [0.2, 0.3, 0.5], "labels": [0, 1, 2], "train_counts": [1, 1, 1]}
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    write_weight_png(_mass(3, 3), a, **kwargs)
    write_weight_png(_mass(3, 3), b, **kwargs)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("with_counts", [True, False])
@pytest.mark.parametrize("with_samples", [True, False])
def test_weight_png_k50(tmp_path: Path, with_counts: bool, with_samples: bool) -> None:
    k, n = 50, 500
    rng = np.random.default_rng(3)
    counts = rng.integers(1, 200, size=k).tolist() if with_counts else None
    samples = {}
    if with_samples:
        samples = {
            "sample_weights": rng.random(n).tolist(),
            "labels": rng.integers(0, k, n).tolist(),
        }
    path = tmp_path / "weights.png"
    write_weight_png(_mass(5, k), path, train_counts=counts, **samples)
    _assert_png(path)


def test_mass_plot_classes() -> None:
    assert mass_plot_classes(3) == [0, 1, 2]
    assert mass_plot_classes(20, list(range(20))) == list(range(20))
    assert mass_plot_classes(50) == list(range(20))
    counts = list(range(50))  # class c has c samples: head is 49, 48, ...; tail ends at 0
    assert mass_plot_classes(50, counts) == list(range(49, 39, -1)) + list(range(9, -1, -1))


@pytest.mark.parametrize(
    ("weight_mass", "kwargs", "match"),
    [
        (_mass(2, 3), {"sample_weights": [0.1, 0.2], "labels": [0, 1, 2]}, "sample_weights has"),
        (_mass(2, 3), {"sample_weights": [0.1, 0.2]}, "together"),
        (_mass(2, 3), {"sample_weights": [0.1], "labels": [3]}, "labels must lie"),
        (_mass(2, 3), {"train_counts": [1, 2]}, "train_counts has"),
        ([[0.5, 0.5], [1.0]], {}, "not rectangular"),
        ([], {}, "empty"),
        ([[], []], {}, "no classes"),
    ],
)
def test_weight_png_invalid_raises(
    tmp_path: Path, weight_mass: list[list[float]], kwargs: dict, match: str
) -> None:
    path = tmp_path / "weights.png"
    with pytest.raises(ValueError, match=match) as info:
        write_weight_png(weight_mass, path, **kwargs)
    assert "\n" not in str(info.value)
    assert not path.exists()


def test_weight_png_shows_the_raw_weights_the_loss_uses_labelled(tmp_path: Path, drawn: list):
    labels = [0, 0, 0, 1, 1, 2]
    soft = [0.1, 0.1, 0.1, 0.2, 0.2, 0.3]
    raw = [0.5, 0.5, 0.5, 2.0, 2.0, 6.0]  # e.g. class-balanced logits, used as CE weights
    raw_mass = [[1.5, 4.0, 6.0], [1.5, 4.1, 5.9]]
    write_weight_png(
        _mass(2, 3), tmp_path / "w.png", sample_weights=soft, labels=labels,
        train_counts=[3, 2, 1], raw_mass=raw_mass, raw_sample_weights=raw,
    )  # fmt: skip
    soft_mass, soft_samples, raw_ax, raw_samples = drawn[0]["axes"]
    assert soft_mass["title"].startswith("softmax mass (the OT measure): ")
    assert soft_samples["title"].startswith("softmax mass (the OT measure): ")
    assert raw_ax["title"] == "raw weights (what the CE multiplies): weight mass per class"
    assert raw_samples["title"].startswith("raw weights (what the CE multiplies): ")
    for c in range(3):
        np.testing.assert_allclose(raw_ax["lines"][c][1], [row[c] for row in raw_mass])
    # the balanced reference of raw weights: their total over K (not 1/K)
    assert raw_ax["lines"][3][0] == "balanced (total / K)"
    np.testing.assert_allclose(raw_ax["lines"][3][1], [11.5 / 3, 11.5 / 3])
    samples, means = raw_samples["points"]
    assert sorted(samples[:, 1].tolist()) == sorted(raw)
    np.testing.assert_allclose(means, [[0, 0.5], [1, 2.0], [2, 6.0]])
    with pytest.raises(ValueError, match="raw_sample_weights"):
        write_weight_png(_mass(2, 3), tmp_path / "x.png", sample_weights=soft, labels=labels,
                         raw_mass=raw_mass)  # fmt: skip


def _table(note: str) -> list[list[str]]:
    rows = [ln for ln in note.splitlines() if ln.startswith("|")]
    return [[cell.strip() for cell in ln.strip("|").split("|")] for ln in rows]


def test_selection_note_reads_each_class_learned_mass_against_its_start() -> None:
    note = selection_note(
        [90.0, None, 40.0], [5, 20, 100], epoch=3, run_id="r1",
        learned_mass=[0.2, 0.3, 0.5], start_mass=[0.04, 0.16, 0.8],
        figures=["learned_weights.png", "confusion_matrix.png"],
    )  # fmt: skip
    assert note.startswith("**Validation-selected model, stage-2 epoch 3**")
    assert "1/K = 0.333" in note
    head, _rule, *rows = _table(note)
    assert head == [
        "class", "train n", "test acc (%)", "mass at start", "learned mass", "learned / start"
    ]  # fmt: skip
    # head classes first; a class without test samples has no accuracy, not 0
    assert rows == [
        ["2", "100", "40.0", "0.8", "0.5", "0.62×"],
        ["1", "20", "–", "0.16", "0.3", "1.88×"],
        ["0", "5", "90.0", "0.04", "0.2", "5.00×"],  # under 1/K, yet 5 times its start
    ]
    # the figures inline, from the run's artifacts, relative to the UI's address
    assert "![learned_weights.png](get-artifact?path=learned_weights.png&run_uuid=r1)" in note
    assert note.index("learned_weights.png") < note.index("confusion_matrix.png")


def test_selection_note_without_learned_weights_and_with_many_classes() -> None:
    k = 30
    counts = list(range(100, 100 - k, -1))  # class 0 the head
    note = selection_note([50.0] * k, counts, epoch=1, run_id="r")
    head, _rule, *rows = _table(note)
    assert head == ["class", "train n", "test acc (%)"]  # a CE run: no weights to show
    classes = [r[0] for r in rows]
    assert classes == [str(c) for c in range(10)] + ["…"] + [str(c) for c in range(20, 30)]
    assert f"10 least frequent of {k} classes: all in per_class_acc.csv" in note
    assert "get-artifact" not in note
    with pytest.raises(ValueError, match="per_class_acc has 2 entries but 3 classes"):
        selection_note([1.0, 2.0], [3, 2, 1], epoch=1, run_id="r")
