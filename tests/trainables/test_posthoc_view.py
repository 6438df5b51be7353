"""Post-hoc logit adjustment reads the CE stage 1 (one build for the ce and posthoc_la rows).

A CE build records, every epoch, the model's predictions through ``z - tau * log(prior)`` as
well and selects that reading on its own validation score; a ``posthoc_la`` row reports it.
"""

from __future__ import annotations

import math

import pytest
import torch

from search_spaces import resolve
from trainables.config import POSTHOC_PREFIX, apply_overrides
from trainables.metrics import classification_metrics
from trainables.trial import (
    POSTHOC_SUMMARY,
    build_stage1,
    data_and_model,
    run_stage2,
    stage1_key,
    stage1_summary,
    trial_result,
)

CPU = torch.device("cpu")
POSTHOC = ["stage1.loss=logit_adjustment_posthoc", "stage2.method=none"]


def _cfg(*sets: str):
    return apply_overrides(resolve("image_mnist_lt", smoke=True), ["stage1.epochs=3", *sets])


def test_ce_and_posthoc_share_one_build_and_tau_tells_them_apart():
    ce, la = _cfg(), _cfg(*POSTHOC)
    assert stage1_key(ce) == stage1_key(la)
    assert stage1_key(_cfg(*POSTHOC, "stage1.la_tau=0.5")) != stage1_key(ce)
    assert stage1_key(_cfg("stage1.loss=focal")) != stage1_key(ce)


@pytest.fixture(scope="module")
def built():
    """A 3-epoch smoke CE build (about 15 s with the tests below: in the full run)."""
    cfg = _cfg("stage1.la_tau=0.7")
    epochs = []
    out = build_stage1(cfg, callback=lambda s, e, m: epochs.append(m), device=CPU)
    return cfg, out, epochs


def _by_hand(cfg, out, tau: float) -> dict:
    """The last model's val/test metrics with the prior subtracted, written out here."""
    data, model = data_and_model(cfg, CPU, load_pretrained=False)
    model.load_state_dict(out.model_state)
    model.eval()
    counts = torch.tensor(data.train_counts, dtype=torch.float64)
    log_prior = torch.log(counts / counts.sum()).float()
    res = {}
    with torch.no_grad():
        for name in ("val", "test"):
            split = getattr(data, name)
            logits = model(data.prepare(split.x, augment=False, generator=None))
            pred = (logits - tau * log_prior).argmax(1)
            raw = logits.argmax(1)
            assert not torch.equal(pred, raw)  # the adjustment changes predictions here
            res[name] = classification_metrics(pred, split.y, data.num_classes, data.train_counts)
    return res


@pytest.mark.slow
def test_the_adjusted_reading_of_the_last_epoch_by_hand(built):
    cfg, out, epochs = built
    expect = _by_hand(cfg, out, 0.7)
    last = out.info["summary"][POSTHOC_SUMMARY]["last_epoch"]
    for split in ("val", "test"):
        for metric in ("top1_error", "balanced_acc"):
            assert last[split][metric] == pytest.approx(expect[split][metric], abs=1e-9)
            assert epochs[-1][f"{POSTHOC_PREFIX}{split}_{metric}"] == pytest.approx(
                expect[split][metric], abs=1e-9
            )
    # the raw reading is still the row's own for ce
    assert out.info["summary"]["last_epoch"]["test"]["top1_error"] == pytest.approx(
        epochs[-1]["test_top1_error"]
    )


@pytest.mark.slow
def test_the_adjusted_reading_selects_on_its_own_validation_score(built):
    _, out, epochs = built
    vals = [m[f"{POSTHOC_PREFIX}val_balanced_acc"] for m in epochs]
    best = max(range(len(vals)), key=lambda i: (vals[i], -i))  # ties keep the earlier epoch
    sel = out.info["summary"][POSTHOC_SUMMARY]["validation_selected"]
    assert sel["epoch"] == best + 1  # epochs counted from 1
    assert sel["test"]["top1_error"] == pytest.approx(
        epochs[best][f"{POSTHOC_PREFIX}test_top1_error"]
    )


@pytest.mark.slow
def test_each_row_reports_its_reading_and_posthoc_stage2_adjusts(built):
    cfg, out, _ = built
    la = apply_overrides(cfg, POSTHOC)
    assert stage1_summary(la, out.info) == out.info["summary"][POSTHOC_SUMMARY]
    assert stage1_summary(cfg, out.info) == out.info["summary"]
    assert (
        trial_result(la, out, *run_stage2(la, out, device=CPU))["stage1"]
        == (out.info["summary"][POSTHOC_SUMMARY])
    )
    s2, _ = run_stage2(la, out, device=CPU)  # stage2.method=none: the last model, adjusted
    expect = out.info["summary"][POSTHOC_SUMMARY]["last_epoch"]["test"]["top1_error"]
    assert math.isclose(s2.last["test"]["top1_error"], expect, abs_tol=1e-9)
    raw, _ = run_stage2(apply_overrides(cfg, ["stage2.method=none"]), out, device=CPU)
    assert raw.last["test"]["top1_error"] == pytest.approx(
        out.info["summary"]["last_epoch"]["test"]["top1_error"]
    )
