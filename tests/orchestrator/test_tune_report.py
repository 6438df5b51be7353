"""``reproduce --tune``'s arithmetic and its refusals: the paired t intervals against
hand-computed cases, the strongest baseline and the signs of the comparison, the settings key,
and the command lines that cannot mean anything."""

from __future__ import annotations

import math

import pytest

from orchestrator.names import settings_key
from orchestrator.report import (
    aggregate,
    paired_interval,
    strongest_baseline,
    tune_comparison,
)
from search_spaces.tables import TABLES

T_975_2DF = 4.302652729749464  # Student t, 97.5% quantile, 2 degrees of freedom (tables)


def test_the_interval_of_three_paired_differences_by_hand():
    # mean 2, sample sd 1, se 1/sqrt(3): half-width t * se = 2.4841...
    got = paired_interval([1.0, 2.0, 3.0])
    half = T_975_2DF / math.sqrt(3)
    assert got.n == 3 and got.mean == pytest.approx(2.0)
    assert (got.low, got.high) == pytest.approx((2.0 - half, 2.0 + half), abs=1e-12)
    assert not got.excludes_zero and "*" not in got.text()
    tight = paired_interval([2.0, 2.5, 3.0])  # sd 0.5: [1.258, 3.742]
    assert tight.low == pytest.approx(2.5 - T_975_2DF * 0.5 / math.sqrt(3), abs=1e-12)
    assert tight.excludes_zero and tight.text().startswith("+2.50 [+1.26, +3.74] *")
    below = paired_interval([-2.0, -2.5, -3.0])
    assert below.excludes_zero and below.high < 0


def test_two_seeds_use_twelve_point_seven_and_one_seed_has_no_interval():
    got = paired_interval([1.0, 3.0])  # mean 2, sd sqrt(2), se 1, t(0.975, 1) = 12.706
    assert (got.low, got.high) == pytest.approx((2 - 12.706204736, 2 + 12.706204736), abs=1e-6)
    assert paired_interval([1.0]) is None and paired_interval([]) is None


def _entry(cell, by_seed: dict[int, float], tuned_val: float | None = None) -> dict:
    values = list(by_seed.values())
    return {
        "cell": cell,
        "seeds": sorted(by_seed),
        "stats": {"validation_selected": aggregate(values)},
        "selected_by_seed": dict(by_seed),
        "tuned_val": tuned_val,
    }


def test_comparison_pairs_by_seed_against_the_strongest_baseline_and_the_control():
    table = TABLES["offline_image"]
    cells = {c.method.name: c for c in table.cells()}
    tuned = {
        cells[n].key: _entry(cells[n], v, val)
        for n, v, val in (
            ("ce", {1: 30.0, 2: 32.0, 3: 31.0}, 71.0),
            ("cb_ce", {1: 10.0, 2: 11.0, 3: 12.0}, 90.5),  # the strongest (lowest error)
            ("ot_weight_vector", {1: 12.0, 2: 12.0, 3: 13.0}, 89.0),
            ("ot_weight_vector+no_ot", {1: 14.0, 2: 15.0, 3: 15.0}, 89.0),
            # +la readings: never the strongest baseline, compared with the adjusted control
            ("ot_weight_vector+la", {1: 9.0, 2: 9.0, 3: 9.0}, None),
            ("ot_weight_vector+la+no_ot", {1: 9.5, 2: 9.0, 3: 10.0}, None),
        )
    }
    assert strongest_baseline(tuned, "top1_error") == cells["cb_ce"].key
    published = {cells["ce"].key: _entry(cells["ce"], {0: 33.0, 1: 35.0})}
    comp = tune_comparison(tuned, published, table)
    rows = {r["key"]: r for r in comp["rows"]}
    assert cells["ot_weight_vector+no_ot"].key not in rows  # a control is compared, not a row
    ot = rows[cells["ot_weight_vector"].key]
    # error: + = better. vs CB-CE: -(12-10), -(12-11), -(13-12) = -2, -1, -1
    assert ot["vs_best"].mean == pytest.approx(-4 / 3)
    assert ot["vs_best"].n == 3
    # vs its control: 14-12, 15-12, 15-13 = 2, 3, 2
    assert ot["vs_control"].mean == pytest.approx(7 / 3)
    assert ot["search_val"] == pytest.approx(11.0)  # 100 - 89 (validation balanced acc)
    assert rows[cells["cb_ce"].key]["vs_best"] is None  # itself
    assert rows[cells["ce"].key]["vs_control"] is None  # a baseline has no control
    assert rows[cells["ce"].key]["published"].mean == pytest.approx(34.0)
    la = rows[cells["ot_weight_vector+la"].key]
    assert la["vs_control"].mean == pytest.approx(0.5)  # 0.5, 0, 1 against +la+no_ot
    assert la["vs_best"].mean == pytest.approx(2.0)  # 10-9, 11-9, 12-9 against CB-CE
    assert cells["ot_weight_vector+la+no_ot"].key not in rows


