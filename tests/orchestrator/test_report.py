"""orchestrator.report on a hand-built MLflow store: mean +- std against hand-computed values,
the latest run per seed, failed / other-preset runs ignored, the paper join, missing cells, and
every output format."""

from __future__ import annotations

import csv
import io
import math

import pytest

from orchestrator import cli, names, tracking
from orchestrator.report import (
    aggregate,
    gain_label,
    main,
    own_gain,
    render,
    report_data,
    run_value,
)
from search_spaces.tables import TABLES
from trainables.config import POSTHOC_PREFIX


def test_aggregate_hand_computed():
    s = aggregate([20.0, 22.0, 27.0])
    assert s.mean == pytest.approx(23.0) and s.n == 3
    assert s.std == pytest.approx(math.sqrt((9 + 1 + 16) / 2))  # sample std, ddof=1
    one = aggregate([5.0])
    assert one.std is None and one.text() == "5.00 (n=1)"
    assert aggregate([]) is None


def test_run_value_picks_the_right_stage_and_metric():
    m = {
        "stage1_best_val_epoch/test_top1_error": 30.0,
        "best_val_epoch/test_top1_error": 35.0,
        "last_epoch/test_top1_error": 36.0,
    }
    base = {"stage2.method": "none", "stage1.epochs": "30"}
    assert run_value(base, m, "validation_selected", "top1_error") == 30.0
    assert run_value(base, m, "last_epoch", "top1_error") is None  # stage 1's last not logged
    ot = {"stage2.method": "ot", "stage1.epochs": "30"}
    assert run_value(ot, m, "validation_selected", "top1_error") == 35.0
    assert run_value(ot, m, "validation_selected", "accuracy") == 65.0
    # fine-tuned BERT: no stage-1 epochs, the stage-2 evaluation is the result
    ft = {"stage2.method": "none", "stage1.epochs": "0"}
    assert run_value(ft, m, "validation_selected", "accuracy") == 65.0


