"""orchestrator.report on a hand-built MLflow store: mean +- std against hand-computed values,
the latest run per seed, failed / other-preset runs ignored, the paper join, missing cells, and
every output format."""

from __future__ import annotations

import csv
import io
import math

import pytest

from orchestrator import names, tracking
from orchestrator.report import aggregate, main, render, report_data, run_value
from search_spaces.tables import TABLES


def test_aggregate_hand_computed():
    s = aggregate([20.0, 22.0, 27.0])
    assert s.mean == pytest.approx(23.0) and s.n == 3
    assert s.std == pytest.approx(math.sqrt((9 + 1 + 16) / 2))  # sample std, ddof=1
    one = aggregate([5.0])
    assert one.std is None and one.text() == "5.00 (n=1)"
    assert aggregate([]) is None


def test_run_value_picks_the_right_stage_and_metric():
    m = {
        "stage1_validation_selected/test_top1_error": 30.0,
        "validation_selected/test_top1_error": 35.0,
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


def _store(tmp_path):
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
            c.log_metric(rid, f"{prefix}{sel}/test_top1_error", v)
        c.set_terminated(rid, status=status, end_time=end or None)

    ot = "cifar10_if100|ot_weight_vector"
    run(ot, 0, 20.0, end=2_000_000_000_000)
    run(ot, 0, 99.0, end=1_000_000_000_000)  # an older run of the same seed: superseded
    run(ot, 1, 22.0)
    run(ot, 2, 27.0)
    run(ot, 2, 50.0, status="FAILED")
    run(ot, 3, 10.0, preset="released_code")  # another preset's run
    run("cifar10_if100|ce", 0, 30.0, method="none")
    return c, exp


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

    md = render(data, "md")
    assert "23.00 ± 3.61 [paper 18.13, +4.87]" in md
    assert "30.00 (n=1) [paper 29.86, +0.14]" in md
    assert "missing [paper 34.13]" in md  # never filled in
    assert "not run [paper 20.18]" in md  # BBN: published only
    rows = list(csv.DictReader(io.StringIO(render(data, "csv"))))
    row = next(
        r for r in rows if r["column"] == "cifar10_if100" and r["method"] == "ot_weight_vector"
    )
    assert float(row["validation_selected_mean"]) == pytest.approx(23.0)
    assert float(row["diff"]) == pytest.approx(23.0 - 18.13)
    assert row["seeds"] == "3"
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
    assert len(err) == 1 and "reproduce offline_image first" in err[0]


def test_ots_own_gain_is_the_row_minus_its_control_paired_by_seed(tmp_path):
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
        c.log_metric(r.info.run_id, "validation_selected/test_top1_error", err)
        c.set_terminated(r.info.run_id, status="FINISHED")
    data = report_data(c, exp, TABLES["table1"])
    gain = data["cells"]["cifar10_if100|ot_weight_vector"]["own_gain"]
    # pairs (20 - 23, 27 - 26) = (-3, +1): mean -1, sample std sqrt(8)
    assert gain.n == 2 and gain.mean == pytest.approx(-1.0)
    assert gain.std == pytest.approx(math.sqrt(8.0))
    assert data["cells"][ctl]["own_gain"] is None  # a control has no gain of its own
    assert data["cells"]["cifar10_if100|ce"]["own_gain"] is None
    md = render(data, "md")
    key = "| cifar10_if100\\|ot_weight_vector |"  # Markdown escapes the key's "|"
    row = next(ln for ln in md.splitlines() if ln.startswith(key))
    assert row.endswith("| -1.00 ± 2.83 (n=2) |")
    assert "OT's own gain (row − its +no_ot control, paired by seed)" in md
    rows = list(csv.DictReader(io.StringIO(render(data, "csv"))))
    ot = next(
        r for r in rows if r["method"] == "ot_weight_vector" and r["column"] == "cifar10_if100"
    )
    assert (float(ot["own_gain_mean"]), ot["own_gain_n"]) == (-1.0, "2")
    # an OT row without control runs reads "missing", never a number
    start = "| cifar10_if200\\|ot_weight_vector |"
    other = next(ln for ln in md.splitlines() if ln.startswith(start))
    assert other.endswith("| missing |")
