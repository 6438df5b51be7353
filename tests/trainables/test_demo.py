"""Paper Fig. 1 on real digits: the learned weights re-balance an imbalanced batch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from trainables import demo


@pytest.fixture(scope="module")
def masses():
    return demo.run(seed=0, steps=150)


def test_batch_is_ten_to_one_and_disjoint_from_meta():
    z, y, z_meta, y_meta = demo.fig1_batch(0)
    assert torch.bincount(y).tolist() == list(range(10, 0, -1))
    assert torch.bincount(y_meta).tolist() == [10] * 10
    # disjoint: no batch image equals a meta image
    assert torch.cdist(z, z_meta).min() > 0


def test_label_and_combined_costs_balance_the_classes(masses):
    uniform = torch.tensor([(10 - c) / 55 for c in range(10)])
    for cost in ("label", "combined"):
        m = masses[cost]
        torch.testing.assert_close(m.sum(), torch.tensor(1.0))
        assert (m - 0.1).abs().max() < 0.01, (cost, m)
        assert (uniform - 0.1).abs().max() > 0.08  # the start was far from balanced


def test_feature_cost_gives_instance_level_weights(masses):
    # Without labels the mass follows feature similarity: most classes near 1/K, not all.
    m = masses["feature"]
    assert ((m - 0.1).abs() < 0.02).sum() >= 7
    assert (m - 0.1).abs().max() > 0.05  # ... and not a class-level re-weighting


def test_cli_prints_table_and_rejects_bad_input():
    out = subprocess.run(
        [sys.executable, "-m", "trainables.demo", "--steps", "20"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "label" in out and "combined" in out and len(out.splitlines()) == 13
    bad = subprocess.run(
        [sys.executable, "-m", "trainables.demo", "--eps", "-1"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--eps must be > 0" in bad.stderr
