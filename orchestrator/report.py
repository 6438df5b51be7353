"""``python -m orchestrator.report TABLE``: a reproduced table beside the paper's numbers.

Reads the finished runs of ``orchestrator.reproduce TABLE`` from MLflow and prints, for every
cell, mean +- std over seeds of the test metric at the validation-selected epoch (the paper's
layout, with the published number and the difference), then the last-epoch results, and, in a
separate labelled column, the best test epoch (selection on the test set, as the released code
reports; not comparable), and each OT row's own gain over its ``+no_ot`` control (positive:
OT is better, in points of the table's metric). Only the rows and columns with finished runs are
shown; ``--all`` shows the whole grid, where a cell without runs reads "missing". A fidelity
section compares the paper and released-code presets (on the first column, and on any other
where they were run). ``--format html`` writes one self-contained page with the figures (Fig. 1
and Fig. 2) embedded.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import math
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from scipy.stats import t as t_dist

from search_spaces.resolve import unknown_name
from search_spaces.tables import CONTROL_SUFFIX, TABLES, Table, paper_value, published_only
from trainables.config import POSTHOC_PREFIX, PRESETS

from . import cli, names, tracking
from .storage import StorageError

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

__all__ = [
    "SELECTIONS",
    "Interval",
    "Stat",
    "aggregate",
    "gain_label",
    "has_runs",
    "main",
    "own_gain",
    "paired",
    "paired_interval",
    "render",
    "report_data",
    "run_value",
    "strongest_baseline",
    "tune_comparison",
]

SELECTIONS = ("validation_selected", "last_epoch", "best_test_epoch")
# Data that is not the paper's copy: results on it carry this label in every format.
DATA_LABELS = {"cifar10_jpeg": "CIFAR-10 (JPEG q75 copy)"}
_LABELS = {
    "validation_selected": "validation-selected",
    "last_epoch": "last epoch",
    "best_test_epoch": "best test epoch (selected on test; not comparable)",
}


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (None for a single seed) over ``n`` seeds."""

    mean: float
    std: float | None
    n: int

    def text(self) -> str:
        if self.std is None:
            return f"{self.mean:.2f} (n=1)"
        return f"{self.mean:.2f} ± {self.std:.2f}"


def aggregate(values: list[float]) -> Stat | None:
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(statistics.fmean(values), std, len(values))


def run_value(
    params: dict, metrics: dict, selection: str, metric: str, *, adjusted: bool = False
) -> float | None:
    """A run's test metric (% top-1 error or accuracy) under ``selection``; ``adjusted``: its
    post-hoc logit-adjusted reading (a ``+la`` row).

    A baseline row (stage2.method=none) is the stage-1 model: its selections are stage 1's own
    (``stage1_*``), unless stage 1 trained no epochs (e.g. fine-tuned BERT: stage 0 only), when
    the single stage-2 evaluation is the result."""
    prefix = ""
    if params.get("stage2.method") == "none" and params.get("stage1.epochs", "0") != "0":
        prefix = names.STAGE1_PREFIX
    if adjusted:
        prefix += POSTHOC_PREFIX
    err = metrics.get(names.summary_metric(selection, "test", "top1_error", prefix))
    if err is None:
        return None
    return err if metric == "top1_error" else 100.0 - err


def own_gain(entry: dict, cells: dict, metric: str) -> Stat | None:
    """OT's own gain of an OT row over its ``+no_ot`` control (the same stage 2 with the weight
    learning off), validation-selected, paired by seed (seeds run for both), in points of
    ``metric``; positive means OT is better: the control's error minus the row's, or the row's
    accuracy minus the control's."""
    cell = entry["cell"]
    if not cell.method.ot:
        return None
    twin = cells.get(f"{cell.column.name}|{cell.method.name}{CONTROL_SUFFIX}")
    if twin is None:
        return None
    mine, theirs = entry["selected_by_seed"], twin["selected_by_seed"]
    better = -1.0 if metric == "top1_error" else 1.0  # lower error is better
    return aggregate([better * (mine[s] - theirs[s]) for s in sorted(mine) if s in theirs])