def _maker(tmp_path):
    """(client, experiment, run(cell, seed, err, ...)): an empty reproduce store and a function
    that adds a trial run with the test top-1 error ``err`` selected (last epoch err + 1)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "reproduce-table1", (tmp_path / "art").as_uri())
    c = tracking.client(uri)

    def run(cell, seed, err, *, status="FINISHED", preset="paper", method="ot", end=0):
        r = c.create_run(
            exp,
            tags={
                names.KIND: "trial",
                "ot.table": "table1",
                "ot.cell": cell,
                "ot.seed": str(seed),
                "ot.preset_asked": preset,
            },
        )
        rid = r.info.run_id
        c.log_param(rid, "stage2.method", method)
        c.log_param(rid, "stage1.epochs", "200")
        prefix = "stage1_" if method == "none" else ""
        for sel, v in (
            ("validation_selected", err),
            ("last_epoch", err + 1),
            ("best_test_epoch", err - 1),
        ):
            if method == "none" and sel == "last_epoch":
                continue
            c.log_metric(rid, names.summary_metric(sel, "test", "top1_error", prefix), v)
        c.set_terminated(rid, status=status, end_time=end or None)

    return c, exp, run


def _store(tmp_path):
    c, exp, run = _maker(tmp_path)
    ot = "cifar10_if100|ot_weight_vector"
    run(ot, 0, 20.0, end=2_000_000_000_000)
    run(ot, 0, 99.0, end=1_000_000_000_000)  # an older run of the same seed: superseded
    run(ot, 1, 22.0)
    run(ot, 2, 27.0)
    run(ot, 2, 50.0, status="FAILED")
    run(ot, 3, 10.0, preset="released_code")  # another preset's run
    run("cifar10_if100|ce", 0, 30.0, method="none")
    return c, exp


def test_runs_on_the_jpeg_copy_are_labelled_so_in_every_format(tmp_path):
    c, exp = _store(tmp_path)
    assert report_data(c, exp, TABLES["table1"])["data"] == ""  # the paper's data: no label
    for r in c.search_runs([exp]):
        c.log_param(r.info.run_id, "data.source", "cifar10_jpeg")
    data = report_data(c, exp, TABLES["table1"])
    assert render(data, "md").splitlines()[0] == "## table1 on CIFAR-10 (JPEG q75 copy)"
    assert render(data, "latex").startswith("% table1 on CIFAR-10 (JPEG q75 copy)")
    assert "<h1>table1 on CIFAR-10 (JPEG q75 copy)</h1>" in render(data, "html")
    rows = list(csv.DictReader(io.StringIO(render(data, "csv"))))
    assert rows and {r["data"] for r in rows} == {"CIFAR-10 (JPEG q75 copy)"}


def test_report_aggregates_joins_and_marks_missing(tmp_path):
    c, exp = _store(tmp_path)
    data = report_data(c, exp, TABLES["table1"])
    ot = data["cells"]["cifar10_if100|ot_weight_vector"]
    assert ot["seeds"] == [0, 1, 2]
    v = ot["stats"]["validation_selected"]
    assert v.mean == pytest.approx(23.0) and v.std == pytest.approx(math.sqrt(13))
    assert ot["stats"]["last_epoch"].mean == pytest.approx(24.0)
    assert ot["stats"]["best_test_epoch"].mean == pytest.approx(22.0)
    assert ot["paper"] == (18.13, None)
    ce = data["cells"]["cifar10_if100|ce"]
    assert ce["stats"]["validation_selected"].mean == 30.0 and ce["stats"]["last_epoch"] is None
    assert data["cells"]["cifar10_if200|ce"]["stats"]["validation_selected"] is None

    md = render(data, "md", full=True)
    assert "23.00 ± 3.61 [paper 18.13, +4.87]" in md
    assert "30.00 (n=1) [paper 29.86, +0.14]" in md
    assert "missing [paper 34.13]" in md  # never filled in
    assert "not run [paper 20.18]" in md  # BBN: published only
    rows = list(csv.DictReader(io.StringIO(render(data, "csv", full=True))))
    row = next(
        r for r in rows if r["column"] == "cifar10_if100" and r["method"] == "ot_weight_vector"
    )
    assert float(row["validation_selected_mean"]) == pytest.approx(23.0)
    assert float(row["diff"]) == pytest.approx(23.0 - 18.13)
    assert row["seeds"] == "3" and row["metric"] == "top1_error"
    assert next(r for r in rows if r["column"] == "cifar10_if200")["validation_selected_mean"] == ""
    page = render(data, "html")
    assert page.startswith("<!DOCTYPE html>") and "23.00 ± 3.61" in page
    assert 'src="http' not in page and "<link" not in page  # self-contained
    tex = render(data, "latex")
    assert r"\begin{tabular}" in tex and r"23.00 $\pm$ 3.61" in tex
    assert "smoke" not in md.splitlines()[0] and {r["runs"] for r in rows} == {"full"}


def test_a_report_of_smoke_runs_says_so_in_every_format(tmp_path):
    c, exp = _store(tmp_path)
    data = report_data(c, exp, TABLES["table1"], smoke=True)
    assert render(data, "md").splitlines()[0] == (
        "## table1 (smoke runs: tiny sizes that check the pipeline, not numbers to compare)"
    )
    page = render(data, "html")
    assert "<title>table1 (smoke runs:" in page and "<h1>table1 (smoke runs:" in page
    assert render(data, "latex").startswith("% table1 (smoke runs:")
    rows = list(csv.DictReader(io.StringIO(render(data, "csv"))))
    assert rows and {r["runs"] for r in rows} == {"smoke"}


def test_report_released_code_preset_reads_its_own_runs(tmp_path):
    c, exp = _store(tmp_path)
    data = report_data(c, exp, TABLES["table1"], preset="released_code")
    stat = data["cells"]["cifar10_if100|ot_weight_vector"]["stats"]["validation_selected"]
    assert stat.mean == 10.0 and stat.n == 1


def test_report_cli_without_runs_is_one_line_exit_2(tmp_path, capsys):
    assert main(["offline_image", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    cmd = cli.command(f"orchestrator.reproduce offline_image --storage {tmp_path}")
    assert len(err) == 1 and f"run {cmd} first" in err[0]


def _visible_rows(md: str) -> set[str]:
    """The first column of the paper layout's rows (the first table of the md report)."""
    table = md.split("\n\n")[2].splitlines()[2:]
    return {ln.split(" | ")[0].removeprefix("| ") for ln in table}


def test_report_shows_only_what_has_runs_unless_all(tmp_path):
    c, exp = _store(tmp_path)
    data = report_data(c, exp, TABLES["table1"])
    md = render(data, "md")
    assert _visible_rows(md) == {"ce", "ot_weight_vector"}
    header = md.split("\n\n")[2].splitlines()[0]
    assert header == "| method | cifar10_if100 |"  # the one column with runs
    assert "missing [paper" not in md and "published only" not in md
    assert "cells without finished runs left out (report --all" in md
    every = md.split("### Every selection")[1]
    assert every.count("| cifar10_if100\\|") == 2 and "### Fidelity" not in md
    rows = list(csv.DictReader(io.StringIO(render(data, "csv"))))
    assert {(r["column"], r["method"]) for r in rows} == {
        ("cifar10_if100", "ce"), ("cifar10_if100", "ot_weight_vector"),
    }  # fmt: skip
    page = render(data, "html")
    assert "cifar10_if200" not in page and "missing [paper" not in page
    assert "cifar10_if200" not in render(data, "latex")

    full = render(data, "md", full=True)
    assert {"focal", "ot_weight_vector+no_ot", "bbn (published only)"} <= _visible_rows(full)
    assert "| cifar10_if200\\|focal | missing |" in full
    assert "left out" not in full
    assert len(list(csv.DictReader(io.StringIO(render(data, "csv", full=True))))) == len(
        data["cells"]
    )


