"""Point-cloud classifiers from torch-geometric layers: PointNet, PointNet++ (SSG) and DGCNN.

Input: a batch of clouds ``[B, N, 3]`` (every cloud has N points). Each model is a
:class:`SplitNet`: ``features`` (f1) ends in the head MLP's last hidden layer (256-d) and
``classifier`` (f2) is the last linear layer, as for the image models.

torch_geometric is imported when a model is built (it takes about 2 s to import).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .common import SplitNet, make_classifier
from .pointops import fps, knn_graph, radius

__all__ = ["dgcnn", "pointnet", "pointnet2"]

FEATURE_DIM = 256
# Evaluation batch for these models: a DGCNN batch of 32 clouds x 1024 points x k=20 already
# holds ~650k edges per layer.
EVAL_BATCH = 32


def _flat(x: Tensor) -> tuple[Tensor, Tensor, int]:
    b, n, _ = x.shape
    batch = torch.arange(b, device=x.device).repeat_interleave(n)
    return x.reshape(b * n, -1), batch, b


def _head(emb: int, dropout: float):
    from torch_geometric.nn import MLP

    # plain_last=False: the 256-d feature z is post-activation (BN + ReLU), like a ResNet's
    # pooled feature; the classifier is the next linear layer.
    return MLP([emb, 512, FEATURE_DIM], dropout=dropout, plain_last=False)


class _PointNetFeatures(nn.Module):
    """PointNet (Qi et al. 2017a) without the T-Nets: a shared per-point MLP, max pooling over
    the cloud, then the head MLP."""

    def __init__(self, emb: int) -> None:
        super().__init__()
        from torch_geometric.nn import MLP

        self.point_mlp = MLP([3, 64, 64, 64, 128, emb], plain_last=False)
        self.head = _head(emb, 0.3)

    def forward(self, x: Tensor) -> Tensor:
        from torch_geometric.nn import global_max_pool

        pos, batch, b = _flat(x)
        return self.head(global_max_pool(self.point_mlp(pos), batch, size=b))


class _SetAbstraction(nn.Module):
    """PointNet++ set abstraction: fps centres, a radius ball around each, ``PointNetConv``."""

    def __init__(self, ratio: float, r: float, channels: list[int]) -> None:
        super().__init__()
        from torch_geometric.nn import MLP, PointNetConv

        self.ratio, self.r = ratio, r
        # The radius ball always contains its centre, so no self-loops are added (PyG would add
        # source i -> centre i, which in a bipartite graph is an unrelated point).
        self.conv = PointNetConv(MLP(channels, plain_last=False), add_self_loops=False)

    def forward(self, h: Tensor | None, pos: Tensor) -> tuple[Tensor, Tensor]:
        """h: ``[B, N, C]`` or None; pos: ``[B, N, 3]``. Returns the centres' (h, pos)."""
        b, n, _ = pos.shape
        m = max(1, round(self.ratio * n))
        centres = fps(pos, m)
        edges = radius(pos, centres, self.r, 64)
        rows = torch.arange(b, device=pos.device)[:, None]
        pos_c = pos[rows, centres]
        x_src = None if h is None else h.reshape(b * n, -1)
        x_dst = None if h is None else h[rows, centres].reshape(b * m, -1)
        out = self.conv((x_src, x_dst), (pos.reshape(b * n, -1), pos_c.reshape(b * m, -1)), edges)
        return out.view(b, m, -1), pos_c


class _PointNet2Features(nn.Module):
    """PointNet++ SSG (Qi et al. 2017b): two set abstractions (0.5 / r 0.2, 0.25 / r 0.4), a
    global PointNet over the remaining centres, then the head MLP."""

    def __init__(self, emb: int) -> None:
        super().__init__()
        from torch_geometric.nn import MLP

        self.sa1 = _SetAbstraction(0.5, 0.2, [3, 64, 64, 128])
        self.sa2 = _SetAbstraction(0.25, 0.4, [128 + 3, 128, 128, 256])
        self.global_mlp = MLP([256 + 3, 256, 512, emb], plain_last=False)
        self.head = _head(emb, 0.5)

    def forward(self, x: Tensor) -> Tensor:
        h, pos = self.sa1(None, x)
        h, pos = self.sa2(h, pos)
        b, m, _ = h.shape
        g = self.global_mlp(torch.cat([h, pos], dim=2).reshape(b * m, -1))
        return self.head(g.view(b, m, -1).amax(dim=1))


class _DGCNNFeatures(nn.Module):
    """DGCNN (Wang et al. 2019): four ``EdgeConv`` layers (max aggregation), each on the kNN
    graph of its own input (dynamic graph), their outputs concatenated, lifted to ``emb``,
    max- and mean-pooled, then the head MLP."""

    def __init__(self, emb: int, k: int) -> None:
        super().__init__()
        from torch_geometric.nn import MLP, EdgeConv

        self.k = k
        widths = [(3, 64), (64, 64), (64, 128), (128, 256)]
        self.convs = nn.ModuleList(
            EdgeConv(MLP([2 * c_in, c_out], plain_last=False), aggr="max") for c_in, c_out in widths
        )
        self.lift = MLP([sum(c for _, c in widths), emb], plain_last=False)
        self.head = _head(2 * emb, 0.5)

    def forward(self, x: Tensor) -> Tensor:
        from torch_geometric.nn import global_max_pool, global_mean_pool

        b, n, _ = x.shape
        h = x
        outs = []
        for conv in self.convs:
            edges = knn_graph(h, self.k)
            h = conv(h.reshape(b * n, -1), edges).view(b, n, -1)
            outs.append(h)
        g = self.lift(torch.cat(outs, dim=2).reshape(b * n, -1))
        batch = torch.arange(b, device=x.device).repeat_interleave(n)
        pooled = torch.cat(
            [global_max_pool(g, batch, size=b), global_mean_pool(g, batch, size=b)], dim=1
        )
        return self.head(pooled)


def _split(features: nn.Module, num_classes: int, normed: bool) -> SplitNet:
    net = SplitNet(features, make_classifier(FEATURE_DIM, num_classes, normed), FEATURE_DIM)
    net.eval_batch_size = EVAL_BATCH
    return net


def pointnet(
    num_classes: int, *, emb_dim: int = 1024, normed_classifier: bool = False, **_: object
) -> SplitNet:
    """PointNet: per-point MLP 3-64-64-64-128-``emb_dim``, max pool, MLP 512-256, linear."""
    return _split(_PointNetFeatures(emb_dim), num_classes, normed_classifier)


def pointnet2(
    num_classes: int, *, emb_dim: int = 1024, normed_classifier: bool = False, **_: object
) -> SplitNet:
    """PointNet++ SSG built from ``PointNetConv`` with fps and radius balls of 64 points."""
    return _split(_PointNet2Features(emb_dim), num_classes, normed_classifier)


def dgcnn(
    num_classes: int,
    *,
    emb_dim: int = 1024,
    k: int = 20,
    normed_classifier: bool = False,
    **_: object,
) -> SplitNet:
    """DGCNN: EdgeConv 64-64-128-256 on kNN graphs (k neighbours), lift to ``emb_dim``,
    max + mean pooling, MLP 512-256, linear."""
    return _split(_DGCNNFeatures(emb_dim, k), num_classes, normed_classifier)