def gain_label(metric: str) -> str:
    """The gain column's heading: what it compares, in which metric, and which sign is better."""
    unit = "top-1 error" if metric == "top1_error" else "accuracy"
    return f"OT's own gain over its +no_ot control, paired by seed ({unit} points, + = OT better)"


def report_data(
    c, exp_id: str, table: Table, preset: str = "paper", *, smoke: bool = False, tune: int = 0
) -> dict:
    """Every cell's statistics from the finished runs (the latest run per cell and seed) asked
    for under ``preset`` (with ``tune``: under ``preset+tuneN``, and the published-setting
    runs beside them with the paired comparisons of :func:`tune_comparison`)."""
    asked = names.settings_key(preset, False, tune)
    cells, latest = _cells(c, exp_id, table, asked)
    data = {
        "table": table,
        "preset": asked,
        "cells": cells,
        "published_only": published_only(table),
        "figures": _figures(c, exp_id, table),
        "smoke": smoke,
        "data": _data_labels(latest.values()),
    }
    if tune:
        data["comparison"] = tune_comparison(cells, _cells(c, exp_id, table, preset)[0], table)
    return data


def _data(run) -> tuple[dict, dict]:
    return run.data.params, run.data.metrics


def _adjusted_reading(run, metric: str) -> float | None:
    return run_value(*_data(run), "validation_selected", metric, adjusted=True)


def _entry(table: Table, cell, seeds: list, *, adjusted: bool) -> dict:
    """A cell's statistics from its runs ``[(seed, run)]``."""
    stats = {}
    for sel in SELECTIONS:
        vals = [run_value(*_data(r), sel, table.metric, adjusted=adjusted) for _, r in seeds]
        stats[sel] = aggregate([v for v in vals if v is not None])
    selected = {
        s: run_value(*_data(r), "validation_selected", table.metric, adjusted=adjusted)
        for s, r in seeds
    }
    # the search ranked the row's own reading: a +la row has no search score of its own
    tuned_val = set() if adjusted else {r.data.tags.get(names.TUNED_VAL) for _, r in seeds}
    tuned_val -= {None}
    return {
        "cell": cell,
        "seeds": [s for s, _ in seeds],
        "stats": stats,
        "paper": paper_value(table, cell),
        "selected_by_seed": {s: v for s, v in selected.items() if v is not None},
        "tuned_val": float(tuned_val.pop()) if len(tuned_val) == 1 else None,
    }


def _cells(c, exp_id: str, table: Table, asked: str) -> tuple[dict, dict]:
    """({cell key: its entry}, {(cell key, seed): the run counted}) of the runs asked for
    under ``asked``."""
    runs = tracking.all_runs_with_tags(c, exp_id, {names.TABLE: table.name, names.KIND: "trial"})
    latest: dict[tuple[str, str], object] = {}
    for r in runs:
        tags = r.data.tags
        if r.info.status != "FINISHED" or tags.get(names.PRESET_ASKED) != asked:
            continue
        key = (tags.get(names.CELL, ""), tags.get(names.SEED, ""))
        if key not in latest or (r.info.end_time or 0) > (latest[key].info.end_time or 0):
            latest[key] = r
    cells = {}
    first = table.columns[0].name
    for cell in table.cells(fidelity=True, every_column=True):
        la = bool(cell.method.la_of)  # a +la row reads its source row's runs, adjusted
        source = f"{cell.column.name}|{cell.method.la_of}" if la else cell.key
        seeds = sorted((int(s), r) for (k, s), r in latest.items() if k == source and s.isdigit())
        if la:  # runs from before stage 2 recorded the adjusted reading have none to show
            seeds = [(s, r) for s, r in seeds if _adjusted_reading(r, table.metric) is not None]
        if cell.method.fidelity and cell.column.name != first and not seeds:
            continue  # fidelity rows: the first column's always, any other's where they ran
        cells[cell.key] = _entry(table, cell, seeds, adjusted=la)
    for entry in cells.values():
        entry["own_gain"] = own_gain(entry, cells, table.metric)
    return cells, latest


