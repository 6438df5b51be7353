"""A population's OT: P members' problems, each with its own lambda, cap and tolerance, value
and gradient. Not a test.

    .venv/bin/python bench/ot_members.py [--members 32] [--repeat 15] [--out PATH]

(default PATH: bench/results/ot_members_cpu.json). One thread. The problems are those of
stage 2 on MNIST-LT (B16 against K10, cost up to 2), lambda 0.3-1 (every member in its
dtype's scaling range), caps 20-300 and tolerances 1e-2 / 1e-3 / 1e-4 / none on the
marginal error checked every 10 iterations, as a population's settings are. Each variant's
time is the median of ``--repeat`` runs of value + gradient for all members, in float32 and
float64, with its ratio to the first:

  * ``torch_loop``: what a user writes: the scaling-domain loop under autograd, one member
    after another (the baseline);
  * ``one_by_one``: ``ot_loss`` per member (a single trial's call: the compiled loop);
  * ``stack``: one ``ot_loss`` call on the stacked problems (a population's call), each member
    its own compiled loop in turn.

The last two give the same numbers bit for bit (checked here); ``torch_loop`` agrees to
rounding (its largest relative difference is printed).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _results import save_cpu_result

from trainables.reweight import ot_loss


def problems(p: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cost = 2 * torch.rand(p, 16, 10, generator=g, dtype=dtype)
    a = torch.softmax(torch.randn(p, 16, generator=g, dtype=dtype), 1)
    b = torch.softmax(torch.randn(p, 10, generator=g, dtype=dtype), 1)
    eps = (0.3 + 0.7 * torch.rand(p, generator=g, dtype=torch.float64)).tolist()
    caps = torch.randint(20, 301, (p,), generator=g).tolist()
    tols = [[1e-2, 1e-3, 1e-4, None][i % 4] for i in range(p)]
    return cost, a, b, eps, caps, tols


def torch_loop(cost, a, b, eps, cap, tol):
    """One member as a user writes it: Sinkhorn's scaling loop under autograd, the marginal
    error checked every 10 iterations."""
    k = torch.exp(-cost / eps)
    u = torch.ones_like(a)
    for it in range(cap):
        v = b / (k.T @ u)
        u = a / (k @ v)
        at_check = tol is not None and (it + 1) % 10 == 0
        if at_check and float((v * (k.T @ u) - b).abs().sum().detach()) < tol:
            break
    return (cost * (u[:, None] * k * v[None, :])).sum()


def variants(p: int):
    def loop(cost, a, b, eps, caps, tols):
        return torch.stack(
            [torch_loop(cost[m], a[m], b[m], eps[m], caps[m], tols[m]) for m in range(p)]
        )

    def one_by_one(cost, a, b, eps, caps, tols):
        return torch.stack(
            [
                ot_loss(cost[m], a[m], b[m], eps=eps[m], max_iter=caps[m], tol=tols[m])
                for m in range(p)
            ]
        )

    def stack(cost, a, b, eps, caps, tols):
        return ot_loss(cost, a, b, eps=eps, max_iter=caps, tol=tols, stop="marginal")

    return {"torch_loop": loop, "one_by_one": one_by_one, "stack": stack}


def run(fn, args, repeat: int):
    cost, a, b, *rest = args
    cost, a = cost.clone().requires_grad_(), a.clone().requires_grad_()
    times, out = [], None
    for i in range(repeat + 2):
        start = time.perf_counter()
        v = fn(cost, a, b, *rest)
        grads = torch.autograd.grad(v.sum(), (cost, a))
        if i >= 2:  # two untimed warm-ups
            times.append(time.perf_counter() - start)
        out = (v.detach(), *grads)
    return statistics.median(times) * 1e3, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path("bench/results/ot_members_cpu.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    result = {"members": args.members, "repeat": args.repeat}
    for dtype in (torch.float32, torch.float64):
        data = problems(args.members, dtype)
        row, outs = {}, {}
        for name, fn in variants(args.members).items():
            row[name], outs[name] = run(fn, data, args.repeat)
        pairs = zip(outs["stack"], outs["one_by_one"], strict=True)
        if not all(torch.equal(x, y) for x, y in pairs):
            raise SystemExit(f"stack differs from one_by_one in {dtype}: not bit for bit")
        worst = max(
            float((x - y).abs().max() / y.abs().max())
            for x, y in zip(outs["torch_loop"], outs["stack"], strict=True)
        )
        label = str(dtype).removeprefix("torch.")
        base = row["torch_loop"]
        print(f"{label}, {args.members} members (torch_loop vs stack: {worst:.1e} relative)")
        for name, ms in row.items():
            print(f"  {name:<11} {ms:8.2f} ms  {base / ms:6.2f}x")
        result[label] = {
            "ms": {k: round(v, 3) for k, v in row.items()},
            "ratio_to_torch_loop": {k: round(base / v, 2) for k, v in row.items()},
            "torch_loop_max_rel_diff": worst,
        }
    save_cpu_result(args.out, result, start)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