def test_accuracy_tables_count_higher_as_better():
    table = TABLES["offline_text"]
    cells = {c.method.name: c for c in table.cells()}
    tuned = {
        cells["proportion"].key: _entry(cells["proportion"], {1: 80.0, 2: 81.0}),
        cells["ldam_drw"].key: _entry(cells["ldam_drw"], {1: 70.0, 2: 72.0}),
        cells["ot_weight_net"].key: _entry(cells["ot_weight_net"], {1: 82.0, 2: 84.0}, 85.0),
    }
    assert strongest_baseline(tuned, "accuracy") == cells["proportion"].key
    rows = {r["key"]: r for r in tune_comparison(tuned, {}, table)["rows"]}
    ot = rows[cells["ot_weight_net"].key]
    assert ot["vs_best"].mean == pytest.approx(2.5) and ot["search_val"] == 85.0


def test_settings_keys_name_what_was_asked():
    assert settings_key("paper", False) == "paper"
    assert settings_key("paper", True) == "paper+sweep"
    assert settings_key("released_code", False, 32) == "released_code+tune32"


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--tune", "-1"], "--tune N needs N >= 1"),
        (["--tune", "2", "--tuned"], "neither --tuned"),
        (["--tune", "2", "--fidelity"], "nor --fidelity"),
        (["--tune", "2", "--first-seed", "0"], "--tune searches on seed 0"),
    ],
)
def test_tune_refuses_what_cannot_mean_anything(in_process, argv, says):
    status, err = in_process("reproduce", "offline_image", "--smoke", *argv)
    assert status == 2 and says in err, err


def test_report_refuses_tune_with_tuned(in_process, tmp_path):
    status, err = in_process(
        "report", "offline_image", "--tune", "2", "--tuned", "--storage", str(tmp_path)
    )
    assert status == 2 and "names other runs than --tuned" in err, err


@pytest.mark.parametrize("table", ["offline_image", "offline_text", "offline_pointcloud", "table1"])
@pytest.mark.parametrize("smoke", [False, True])
def test_a_rows_search_is_a_sweep_of_the_rows_own_config(table, smoke):
    """The sweep command line ``--tune`` builds resolves, through the sweep's own parser and
    resolver, to the cell's config at the search seed (user overrides included), for every
    tunable row; it searches the row's space and draws no figures."""
    import argparse

    from orchestrator import cli, sweep
    from orchestrator.tune_rows import SEARCH_SEED, search_argv
    from search_spaces.tables import cell_config, row_space
    from trainables.config import apply_overrides

    user = ["stage2.epochs=3"]
    args = argparse.Namespace(
        preset="paper", cpus_per_trial=1.0, gpus_per_trial=0.0, max_failures=2, address=None,
        offline=False, quiet=True, cache_in_storage=False, verbose=0, overrides=user,
    )  # fmt: skip
    t = TABLES[table]
    for cell in t.cells(columns=[t.columns[0].name]):
        cfg = apply_overrides(cell_config(cell, seed=SEARCH_SEED, smoke=smoke), user)
        space = row_space(cell.method, cfg)
        if space is None:
            continue
        argv = search_argv(cell, cfg, 4, args, ("/tmp/s", "sqlite:///x.db"), smoke=smoke)
        parsed = sweep.parse_args(argv)
        assert cli.config_from_args(parsed) == cfg, cell.key
        assert (parsed.space, parsed.trials, parsed.figures) == (space.name, 4, 0)
        # a trial that builds a stage 1 asks for the threads it builds on
        want = cfg.stage1.threads if space.stage1 else 1.0
        assert parsed.cpus_per_trial == want, cell.key