def test_report_cli_with_no_finished_run_says_so_in_one_line(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "reproduce-offline_image", (tmp_path / "a").as_uri())
    c = tracking.client(uri)
    tags = {names.KIND: "trial", "ot.table": "offline_image", "ot.cell": "mnist_if100|ce",
            "ot.seed": "0", "ot.preset_asked": "paper"}  # fmt: skip
    c.set_terminated(c.create_run(exp, tags=tags).info.run_id, status="FAILED")
    args = ["offline_image", "--storage", str(tmp_path), "--preset", "released_code"]
    capsys.readouterr()  # MLflow's lines about creating the store
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no finished runs of offline_image")
    cmd = "orchestrator.reproduce offline_image --preset released_code --storage"
    assert f"run {cli.command(cmd)} {tmp_path} first" in err[0]
    assert main([*args, "--all"]) == 0  # the empty grid, on request
    out = capsys.readouterr().out
    assert "| ce | missing |" in out and "cells without finished runs" not in out


def test_ots_own_gain_is_positive_when_ot_is_better_paired_by_seed(tmp_path):
    c, exp = _store(tmp_path)
    # the OT row's seeds (validation-selected error): 0 -> 20, 1 -> 22, 2 -> 27
    ctl = "cifar10_if100|ot_weight_vector+no_ot"
    for seed, err in ((0, 23.0), (2, 26.0), (5, 1.0)):  # seed 1 missing; seed 5 has no OT twin
        r = c.create_run(
            exp,
            tags={
                names.KIND: "trial", "ot.table": "table1", "ot.cell": ctl,
                "ot.seed": str(seed), "ot.preset_asked": "paper",
            },
        )  # fmt: skip
        c.log_param(r.info.run_id, "stage2.method", "ot")
        c.log_param(r.info.run_id, "stage1.epochs", "200")
        c.log_metric(r.info.run_id, "best_val_epoch/test_top1_error", err)
        c.set_terminated(r.info.run_id, status="FINISHED")
    data = report_data(c, exp, TABLES["table1"])
    gain = data["cells"]["cifar10_if100|ot_weight_vector"]["own_gain"]
    # top-1 error, control minus OT: pairs (23 - 20, 26 - 27) = (+3, -1): OT's error is lower
    # on average, so the gain is positive: mean +1, sample std sqrt(8)
    assert gain.n == 2 and gain.mean == pytest.approx(1.0)
    assert gain.std == pytest.approx(math.sqrt(8.0))
    assert data["cells"][ctl]["own_gain"] is None  # a control has no gain of its own
    assert data["cells"]["cifar10_if100|ce"]["own_gain"] is None
    md = render(data, "md", full=True)
    key = "| cifar10_if100\\|ot_weight_vector |"  # Markdown escapes the key's "|"
    row = next(ln for ln in md.splitlines() if ln.startswith(key))
    assert row.endswith("| +1.00 ± 2.83 (n=2) |")
    label = "OT's own gain over its +no_ot control, paired by seed"
    assert f"{label} (top-1 error points, + = OT better) |" in md
    rows = list(csv.DictReader(io.StringIO(render(data, "csv"))))
    ot = next(
        r for r in rows if r["method"] == "ot_weight_vector" and r["column"] == "cifar10_if100"
    )
    assert (float(ot["own_gain_mean"]), ot["own_gain_n"]) == (1.0, "2")
    # an OT row without control runs reads "missing", never a number
    start = "| cifar10_if200\\|ot_weight_vector |"
    other = next(ln for ln in md.splitlines() if ln.startswith(start))
    assert other.endswith("| missing |")


def test_ots_own_gain_in_accuracy_is_the_row_minus_its_control():
    table = TABLES["offline_text"]
    cells = {}
    row = table.cells(["ot_weight_net"])
    assert [c.method.name for c in row] == [
        "ot_weight_net", "ot_weight_net+no_ot", "ot_weight_net+la", "ot_weight_net+la+no_ot",
    ]  # fmt: skip
    seeds = ({0: 80.0, 1: 78.0}, {0: 77.0, 1: 78.5}, {0: 81.0, 1: 79.0}, {0: 82.0, 1: 78.0})
    for cell, by_seed in zip(row, seeds, strict=True):
        cells[cell.key] = {"cell": cell, "selected_by_seed": by_seed}
    ot = cells["tweets_1000_100|ot_weight_net"]
    gain = own_gain(ot, cells, table.metric)  # accuracy: higher is better
    assert (gain.mean, gain.n) == (pytest.approx((3.0 - 0.5) / 2), 2)
    # the adjusted reading's gain is over the adjusted control: (-1 + 1) / 2
    la = own_gain(cells["tweets_1000_100|ot_weight_net+la"], cells, table.metric)
    assert (la.mean, la.n) == (pytest.approx(0.0), 2)
    assert gain_label(table.metric).endswith("(accuracy points, + = OT better)")


