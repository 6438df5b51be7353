"""The report's figures: the Fig. 1 batch (10, 9, ..., 1 per class) and both PNG writers."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.artifacts import write_fig1_png, write_fig2_png
from orchestrator.paper_figures import fig1_batch_indices


def test_fig1_batch_is_ten_down_to_one_per_class_seeded():
    labels = np.repeat(np.arange(12), 15)
    idx = fig1_batch_indices(labels, 12, seed=0)
    assert idx.size == 55 and np.unique(idx).size == 55
    assert np.bincount(labels[idx], minlength=12).tolist() == [10 - c for c in range(10)] + [0, 0]
    assert np.array_equal(idx, fig1_batch_indices(labels, 12, seed=0))
    assert not np.array_equal(idx, fig1_batch_indices(labels, 12, seed=1))
    with pytest.raises(ValueError, match="needs 10 training samples of class 0"):
        fig1_batch_indices(np.repeat(np.arange(10), 5), 10, seed=0)


def test_figure_writers_make_pngs(tmp_path):
    masses = {"classes": [0, 1], "counts": [10, 9], "mass": {"label": [0.5, 0.5]}}
    write_fig1_png(masses, tmp_path / "f1.png", title="t")
    conf = {"confusion": [[5, 1], [2, 3]], "train_counts": [9, 10]}
    write_fig2_png({"CE": conf, "OT": conf}, tmp_path / "f2.png")
    for name in ("f1.png", "f2.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
