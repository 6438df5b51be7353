"""Speed of the OT loss + gradient, of a whole stage-2 step, and of a stage-1 epoch. Not a test.

    .venv/bin/python bench/ot_speed.py [--device cpu|cuda] [--out PATH]

(default PATH: bench/results/ot_speed_<device>.json)

Every variant is timed in the same run as the unrolled reference and printed with its ratio to
it (medians; CUDA timings synchronise before reading the clock). Variants of the OT loss at 200
iterations, lambda 0.1, for (B, K) = (16, 10), (16, 100), (32, 365), (128, 1000):
  * reference: the log-domain loop under autograd (``impl="reference"``, the paper's gradient);
  * auto: what ``ot_loss`` picks by default for the device and size;
  * compiled (CPU) / triton (CUDA, where the kernels take the problem): ``ot_loss``'s other
    implementations by name (the same iterations with a hand-written backward, exact);
    triton_w1..w8 with 1-8 warps per program;
  * implicit / envelope: the other gradient modes (converged / different objective);
and the released code's call (tol 0.1 on the potential change, checked every iteration).
Then a ResNet-32 stage-2 step (batch 16, CIFAR-sized inputs, 10 classes, f1 trained, virtual
step on) with the reference and the default OT implementation against a plain CE step, and
ResNet-32 stage-1 steps (batch 128) in float32 and under ``stage1.channels_last`` /
``stage1.amp=bf16``. Inputs are random tensors of CIFAR's shape: this measures time only.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from trainables.config import Stage1Config
from trainables.loop import stage1_forward
from trainables.models import build_model
from trainables.reweight import (
    StepConfig,
    WeightVector,
    class_prototypes,
    ot_loss,
    reweight_step,
    triton_ot,
)
from trainables.reweight.triton_ot import triton_refusal

SIZES = ((16, 10), (16, 100), (32, 365), (128, 1000))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, *, repeat: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(out)


def fast_paths(device: torch.device, shape: tuple[int, int]) -> dict:
    """The exact fast variants for this device and size: name -> fn(cost, a, q) -> OT value
    (the compiled loop on the CPU; the Triton kernels on CUDA where they take the problem)."""
    out = {"auto": lambda c, a, q: ot_loss(c, a, q, eps=0.1, max_iter=200)}
    on_cuda = device.type == "cuda"
    takes = {
        "compiled": device.type == "cpu",
        "triton": on_cuda and triton_refusal(torch.empty(1, *shape, device=device)) is None,
    }
    for impl in (name for name, ok in takes.items() if ok):
        out[impl] = lambda c, a, q, impl=impl: ot_loss(c, a, q, eps=0.1, max_iter=200, impl=impl)
    return out


def check_fast_paths(device: torch.device) -> dict:
    """Max relative difference of each fast path to the reference (value, dC, da, db)."""
    out = {}
    for b, k in SIZES:
        paths = fast_paths(device, (b, k))
        paths["reference"] = lambda c, a, q: ot_loss(
            c, a, q, eps=0.1, max_iter=200, impl="reference"
        )
        g = torch.Generator().manual_seed(1)
        cost = torch.rand(b, k, generator=g).to(device).requires_grad_()
        a = torch.softmax(torch.randn(b, generator=g), 0).to(device).requires_grad_()
        q = torch.softmax(torch.randn(k, generator=g), 0).to(device).requires_grad_()
        got = {}
        for name, fn in paths.items():
            v = fn(cost, a, q)
            got[name] = (v, *torch.autograd.grad(v, (cost, a, q)))
        out[f"B{b}_K{k}"] = {
            name: [
                float(((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).detach())
                for x, y in zip(got[name], got["reference"], strict=True)
            ]
            for name in paths
            if name != "reference"
        }
    for name in sorted({name for row in out.values() for name in row}):
        if name != "reference":
            worst = max(max(v[name]) for v in out.values() if name in v)
            print(f"{name} vs reference, max relative difference (value, gradients): {worst:.2e}")
    return out


def ot_variants(device: torch.device, repeat: int) -> dict:
    res = {}
    for b, k in SIZES:
        g = torch.Generator().manual_seed(0)
        cost = torch.rand(b, k, generator=g).to(device)
        a = torch.full((b,), 1.0 / b, device=device, requires_grad=True)
        q = torch.full((k,), 1.0 / k, device=device)

        def run(fn, cost=cost, a=a, q=q):
            def f():
                a.grad = None
                fn(cost, a, q).backward()

            return f

        variants = {
            "reference": lambda c, a, q: ot_loss(c, a, q, eps=0.1, max_iter=200, impl="reference"),
            **fast_paths(device, (b, k)),
            "implicit": lambda c, a, q: ot_loss(c, a, q, eps=0.1, max_iter=200, grad="implicit"),
            "envelope": lambda c, a, q: ot_loss(c, a, q, eps=0.1, max_iter=200, grad="envelope"),
        }
        row = {name: timed(run(fn), device, repeat=repeat) for name, fn in variants.items()}
        if "triton" in variants:  # the warps per program, to choose the default
            for warps in (1, 2, 4, 8):
                triton_ot.NUM_WARPS = warps
                try:
                    row[f"triton_w{warps}"] = timed(run(variants["triton"]), device, repeat=repeat)
                finally:
                    triton_ot.NUM_WARPS = None
        res[f"B{b}_K{k}"] = row
        ratios = "  ".join(f"{n} {row['reference'] / v:5.1f}x" for n, v in row.items())
        print(f"OT loss+grad B{b:<4} K{k:<5} reference {row['reference']:8.2f} ms | {ratios}")
    return res


def released_rule(device: torch.device, repeat: int) -> dict:
    """The released code's OT call (B16 K10, costs in [0, 0.6], tol 0.1 on the potential change
    checked every iteration: 3-5 iterations): the reference against the default path."""
    g = torch.Generator().manual_seed(0)
    cost = (torch.rand(16, 10, generator=g) * 0.6).to(device)
    a = torch.full((16,), 1.0 / 16, device=device, requires_grad=True)
    q = torch.full((10,), 0.1, device=device)
    kw = dict(eps=0.1, max_iter=200, tol=0.1, stop="potential_change", check_every=1)

    def run(**extra):
        def f():
            a.grad = None
            ot_loss(cost, a, q, **kw, **extra).backward()

        return f

    row = {
        "reference": timed(run(impl="reference"), device, repeat=repeat),
        "auto": timed(run(), device, repeat=repeat),
    }
    print(
        f"OT loss+grad, the released code's stopping rule: reference {row['reference']:.3f} ms, "
        f"auto {row['auto']:.3f} ms ({row['reference'] / row['auto']:.1f}x)"
    )
    return row


def stage2_step(device: torch.device, repeat: int) -> dict:
    torch.manual_seed(0)
    k, n_train = 10, 1000
    model = build_model("resnet32", k).to(device)
    x = torch.randn(16, 3, 32, 32, device=device)
    y = torch.arange(16, device=device) % k
    idx = torch.arange(16, device=device)
    meta_x = torch.randn(10 * k, 3, 32, 32, device=device)
    meta_y = torch.arange(10 * k, device=device) % k
    opt = torch.optim.SGD(model.parameters(), lr=2e-5, momentum=0.9)

    def ce():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    out = {"ce_step": timed(ce, device, repeat=repeat)}
    for impl in ("reference", "auto"):
        weights = WeightVector(n_train, init="uniform").to(device)
        w_opt = torch.optim.SGD(weights.parameters(), lr=1e-3)
        cfg = StepConfig(eps=0.1, max_iter=200, virtual_lr=2e-5, impl=impl)

        def step(weights=weights, w_opt=w_opt, cfg=cfg):
            reweight_step(
                model, x, y, idx, weights, opt, w_opt, cfg, num_classes=k, meta_x=meta_x,
                meta_y=meta_y, build_q=lambda z, t: class_prototypes(z, t, k),
            )  # fmt: skip

        out[f"ot_step_{impl}"] = timed(step, device, repeat=repeat)
    ce_ms = out["ce_step"]
    print(
        f"ResNet-32 stage-2 step, batch 16: CE {ce_ms:.1f} ms; OT reference "
        f"{out['ot_step_reference']:.1f} ms ({out['ot_step_reference'] / ce_ms:.2f}x CE); OT "
        f"auto {out['ot_step_auto']:.1f} ms ({out['ot_step_auto'] / ce_ms:.2f}x CE)"
    )
    return out


STAGE1_VARIANTS = {
    "fp32": Stage1Config(),
    "channels_last": Stage1Config(channels_last=True),
    "bf16": Stage1Config(amp="bf16"),
    "bf16_channels_last": Stage1Config(amp="bf16", channels_last=True),
    # torch.compile (reduce-overhead: CUDA graphs on a GPU); compiling costs a minute or more
    "compiled": Stage1Config(compile="reduce-overhead"),
    "bf16_channels_last_compiled": Stage1Config(
        amp="bf16", channels_last=True, compile="reduce-overhead"
    ),
}


def stage1_epoch(device: torch.device, steps: int, variants: list[str]) -> dict:
    """ResNet-32 stage-1 steps (batch 128) under each stage-1 throughput switch, through the
    training loop's own forward (``trainables.loop.stage1_forward``)."""
    out = {}
    for name in ["fp32", *(v for v in variants if v != "fp32")]:  # the baseline first
        cfg = STAGE1_VARIANTS[name]
        torch.manual_seed(0)
        model = build_model("resnet32", 10).to(device)
        forward = stage1_forward(model, cfg)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
        x = torch.randn(128, 3, 32, 32, device=device)
        y = torch.arange(128, device=device) % 10

        def one(forward=forward, opt=opt, x=x, y=y):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(forward(x), y).backward()
            opt.step()

        warm = time.perf_counter()
        for _ in range(3):  # compiles here under stage1.compile
            one()
        _sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            one()
        _sync(device)
        out[name] = (time.perf_counter() - t) * 1e3 / steps
        if cfg.compile != "none":
            print(f"  {name}: compiled in {t - warm:.0f} s (3 warm-up steps)")
    ratios = "  ".join(f"{n} {out['fp32'] / v:4.2f}x" for n, v in out.items())
    print(f"ResNet-32 stage-1 step, batch 128: fp32 {out['fp32']:.1f} ms | {ratios} ({steps})")
    return {"step_ms": out, "steps": steps}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--stage1-steps", type=int, default=100)
    p.add_argument(
        "--stage1-variants",
        nargs="+",
        choices=list(STAGE1_VARIANTS),
        default=["fp32", "channels_last", "bf16", "bf16_channels_last"],
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    result = {
        "device": str(device),
        "device_name": name or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "fast_vs_reference_max_rel_diff": check_fast_paths(device),
        "ot_loss_grad_ms": ot_variants(device, args.repeat),
        "released_rule_ms": released_rule(device, args.repeat * 5),
        "stage2_step_ms": stage2_step(device, max(5, args.repeat // 2)),
        "stage1": stage1_epoch(device, args.stage1_steps, args.stage1_variants),
    }
    out = args.out or Path(f"bench/results/ot_speed_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
