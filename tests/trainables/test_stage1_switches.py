"""stage1.amp, stage1.channels_last and stage1.compile (issue #8's GPU throughput switches),
checked on the CPU: channels-last and torch.compile train the same model, bf16 autocast really
runs the convolutions in bfloat16 and stays seeded, and bad combinations are refused."""

from __future__ import annotations

import pytest
import torch

from search_spaces import resolve
from trainables.config import apply_overrides
from trainables.trial import build_stage1

CPU = torch.device("cpu")


def _cfg(*sets):
    return apply_overrides(resolve("image_mnist_lt", smoke=True), ["stage1.epochs=1", *sets])


def _conv_weights(state):
    return {k: v for k, v in state.items() if v.dim() == 4}


def test_channels_last_trains_the_same_model_in_nhwc():
    base = build_stage1(_cfg(), device=CPU)
    nhwc = build_stage1(_cfg("stage1.channels_last=true"), device=CPU)
    convs = _conv_weights(nhwc.model_state)
    assert convs, "the smoke model has convolutions"
    assert all(v.is_contiguous(memory_format=torch.channels_last) for v in convs.values())
    # (a 1-channel or 1 x 1 kernel is both; the others are NHWC only)
    assert any(not v.is_contiguous() for v in convs.values())
    for k, v in base.model_state.items():
        torch.testing.assert_close(nhwc.model_state[k], v, rtol=1e-3, atol=1e-4, msg=k)


def test_bf16_autocast_runs_the_forward_in_bfloat16_and_is_seeded(monkeypatch):
    seen = []
    real = torch.nn.Conv2d.forward

    def spy(self, x):
        out = real(self, x)
        if self.training:
            seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Conv2d, "forward", spy)
    a = build_stage1(_cfg("stage1.amp=bf16"), device=CPU)
    assert seen and set(seen) == {torch.bfloat16}
    monkeypatch.setattr(torch.nn.Conv2d, "forward", real)
    b = build_stage1(_cfg("stage1.amp=bf16"), device=CPU)
    base = build_stage1(_cfg(), device=CPU)
    moved = 0.0
    for k, v in a.model_state.items():
        assert v.dtype == base.model_state[k].dtype, k  # the weights stay float32
        assert torch.equal(v, b.model_state[k]), k
        if v.is_floating_point():
            moved = max(moved, float((v - base.model_state[k]).abs().max()))
    assert moved > 0  # bfloat16 rounding changed the trajectory ...
    summary = a.info["summary"]["validation_selected"]["test"]["balanced_acc"]
    ref = base.info["summary"]["validation_selected"]["test"]["balanced_acc"]
    assert abs(summary - ref) < 3.0  # ... but not what one epoch learns (percent)


@pytest.mark.slow  # torch.compile of a ResNet on the CPU: about 40 s
def test_compiled_stage1_trains_the_eager_model(monkeypatch):
    import torch._dynamo

    torch._dynamo.reset()
    calls = []
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: calls.append(kw) or real(m, **kw))
    compiled = build_stage1(_cfg("stage1.compile=default"), device=CPU)
    assert calls == [{"mode": None}]
    base = build_stage1(_cfg(), device=CPU)
    # Not bit-equal: MNIST's flat background makes ties inside max-pool windows, and inductor's
    # kernels break them at other positions (an equally valid subgradient), so the layers below
    # a pool get gradients up to ~1% apart per step. The whole state stays within 1%.
    keys = [k for k, v in base.model_state.items() if v.is_floating_point()]
    flat = lambda state: torch.cat([state[k].reshape(-1) for k in keys])  # noqa: E731
    gap = (flat(compiled.model_state) - flat(base.model_state)).norm()
    assert float(gap / flat(base.model_state).norm()) < 1e-2
    got = compiled.info["summary"]["validation_selected"]["test"]["balanced_acc"]
    want = base.info["summary"]["validation_selected"]["test"]["balanced_acc"]
    assert abs(got - want) < 1.0


@pytest.mark.parametrize(
    "sets, msg",
    [
        (["stage1.amp=fp16"], "bad value for stage1.amp: 'fp16'; choose from none, bf16"),
        (["stage1.amp=bf16", "stage1.reweight=l2rw"], "reweight=none"),
        (["stage1.compile=max-autotune"], "bad value for stage1.compile: 'max-autotune'"),
        (["stage1.compile=default", "stage1.reweight=l2rw"], "reweight=none"),
        (["stage1.channels_last=true", "stage1.reweight=mwn"], "reweight=none"),
    ],
)
def test_bad_switches_are_refused(sets, msg):
    with pytest.raises(ValueError, match=msg):
        build_stage1(_cfg(*sets), device=CPU)