# ---------------------------------------------------------------- equal budgets (--tune)


@dataclass(frozen=True)
class Interval:
    """A mean paired difference and its two-sided 95% Student-t interval over ``n`` seeds."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def text(self) -> str:
        mark = " *" if self.excludes_zero else ""
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]{mark} (n={self.n})"


def paired_interval(diffs: list[float], level: float = 0.95) -> Interval | None:
    """The mean of per-seed differences with its Student-t interval (t with n - 1 degrees of
    freedom: seeds are few and their differences roughly normal); None under two seeds."""
    n = len(diffs)
    if n < 2:
        return None
    mean = statistics.fmean(diffs)
    half = float(t_dist.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(diffs) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def paired(a: dict, b: dict, metric: str) -> Interval | None:
    """``a`` minus ``b`` paired by seed (validation-selected), + meaning ``a`` is better."""
    better = -1.0 if metric == "top1_error" else 1.0
    mine, theirs = a["selected_by_seed"], b["selected_by_seed"]
    return paired_interval([better * (mine[s] - theirs[s]) for s in sorted(mine) if s in theirs])


def _is_baseline(cell) -> bool:
    m = cell.method
    return not (m.ot or m.control_of or m.fidelity)


def strongest_baseline(cells: dict, metric: str) -> str | None:
    """The tuned baseline with the best mean test metric (chosen on test, so in its favour)."""
    sign = 1.0 if metric == "top1_error" else -1.0
    found = [
        (sign * e["stats"]["validation_selected"].mean, k)
        for k, e in cells.items()
        if _is_baseline(e["cell"]) and e["stats"]["validation_selected"] is not None
    ]
    return min(found)[1] if found else None


def tune_comparison(tuned: dict, published: dict, table: Table) -> dict:
    """Each tuned row beside its published-setting row: the paired difference to the strongest
    tuned baseline and, for an OT row, to its own tuned control, and the picked setting's
    search validation score against its test result (the best of N on validation is
    optimistic)."""
    metric = table.metric
    best = strongest_baseline(tuned, metric)
    rows = []
    for key, e in tuned.items():
        cell = e["cell"]
        if not e["seeds"] or cell.method.control_of:
            continue
        twin = tuned.get(f"{cell.column.name}|{cell.method.name}{CONTROL_SUFFIX}")
        val = e["tuned_val"]
        rows.append({
            "key": key,
            "stat": e["stats"]["validation_selected"],
            "published": (published.get(key) or {}).get("stats", {}).get("validation_selected"),
            "vs_best": None if best in (None, key) else paired(e, tuned[best], metric),
            "vs_control": paired(e, twin, metric) if cell.method.ot and twin else None,
            "search_val": None if val is None else (100.0 - val if metric == "top1_error" else val),
        })  # fmt: skip
    return {"best_baseline": best, "rows": rows}


def _comparison_table(data: dict) -> tuple[list[str], list[list[str]]]:
    comp = data["comparison"]
    unit = "error" if data["table"].metric == "top1_error" else "accuracy"
    header = ["row", "tuned (validation-selected)", "published setting",
              f"vs strongest baseline ({comp['best_baseline'] or 'none'})", "vs its +no_ot control",
              f"search: validation {unit} -> test"]  # fmt: skip
    rows = []
    for r in comp["rows"]:
        st, val = r["stat"], r["search_val"]
        rows.append([
            r["key"],
            st.text() if st else "missing",
            r["published"].text() if r["published"] else "not run",
            r["vs_best"].text() if r["vs_best"] else "—",
            r["vs_control"].text() if r["vs_control"] else "—",
            "—" if val is None or st is None
            else f"{val:.2f} -> {st.mean:.2f} ({st.mean - val:+.2f})",
        ])  # fmt: skip
    return header, rows


COMPARISON_NOTE = (
    "Paired by seed (the tuned rows share their fresh seeds); + = the row is better; "
    "[95% Student-t interval]; * = the interval excludes zero. The strongest baseline is the "
    "tuned baseline with the best test mean (picked on test: in its favour). The last column is "
    "the picked setting's validation score in its search (seed 0, the best of N) against its "
    "test mean on the fresh seeds."
)


def _data_labels(runs) -> str:
    """The labels of the runs' data sources that are not the paper's (``DATA_LABELS``), joined;
    empty when every run read the paper's data."""
    sources = {r.data.params.get("data.source", "") for r in runs}
    return ", ".join(sorted(DATA_LABELS[s] for s in sources if s in DATA_LABELS))


