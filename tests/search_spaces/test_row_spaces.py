"""Contract tests over the space of every tunable row of every table (``reproduce --tune``):
each samples inside its ranges and applies, its first setting is the row's published config, and
every space searches the learning rate and weight decay of the stage its method trains."""

from __future__ import annotations

import math

import optuna
import pytest

from search_spaces import SEARCH_SPACES
from search_spaces.tables import TABLES, cell_config, row_space
from trainables.config import apply_overrides, value_at
from trainables.trial import check_config

optuna.logging.set_verbosity(optuna.logging.WARNING)

ROWS = [
    (t.name, cell)
    for t in TABLES.values()
    for cell in t.cells(fidelity=True)
    if cell.column == t.columns[0]
]
TUNED = [(t, c) for t, c in ROWS if row_space(c.method, cell_config(c, seed=0)) is not None]
IDS = [f"{t}:{c.method.name}" for t, c in TUNED]

# The published values of each method's own knobs (the papers' and released code's).
PUBLISHED = {
    "focal": {"stage1.focal_gamma": 1.0},
    "cb": {"stage1.cb_beta": 0.9999},
    "cb_focal": {"stage1.cb_beta": 0.9999, "stage1.focal_gamma": 1.0},
    "ldam": {"stage1.ldam_max_m": 0.5, "stage1.ldam_s": 30.0},
    "ldam_drw": {"stage1.ldam_max_m": 0.5, "stage1.ldam_s": 30.0},
    "logit_adjustment": {"stage1.la_tau": 1.0},
    "meta_reweight": {"stage1.meta_lr": 1e-5, "stage1.meta_batch": 100},
    "metasaug": {"stage1.isda_lambda": 0.5, "stage1.meta_lr": 0.1},
}


def test_every_row_but_controls_and_fidelity_rows_has_a_space():
    for table, cell in ROWS:
        space = row_space(cell.method, cell_config(cell, seed=0))
        untuned = bool(cell.method.control_of) or cell.method.fidelity
        assert (space is None) == untuned, (table, cell.key)
    assert {row_space(c.method, cell_config(c, seed=0)).name for _, c in TUNED} >= set(PUBLISHED)


@pytest.mark.parametrize("table, cell", TUNED, ids=IDS)
def test_row_space_samples_applies_and_starts_at_the_published_row(table, cell):
    cfg = cell_config(cell, seed=0)
    space = row_space(cell.method, cfg)
    space.check(cfg)
    best = space.best(cfg)
    assert apply_overrides(cfg, [f"{k}={v}" for k, v in best.items()]) == cfg
    for key, value in PUBLISHED.get(space.name, {}).items():
        assert best[key] == value, (key, best[key])
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(best)
    first = study.ask()
    space.space(first, best)
    assert first.params == best
    for _ in range(3):
        trial = study.ask()
        space.space(trial, best)
        tuned = apply_overrides(cfg, [f"{k}={v}" for k, v in trial.params.items()])
        check_config(tuned)
        for key, value in trial.params.items():
            assert value_at(tuned, key) == value, key
            dist = trial.distributions[key]
            assert dist._contains(dist.to_internal_repr(value)), (key, value)


@pytest.mark.parametrize("table, cell", TUNED, ids=IDS)
def test_every_row_space_searches_its_trained_stage_optimiser(table, cell):
    """Around the row's own values, a decade either side, log-uniform (an OT row's alpha has
    its protocol's fixed range, which holds the published value)."""
    cfg = cell_config(cell, seed=0)
    space = row_space(cell.method, cfg)
    trial = optuna.create_study().ask()
    space.space(trial, space.best(cfg))
    stage = "stage2" if cell.method.ot else ("stage0" if space.name == "stage0" else "stage1")
    for knob in ("lr", "weight_decay"):
        key = f"{stage}.{knob}"
        dist = trial.distributions[key]
        own = value_at(cfg, key)
        if cell.method.ot and knob == "lr":
            assert dist.log and dist.low <= own <= dist.high
            continue
        assert dist.log and math.isclose(dist.low, own / 10) and math.isclose(dist.high, own * 10)


def test_drw_start_is_searched_from_half_the_published_epoch_to_it():
    space = SEARCH_SPACES["ldam_drw"]
    trial = optuna.create_study().ask()
    space.space(trial, {"stage1.drw_epoch": 161, "stage1.lr": 0.1, "stage1.weight_decay": 2e-4})
    dist = trial.distributions["stage1.drw_epoch"]
    assert (dist.low, dist.high) == (81, 161)


def test_a_zero_published_value_cannot_be_scaled():
    with pytest.raises(ValueError, match=r"--space ce: stage1.weight_decay=0 cannot be scaled"):
        SEARCH_SPACES["ce"].space(
            optuna.create_study().ask(), {"stage1.lr": 0.1, "stage1.weight_decay": 0.0}
        )
