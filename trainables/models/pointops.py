"""Neighbourhood ops for point clouds of a fixed size per cloud: kNN graph, farthest point
sampling and radius search, in PyG's edge layout.

PyG's own ``knn_graph`` / ``fps`` / ``radius`` need ``pyg-lib`` (not installable on every
machine: it has no wheel for every torch). Each op here uses PyG's when
``torch_geometric.typing.WITH_*`` says it works and an exact batched pure-torch version
otherwise. Inputs are dense ``[B, N, F]`` (every cloud has N points); the flat node index of
point ``n`` of cloud ``b`` is ``b * N + n``, as in a PyG batch of equal-sized clouds.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fps", "knn_graph", "pyg_has", "radius"]


def pyg_has(op: str) -> bool:
    """True when PyG's compiled ``op`` ("KNN", "FPS", "RADIUS") is available."""
    try:
        import torch_geometric.typing as tg
    except ImportError:  # pragma: no cover - torch_geometric is a dependency
        return False
    return bool(getattr(tg, f"WITH_{op}", False))


def _batch(b: int, n: int, device: torch.device) -> Tensor:
    return torch.arange(b, device=device).repeat_interleave(n)


def knn_graph(x: Tensor, k: int, *, loop: bool = False) -> Tensor:
    """Edges from each point's ``k`` nearest neighbours (Euclidean, within its own cloud).

    x: ``[B, N, F]``. Returns ``edge_index [2, B*N*k]`` in PyG's ``source_to_target`` layout:
    row 0 the neighbour j (source), row 1 the centre i (target), so a ``MessagePassing`` layer
    aggregates over each centre's neighbours. Without ``loop`` a point is not its own neighbour.
    """
    b, n, _ = x.shape
    if k + (0 if loop else 1) > n:
        raise ValueError(f"k={k} needs more than {n} points per cloud")
    if pyg_has("KNN"):
        from torch_geometric.nn import knn_graph as pyg_knn_graph

        return pyg_knn_graph(x.reshape(b * n, -1), k, _batch(b, n, x.device), loop=loop)
    with torch.no_grad():
        d = torch.cdist(x, x)  # [B, N, N]
        if not loop:
            d.diagonal(dim1=1, dim2=2).fill_(float("inf"))
        nbr = d.topk(k, dim=2, largest=False).indices  # [B, N, k]
    offset = (torch.arange(b, device=x.device) * n).view(b, 1, 1)
    source = (nbr + offset).reshape(-1)
    target = (torch.arange(n, device=x.device).view(1, n, 1) + offset).expand(b, n, k)
    return torch.stack([source, target.reshape(-1)])


def fps(pos: Tensor, m: int) -> Tensor:
    """Farthest point sampling: ``m`` points of each cloud, starting from its first point,
    each next point the one farthest from those already chosen.

    pos: ``[B, N, D]``. Returns the chosen points' local indices ``[B, m]`` (PyG's ``fps``
    with ``random_start=False`` returns the same points as flat indices).
    """
    b, n, _ = pos.shape
    if not 0 < m <= n:
        raise ValueError(f"fps: cannot pick {m} of {n} points")
    if pyg_has("FPS"):
        from torch_geometric.nn import fps as pyg_fps

        flat = pyg_fps(
            pos.reshape(b * n, -1), _batch(b, n, pos.device), ratio=m / n, random_start=False
        )
        return flat.view(b, -1)[:, :m] - (torch.arange(b, device=pos.device) * n)[:, None]
    with torch.no_grad():
        chosen = torch.zeros(b, m, dtype=torch.long, device=pos.device)
        nearest = torch.full((b, n), float("inf"), device=pos.device, dtype=pos.dtype)
        rows = torch.arange(b, device=pos.device)
        last = torch.zeros(b, dtype=torch.long, device=pos.device)
        for i in range(1, m):
            d = (pos - pos[rows, last][:, None, :]).pow(2).sum(-1)
            nearest = torch.minimum(nearest, d)
            last = nearest.argmax(dim=1)
            chosen[:, i] = last
    return chosen


def radius(pos: Tensor, centres: Tensor, r: float, max_neighbours: int) -> Tensor:
    """Points of each cloud within distance ``r`` of each of its centres.

    pos: ``[B, N, D]``; centres: local indices ``[B, M]`` (e.g. from :func:`fps`). Each centre
    keeps at most ``max_neighbours`` points, the nearest ones (PyG keeps an arbitrary subset).
    Always the pure-torch version (its choice of neighbours is deterministic, PyG's is not).
    Returns edges ``[2, E]`` with row 0 the flat point index
    (``b*N+n``) and row 1 the flat centre index (``b*M+m``), the layout
    ``PointNetConv((x, None), (pos, pos_centres), edge_index)`` expects. A centre is always
    within ``r`` of itself, so no centre is left without neighbours.
    """
    b, n, _ = pos.shape
    m = centres.shape[1]
    rows = torch.arange(b, device=pos.device)[:, None]
    with torch.no_grad():
        d = torch.cdist(pos[rows, centres], pos)  # [B, M, N]
        k = min(max_neighbours, n)
        dist, nbr = d.topk(k, dim=2, largest=False)
        keep = dist <= r
    source = (nbr + rows[:, :, None] * n)[keep]
    target = torch.arange(m, device=pos.device).view(1, m, 1) + rows[:, :, None] * m
    target = target.expand(b, m, k)[keep]
    return torch.stack([source, target])