def _figures(c, exp_id: str, table: Table) -> dict[str, bytes]:
    """The newest Fig. 1 / Fig. 2 PNGs logged by a reproduce invocation of the table."""
    parents = tracking.all_runs_with_tags(
        c, exp_id, {names.TABLE: table.name, names.KIND: "reproduce"}
    )
    out: dict[str, bytes] = {}
    for run in sorted(parents, key=lambda r: -(r.info.start_time or 0)):
        logged = {a.path for a in c.list_artifacts(run.info.run_id, "figures")}
        for name in ("figures/fig1_weights.png", "figures/fig2_confusion.png"):
            short = Path(name).stem
            if short in out or name not in logged:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                out[short] = Path(c.download_artifacts(run.info.run_id, name, tmp)).read_bytes()
    return out


# ---------------------------------------------------------------- rendering


def _diff(stat: Stat | None, paper) -> float | None:
    if stat is None or paper is None:
        return None
    return stat.mean - paper[0]


def _paper_text(paper) -> str:
    if paper is None:
        return "—"
    return f"{paper[0]:.2f}" + (f" ± {paper[1]:.2f}" if paper[1] is not None else "")


def _main_cell(entry: dict | None) -> str:
    if entry is None:
        return "not in grid"
    stat = entry["stats"]["validation_selected"]
    paper = entry["paper"]
    text = "missing" if stat is None else stat.text()
    if paper is not None:
        d = _diff(stat, paper)
        text += f" [paper {_paper_text(paper)}" + (f", {d:+.2f}]" if d is not None else "]")
    return text


def _layout(data: dict) -> tuple[list[str], list[list[str]]]:
    """The paper's layout: one row per method, one column per table column."""
    columns = data["columns"]
    header = ["method", *[c.name for c in columns]]
    rows = []
    for m in data["methods"]:
        if m.fidelity:
            continue
        row = [m.name]
        for col in columns:
            row.append(_main_cell(data["cells"].get(f"{col.name}|{m.name}")))
        rows.append(row)
    for name, values in data["published_only"]:
        row = [f"{name} (published only)"]
        row.extend(f"not run [paper {values[c.name]}]" if values[c.name] else "—"
                   for c in columns)  # fmt: skip
        rows.append(row)
    return header, rows


def has_runs(data: dict) -> bool:
    """Whether any cell of the report has a finished run."""
    return any(e["seeds"] for e in data["cells"].values())


def _view(data: dict, full: bool) -> dict:
    """What the report shows: under ``full`` the whole grid (cells without runs read
    "missing", the paper's rows that never run are listed); else only the cells, rows and
    columns with runs. ``left_out``: the cells not shown."""
    table: Table = data["table"]
    if full:
        shown = data["cells"]
        columns, methods = table.columns, table.methods
    else:
        shown = {k: e for k, e in data["cells"].items() if e["seeds"]}
        cols = {e["cell"].column.name for e in shown.values()}
        rows = {e["cell"].method.name for e in shown.values()}
        columns = tuple(c for c in table.columns if c.name in cols)
        methods = tuple(m for m in table.methods if m.name in rows)
    return {
        **data,
        "shown": shown,
        "columns": columns,
        "methods": methods,
        "published_only": data["published_only"] if full else [],
        "left_out": len(data["cells"]) - len(shown),
    }


