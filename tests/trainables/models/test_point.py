"""Point-cloud ops and models: the pure-torch kNN / fps / radius against brute force, each
model's shapes and a training step, and DGCNN's EdgeConv against a dense hand computation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from trainables.data.arrays import StageData, TensorSplit
from trainables.models import build_model, pointops
from trainables.models.pointops import fps, knn_graph, pyg_has, radius

BACKENDS = ["torch"] + (["pyg"] if pyg_has("KNN") else [])


def _clouds(b=3, n=40, f=3, seed=0):
    return torch.randn(b, n, f, generator=torch.Generator().manual_seed(seed))


def _use(backend, monkeypatch):
    if backend == "torch":
        monkeypatch.setattr(pointops, "pyg_has", lambda op: False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loop", [False, True])
def test_knn_graph_matches_brute_force(backend, loop, monkeypatch):
    _use(backend, monkeypatch)
    x = _clouds(f=5)
    k = 6
    got = knn_graph(x, k, loop=loop)
    want = set()
    b, n, _ = x.shape
    for c, i in itertools.product(range(b), range(n)):
        d = [(float(((x[c, i] - x[c, j]) ** 2).sum()), j) for j in range(n) if loop or j != i]
        for _, j in sorted(d)[:k]:
            want.add((c * n + j, c * n + i))  # (source = neighbour, target = centre)
    assert got.shape == (2, b * n * k)
    assert set(map(tuple, got.t().tolist())) == want


def test_knn_graph_rejects_too_few_points():
    with pytest.raises(ValueError, match="k=5"):
        knn_graph(_clouds(n=5), 5)


def test_fps_matches_a_naive_loop():
    pos = _clouds(n=30)
    got = fps(pos, 8)
    for c in range(pos.shape[0]):
        p = pos[c].double().numpy()
        chosen = [0]
        while len(chosen) < 8:
            dist = np.min(((p[:, None, :] - p[chosen][None]) ** 2).sum(-1), axis=1)
            chosen.append(int(np.argmax(dist)))
        assert got[c].tolist() == chosen


def test_radius_keeps_the_nearest_points_within_r():
    pos = _clouds(b=2, n=50)
    centres = fps(pos, 5)
    r, cap = 1.2, 7
    edges = radius(pos, centres, r, cap)
    b, n, _ = pos.shape
    got = set(map(tuple, edges.t().tolist()))
    want = set()
    for c, m in itertools.product(range(b), range(5)):
        centre = pos[c, centres[c, m]]
        d = sorted((float((pos[c, j] - centre).norm()), j) for j in range(n))
        for dist, j in d[:cap]:
            if dist <= r:
                want.add((c * n + j, c * 5 + m))
    assert got == want
    # every centre has at least itself
    assert set(edges[1].tolist()) == set(range(b * 5))


@pytest.mark.parametrize("arch", ["pointnet", "pointnet2", "dgcnn"])
def test_point_models_shapes_and_a_training_step(arch):
    torch.manual_seed(0)
    model = build_model(arch, 4, emb_dim=32, k=5)
    x = _clouds(b=6, n=32)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    z = model.features(x)
    assert z.shape == (6, model.feature_dim) and model.classifier(z).shape == (6, 4)
    assert model.eval_batch_size < 512
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("features.") for k in changed)
    assert any(k.startswith("classifier.") for k in changed)


@pytest.mark.parametrize("arch", ["pointnet", "dgcnn"])
def test_point_models_ignore_point_order(arch):
    torch.manual_seed(0)
    model = build_model(arch, 3, emb_dim=16, k=4).eval()
    x = _clouds(b=2, n=20)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x[:, perm]), rtol=1e-4, atol=1e-5)


def test_dgcnn_edgeconv_is_max_over_knn_messages():
    torch.manual_seed(0)
    model = build_model("dgcnn", 3, emb_dim=16, k=4).eval()
    conv = model.features.convs[0]
    x = _clouds(b=2, n=12)
    with torch.no_grad():
        got = conv(x.reshape(24, 3), knn_graph(x, 4)).view(2, 12, -1)
        for c, i in itertools.product(range(2), range(12)):
            d = ((x[c] - x[c, i]) ** 2).sum(1)
            d[i] = float("inf")
            nbrs = d.argsort()[:4]
            msgs = conv.nn(torch.cat([x[c, i].expand(4, 3), x[c, nbrs] - x[c, i]], dim=1))
            torch.testing.assert_close(got[c, i], msgs.max(0).values, rtol=1e-5, atol=1e-6)


def _point_data(augment: bool) -> StageData:
    x = _clouds(b=5, n=16)
    s = TensorSplit(x, torch.zeros(5, dtype=torch.long))
    return StageData(s, s, s, s, 1, (5,), "t", point_augment=augment)


def test_point_augmentation_is_a_seeded_scale_and_shift():
    data = _point_data(True)
    x = data.train.x
    a = data.prepare(x, augment=True, generator=torch.Generator().manual_seed(3))
    b = data.prepare(x, augment=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, x)
    # per cloud and axis an affine map a*x + t with a in [2/3, 3/2] and t in [-0.2, 0.2]
    for c in range(5):
        for axis in range(3):
            u, v = x[c, :, axis], a[c, :, axis]
            scale = (v[1] - v[0]) / (u[1] - u[0])
            shift = v[0] - scale * u[0]
            torch.testing.assert_close(v, scale * u + shift, rtol=1e-5, atol=1e-5)
            assert 2 / 3 - 1e-5 <= scale <= 1.5 + 1e-5 and -0.2 - 1e-5 <= shift <= 0.2 + 1e-5
    assert torch.equal(data.prepare(x, augment=False, generator=None), x)
    assert torch.equal(_point_data(False).prepare(x, augment=True, generator=None), x)
