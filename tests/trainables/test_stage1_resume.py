"""Stage 1 continues from its epoch checkpoints bit for bit (trainables/resume.py, the loop).

At smoke size (image_mnist_lt --smoke, 4 stage-1 epochs): one uninterrupted build is the
reference; an interruption is a callback that raises after an epoch (its checkpoint is saved
before the callback runs, as it is before a kill could land there).
"""

from __future__ import annotations

import pytest
import torch

from search_spaces import resolve
from trainables.config import apply_overrides
from trainables.resume import DirStore, Stage1Checkpoints
from trainables.trial import build_stage1, stage1_key

# two stage-1 trainings each (about 40 s): in the full run; the quick run keeps the
# checkpoint files' own tests (tests/trainables/test_resume.py)
pytestmark = pytest.mark.slow

EPOCHS = 4
CPU = torch.device("cpu")


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def cfg():
    return apply_overrides(resolve("image_mnist_lt", smoke=True), [f"stage1.epochs={EPOCHS}"])


def _build(cfg, checkpoints=None, stop_after=None):
    calls = []

    def callback(stage, epoch, metrics):
        calls.append((stage, epoch, metrics))
        if stage == "stage1" and epoch + 1 == stop_after:
            raise Interrupted

    out = build_stage1(
        cfg, callback=callback, device=CPU, with_features=True, checkpoints=checkpoints
    )
    return out, calls


@pytest.fixture(scope="module")
def reference(cfg):
    """The uninterrupted stage 1, without checkpoints."""
    return _build(cfg)


def _assert_same(a, b):
    (out_a, calls_a), (out_b, calls_b) = a, b
    assert out_a.model_state.keys() == out_b.model_state.keys()
    for k, v in out_a.model_state.items():
        assert torch.equal(v, out_b.model_state[k]), k
    for k, v in out_a.rng.items():
        assert torch.equal(v, out_b.rng[k]), k
    for k, v in out_a.features.items():
        assert torch.equal(v, out_b.features[k]), k
    assert out_a.info == out_b.info  # the metrics summary of all three selections
    assert calls_a == calls_b  # every epoch reported once, with the same numbers


def _interrupt(cfg, tmp_path, after: int, log: list) -> Stage1Checkpoints:
    ckpts = Stage1Checkpoints(DirStore(tmp_path), stage1_key(cfg), log=log.append)
    with pytest.raises(Interrupted):
        _build(cfg, ckpts, stop_after=after)
    return ckpts


def test_an_interrupted_stage1_resumes_bit_for_bit(cfg, reference, tmp_path):
    log = []
    ckpts = _interrupt(cfg, tmp_path, 2, log)
    # the last two are kept
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "stage1-epoch-0001.ckpt",
        "stage1-epoch-0002.ckpt",
    ]
    assert log == []
    resumed = _build(cfg, ckpts)
    assert log == [f"stage 1: resuming from epoch 2 of {EPOCHS}"]
    _assert_same(resumed, reference)


def test_a_corrupt_latest_checkpoint_is_reported_skipped_and_the_previous_used(
    cfg, reference, tmp_path
):
    log = []
    ckpts = _interrupt(cfg, tmp_path, 2, log)
    latest = tmp_path / "stage1-epoch-0002.ckpt"
    latest.write_bytes(latest.read_bytes()[:-1000])  # a truncated copy
    resumed = _build(cfg, ckpts)
    assert log == [
        "stage 1: checkpoint stage1-epoch-0002.ckpt skipped: checksum mismatch (truncated or "
        "damaged)",
        f"stage 1: resuming from epoch 1 of {EPOCHS}",
    ]
    _assert_same(resumed, reference)