def _in_fidelity(table: Table, method) -> bool:
    """A row of the fidelity table: an OT row compared with the paper's OT row, or its control."""
    by_name = {m.name: m for m in table.methods}
    row = by_name.get(method.control_of, method) if method.control_of else method
    return row.paper_row == "ot_weight_vector"


def _long(data: dict, *, fidelity: bool) -> tuple[list[str], list[list[str]]]:
    header = ["cell", "seeds", *[_LABELS[s] for s in SELECTIONS[:2]], "paper",
              "Δ (validation-selected − paper)", _LABELS["best_test_epoch"],
              gain_label(data["table"].metric)]  # fmt: skip
    rows = []
    table = data["table"]
    for key, e in data["shown"].items():
        cell = e["cell"]
        if fidelity and not _in_fidelity(table, cell.method):
            continue
        if not fidelity and cell.method.fidelity:
            continue
        st = e["stats"]
        d = _diff(st["validation_selected"], e["paper"])
        gain = e.get("own_gain")
        rows.append([
            key,
            str(len(e["seeds"])) if e["seeds"] else "missing",
            *(st[s].text() if st[s] else "missing" for s in SELECTIONS[:2]),
            _paper_text(e["paper"]),
            "—" if d is None else f"{d:+.2f}",
            st["best_test_epoch"].text() if st["best_test_epoch"] else "missing",
            ("missing" if cell.method.ot else "—") if gain is None else _signed(gain),
        ])  # fmt: skip
    return header, rows


def _signed(stat: Stat) -> str:
    text = f"{stat.mean:+.2f}"
    return text + (f" ± {stat.std:.2f} (n={stat.n})" if stat.std is not None else " (n=1)")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [row(header), "|" + "---|" * len(header)]
    lines += [row(r) for r in rows]
    return "\n".join(lines)


SMOKE_NOTE = "smoke runs: tiny sizes that check the pipeline, not numbers to compare"


def _title(data: dict) -> str:
    """The table's name, with the data its runs read when it is not the paper's copy, marked
    when its runs are smoke runs."""
    name = data["table"].name
    if data.get("data"):
        name = f"{name} on {data['data']}"
    return f"{name} ({SMOKE_NOTE})" if data.get("smoke") else name


def _intro(data: dict) -> list[str]:
    table: Table = data["table"]
    what = "test top-1 error (%)" if table.metric == "top1_error" else "test accuracy (%)"
    return [
        table.description,
        f"Preset {data['preset']}"
        + (" (OT rows at the best setting of a sweep)" if "+sweep" in data["preset"] else "")
        + (
            " (every row at the best setting of its own search, on fresh seeds)"
            if "+tune" in data["preset"]
            else ""
        )
        + f"; {what}, mean ± std over seeds; [paper number, this number minus the paper's]. "
        + (
            f"{data['left_out']} cells without finished runs left out (report --all: the whole "
            "grid)."
            if data["left_out"]
            else "Missing cells are not filled in."
        ),
    ]


def render(data: dict, fmt: str, *, full: bool = False) -> str:
    """The report in ``fmt`` (md, csv, latex, html): the cells with runs, or (``full``) the
    whole grid."""
    data = _view(data, full)
    if fmt == "csv":
        return _csv(data)
    if fmt == "latex":
        return _latex(data)
    if fmt == "html":
        return _html(data)
    parts = [f"## {_title(data)}", "", *_intro(data), ""]
    main = _long(data, fidelity=False)
    if main[1] or full:  # a store of fidelity runs alone has no main table
        parts += [_md_table(*_layout(data)), "", "### Every selection", "", _md_table(*main)]
    if data.get("comparison"):
        parts += ["", "### Equal budgets: tuned rows, paired by seed", "", COMPARISON_NOTE, ""]
        parts += [_md_table(*_comparison_table(data))]
    fid = _long(data, fidelity=True)
    if len(fid[1]) > 1:
        parts += ["", "### Fidelity: paper vs released-code presets", ""]
        parts += [_md_table(*fid)]
    if data["figures"]:
        parts += ["", f"Figures ({', '.join(data['figures'])}): in MLflow, and embedded by "
                      "`--format html`."]  # fmt: skip
    return "\n".join(parts)


