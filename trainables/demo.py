"""Paper Fig. 1 on real digits: learn the OT weights of one imbalanced batch under each cost.

    python -m trainables.demo [--seed S] [--eps 0.1] [--steps 300]

The batch holds 10, 9, ..., 1 images of digits 0..9 (55 in all) from scikit-learn's bundled
8x8 digits (real scans, no download); Q is the 10 class prototypes of a balanced meta set of
10 images per class, disjoint from the batch. Features are the 64 pixel intensities,
standardised per pixel (raw intensities make cosine distances nearly flat). The
table printed is the learned mass per class (a balanced result puts 0.100 on every class).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from trainables.reweight import COSTS, StepConfig, class_prototypes, fit_batch_weights

K = 10


def fig1_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z_batch [55, 64], y_batch, z_meta [100, 64], y_meta): disjoint, seeded."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1.0)
    y = torch.tensor(digits.target, dtype=torch.long)
    rng = np.random.default_rng(seed)
    batch, meta = [], []
    for c in range(K):
        pool = rng.permutation(np.flatnonzero(digits.target == c))
        meta.extend(pool[:10].tolist())
        batch.extend(pool[10 : 10 + (K - c)].tolist())
    b, m = torch.tensor(batch), torch.tensor(meta)
    return x[b], y[b], x[m], y[m]


def class_mass(w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.zeros(K, dtype=w.dtype).index_add(0, y, w)


def run(seed: int = 0, eps: float = 0.1, steps: int = 300) -> dict[str, torch.Tensor]:
    """Learned per-class mass for each cost on the Fig. 1 batch."""
    z, y, z_meta, y_meta = fig1_batch(seed)
    q = class_prototypes(z_meta, y_meta, K)
    out = {}
    for cost in COSTS:
        cfg = StepConfig(cost=cost, eps=eps, max_iter=200)
        out[cost] = class_mass(fit_batch_weights(z, y, q, K, cfg, steps=steps), y)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainables.demo", description=__doc__.split("\n")[0]
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args(argv)
    if args.eps <= 0 or args.steps < 1:
        p.error("--eps must be > 0 and --steps >= 1")
    torch.manual_seed(args.seed)
    masses = run(args.seed, args.eps, args.steps)
    print("Learned weight mass per class, batch of 10..1 real digits (uniform start = n/55)")
    print(f"{'class':>5} {'n':>3} {'uniform':>8} " + " ".join(f"{c:>9}" for c in masses))
    for c in range(K):
        row = " ".join(f"{masses[k][c].item():9.3f}" for k in masses)
        print(f"{c:>5} {K - c:>3} {(K - c) / 55:8.3f} {row}")
    spread = {k: (v.max() - v.min()).item() for k, v in masses.items()}
    print("max-min class mass: " + ", ".join(f"{k} {s:.3f}" for k, s in spread.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