def test_fidelity_rows_show_in_the_column_they_were_run_in(tmp_path):
    """``reproduce --columns cifar10_if100 --fidelity`` runs the released-code rows there, not
    in the table's first column: the report shows them, with OT's own gain, and a store of
    fidelity runs alone has no empty main table."""
    c, exp, run = _maker(tmp_path)
    run("cifar10_if100|ot@released_code", 0, 27.35)
    run("cifar10_if100|ot@released_code+no_ot", 0, 27.02)
    md = render(report_data(c, exp, TABLES["table1"]), "md")
    assert "| method |" not in md and "### Every selection" not in md
    fid = md.split("### Fidelity: paper vs released-code presets")[1]
    row = next(
        ln for ln in fid.splitlines() if ln.startswith("| cifar10_if100\\|ot@released_code |")
    )
    cols = row.split(" | ")
    assert cols[2] == "27.35 (n=1)" and cols[3] == "28.35 (n=1)" and cols[4] == "18.13"
    assert cols[-1] == "-0.33 (n=1) |"  # error points, + = OT better: OT is 0.33 worse
    assert "cifar10_if200" not in fid  # the first column's fidelity rows have no runs
    run("cifar10_if100|ce", 0, 30.0, method="none")
    both = render(report_data(c, exp, TABLES["table1"]), "md")
    assert "| ce | 30.00 (n=1) [paper" in both and "ot@released_code" in both.split("### Fid")[1]


def test_a_rows_la_reading_is_read_from_its_own_runs_adjusted(tmp_path):
    """``X+la`` is X's runs' ``posthoc_la/`` metrics (never a run of its own), with its gain over
    ``X+la+no_ot``; a run from before stage 2 recorded the reading leaves the row empty."""
    c, exp, run = _maker(tmp_path)
    ot, ctl = "cifar10_if100|ot_weight_vector", "cifar10_if100|ot_weight_vector+no_ot"
    key = POSTHOC_PREFIX + names.summary_metric("validation_selected", "test", "top1_error")
    for cell, by_seed in ((ot, {0: (20.0, 17.0), 1: (22.0, 18.0)}), (ctl, {0: (21.0, 19.0)})):
        for seed, (err, adjusted) in by_seed.items():
            run(cell, seed, err)
            found = f"tags.`ot.cell` = '{cell}' and tags.`ot.seed` = '{seed}'"
            (r,) = c.search_runs([exp], found)
            c.log_metric(r.info.run_id, key, adjusted)
    run("cifar10_if200|ot_weight_vector", 0, 30.0)  # an older run: no adjusted reading
    cells = report_data(c, exp, TABLES["table1"])["cells"]
    la = cells["cifar10_if100|ot_weight_vector+la"]
    assert la["seeds"] == [0, 1] and la["stats"]["validation_selected"].mean == 17.5
    assert la["stats"]["last_epoch"] is None  # only what the runs logged under the prefix
    assert cells[ot]["stats"]["validation_selected"].mean == 21.0  # the row's own reading
    assert cells["cifar10_if100|ot_weight_vector+la+no_ot"]["selected_by_seed"] == {0: 19.0}
    assert la["own_gain"].mean == 2.0 and la["own_gain"].n == 1  # 19 - 17, seed 0 only
    assert cells["cifar10_if200|ot_weight_vector+la"]["seeds"] == []
    assert cells["cifar10_if200|ot_weight_vector"]["seeds"] == [0]
    md = render(report_data(c, exp, TABLES["table1"]), "md")
    row = next(ln for ln in md.splitlines() if ln.startswith("| ot_weight_vector+la |"))
    assert row.split(" | ")[1:] == ["missing", "17.50 ± 0.71 |"]  # cifar10_if200, _if100


def test_la_rows_are_never_planned_as_runs():
    from orchestrator.reproduce_run import plan

    specs = plan(TABLES["offline_image"], seeds=1, methods=["ot_weight_vector+la"],
                 preset="paper", smoke=True, fidelity=False)  # fmt: skip
    # asking for the reading runs the rows it reads: the OT row and its control
    assert sorted(s.cell.method.name for s in specs) == [
        "ot_weight_vector", "ot_weight_vector+no_ot",
    ]  # fmt: skip