def _csv(data: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["table", "runs", "data", "column", "method", "preset", "metric", "seeds",
                *(f"{s}_{p}" for s in SELECTIONS for p in ("mean", "std")),
                "paper_mean", "paper_std", "diff",
                "own_gain_mean", "own_gain_std", "own_gain_n"])  # fmt: skip
    for e in data["shown"].values():
        cell, st = e["cell"], e["stats"]
        vals = []
        for s in SELECTIONS:
            if st[s] is None:
                vals += ["", ""]
            else:
                vals += [f"{st[s].mean:.4f}", "" if st[s].std is None else f"{st[s].std:.4f}"]
        paper = e["paper"]
        d = _diff(st["validation_selected"], paper)
        w.writerow([
            data["table"].name, "smoke" if data.get("smoke") else "full",
            data.get("data", ""), cell.column.name,
            cell.method.name, data["preset"], data["table"].metric,
            len(e["seeds"]), *vals,
            "" if paper is None else paper[0],
            "" if paper is None or paper[1] is None else paper[1],
            "" if d is None else f"{d:.4f}",
            *_gain_fields(e.get("own_gain")),
        ])  # fmt: skip
    return buf.getvalue()


def _gain_fields(gain: Stat | None) -> list:
    if gain is None:
        return ["", "", ""]
    return [f"{gain.mean:.4f}", "" if gain.std is None else f"{gain.std:.4f}", gain.n]


def _latex(data: dict) -> str:
    header, rows = _layout(data)

    def esc(s: str) -> str:
        return (
            s.replace("_", r"\_").replace("±", r"$\pm$").replace("−", "-").replace("Δ", r"$\Delta$")
        )

    lines = [f"% {_title(data)}", r"\begin{tabular}{l" + "l" * (len(header) - 1) + "}", r"\hline"]
    lines.append(" & ".join(esc(h) for h in header) + r" \\ \hline")
    lines += [" & ".join(esc(c) for c in r) + r" \\" for r in rows]
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(x)}</th>" for x in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _html(data: dict) -> str:
    figs = ""
    captions = {
        "fig1_weights": "Fig. 1: learned weight mass per class of a 10..1 batch under each cost",
        "fig2_confusion": "Fig. 2: test confusion matrices, CE vs OT, classes by frequency",
    }
    for name, png in data["figures"].items():
        b64 = base64.b64encode(png).decode()
        caption = html.escape(captions.get(name, name))
        figs += (
            f'<figure><img alt="{name}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    if not figs:
        figs = "<p>No figures: no reproduce invocation of this table logged them.</p>"
    fid = _long(data, fidelity=True)
    fid_html = (
        "<h2>Fidelity: paper vs released-code presets</h2>" + _html_table(*fid)
        if len(fid[1]) > 1
        else ""
    )
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:"
             "collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;font-size:13px}"
             "th{background:#eee}img{max-width:100%}")  # fmt: skip
    intro = "".join(f"<p>{html.escape(x)}</p>" for x in _intro(data))
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(_title(data))}"
        f"</title><style>{style}</style></head><body><h1>{html.escape(_title(data))}</h1>{intro}"
        f"{_html_table(*_layout(data))}<h2>Every selection</h2>"
        f"{_html_table(*_long(data, fidelity=False))}{_html_comparison(data)}{fid_html}"
        f"<h2>Figures</h2>{figs}"
        "</body></html>"
    )


def _html_comparison(data: dict) -> str:
    if not data.get("comparison"):
        return ""
    return (
        "<h2>Equal budgets: tuned rows, paired by seed</h2>"
        f"<p>{html.escape(COMPARISON_NOTE)}</p>{_html_table(*_comparison_table(data))}"
    )


def _parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog="python -m orchestrator.report", description=__doc__.split("\n\n")[0])
    p.add_argument("table", help=f"one of: {', '.join(TABLES)}")
    p.add_argument(
        "--format", choices=("md", "csv", "latex", "html"), default="md",
        help="output format (default md; html embeds Fig. 1 and Fig. 2)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="write here instead of stdout")
    p.add_argument(
        "--preset", choices=sorted(PRESETS), default="paper",
        help="the runs reproduced under this preset (default paper)",
    )  # fmt: skip
    p.add_argument("--tuned", action="store_true", help="the runs of reproduce --tuned")
    p.add_argument(
        "--tune", type=int, default=0, metavar="N",
        help="the runs of reproduce --tune N, beside the published-setting runs, with paired "
        "differences and their 95%% intervals",
    )  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="the table's smoke runs")
    p.add_argument(
        "--all", action="store_true", dest="full",
        help="the whole grid: also the rows and columns without finished runs (read "
        "'missing') and the paper's rows that are not run (default: only what has runs)",
    )  # fmt: skip
    p.add_argument("--storage", default=None, help="run storage (default ./runs)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
    return p


def _render_stored(args: argparse.Namespace) -> str:
    """The table from the store, which is only read (a missing store is not created)."""
    name = names.experiment_name(args.table, args.smoke)
    uri, c = cli.read_tracking(args.tracking_uri, args.storage)
    exp = None if c is None else c.get_experiment_by_name(name)
    if exp is None:
        other = names.experiment_name(args.table, not args.smoke)
        if c is not None and c.get_experiment_by_name(other) is not None:
            flag = "without --smoke" if args.smoke else "with --smoke"
            raise cli.CommandError(
                f"no {'smoke ' if args.smoke else ''}runs of {args.table} in {uri}, but "
                f"{'full' if args.smoke else 'smoke'} runs exist: report them {flag}"
            )
        raise cli.CommandError(
            f"no runs of {args.table} in {uri} (experiment {name!r}); run "
            f"{_reproduce_command(args)} first"
        )
    asked = names.settings_key(args.preset, args.tuned)
    table = TABLES[args.table]
    data = report_data(c, exp.experiment_id, table, asked, smoke=args.smoke, tune=args.tune)
    asked = data["preset"]
    if not (has_runs(data) or args.full):
        raise cli.CommandError(
            f"no finished runs of {args.table} under preset {asked} in {uri}; run "
            f"{_reproduce_command(args)} first (--all prints the empty grid)"
        )
    return render(data, args.format, full=args.full)


def _reproduce_command(args: argparse.Namespace) -> str:
    """The ``reproduce`` command that makes the runs this report asked for."""
    flags = [args.table]
    if args.preset != "paper":
        flags.append(f"--preset {args.preset}")
    flags += [f for f, on in (("--tuned", args.tuned), ("--smoke", args.smoke)) if on]
    if args.tune:
        flags.append(f"--tune {args.tune}")
    if args.storage:
        flags.append(f"--storage {args.storage}")
    if args.tracking_uri:
        flags.append(f"--tracking-uri {args.tracking_uri}")
    return cli.command("orchestrator.reproduce " + " ".join(flags))


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.table not in TABLES:
        p.error(unknown_name("table", args.table, TABLES))
    if args.tune < 0 or (args.tune and args.tuned):
        p.error("--tune N needs N >= 1 and names other runs than --tuned: give one")
    try:
        text = _render_stored(args)
    except (cli.CommandError, tracking.TrackingError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    cli.exit_with(main())
