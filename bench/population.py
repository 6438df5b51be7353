"""Population trials against one setting per trial, on the same cores. Not a test.

    .venv/bin/python bench/population.py [--experiment image_mnist_lt] [--settings 64]
        [--sizes 16 32 64] [--workers 2] [--repeats 3] [--sweep]
        [--out bench/results/population_<exp>.json]
        [--export DIR | --from DIR] [--device cuda] [--single-settings K]

``--export DIR`` writes stage 1 (with its cached features) and the settings, and stops;
``--from DIR`` reads them instead of building stage 1 and asking Optuna (a GPU machine has
neither Optuna nor the data: ``bench/gpu_check.sh population``).

Part 1, the training itself: stage 1 is built once; the same ``--settings`` stage-2 settings
(a seeded random sample of the experiment's search space) are trained (a) one per trial, with
the single-trial loop (``run_stage2``: what every sweep trial ran before populations), and (b)
as populations of P members (``run_population``), every member to the last epoch (no culling),
so both do the same work. The settings are spread over ``--workers`` processes (one thread
each): the wall time is the slowest worker's, from the moment every worker has the stage-1
result loaded; each wall time is the median of ``--repeats`` runs (whose scores must agree).
Each worker first runs one single trial and one population of 2, untimed. Printed: wall time,
settings per minute, the ratio against (a), the best validation score reached (the same
settings: it should agree) and how many settings a population picks differently; on a CPU
also the FLOP ceiling (``_ceiling``: the ratio no population can pass on these cores).

Part 2 (``--sweep``), the whole command: ``orchestrator.sweep NAME --trials N`` with
``--population 1`` and with the largest P of ``--sizes`` that still gives every worker a
population (Ray, Optuna, ASHA and MLflow
included; stage 1 already cached), timed end to end, with the best validation score each found
(TPE adapts differently with P, so these are not the same settings).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _results import save_cpu_result

REPO = Path(__file__).resolve().parents[1]
_STATE: dict = {}


def _settings(name: str, n: int, seed: int) -> list[dict]:
    import optuna

    from search_spaces import SPACES

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        t = study.ask()
        SPACES[name].space(t)
        out.append(dict(t.params))
    return out


def _init(name: str, stage1_path: str, device: str = "cpu") -> None:
    torch.set_num_threads(1)
    from search_spaces import resolve
    from trainables.trial import Stage1Output

    _STATE["cfg"] = resolve(name)
    _STATE["stage1"] = Stage1Output(**torch.load(stage1_path, weights_only=False))
    _STATE["device"] = torch.device(device)


def _single(settings: list[dict]) -> tuple[float, list[float]]:
    from trainables.config import apply_values
    from trainables.trial import run_stage2

    start, vals = time.perf_counter(), []
    for s in settings:
        try:
            cfg = apply_values(_STATE["cfg"], s)
            res, _ = run_stage2(cfg, _STATE["stage1"], device=_STATE["device"])
        except FloatingPointError:  # a diverged setting (a population member drops out)
            vals.append(float("nan"))
            continue
        vals.append(res.selected["val"]["balanced_acc"])
    return time.perf_counter() - start, vals


def _population(settings: list[dict]) -> tuple[float, list[float]]:
    from trainables.config import apply_values
    from trainables.trial import run_population

    start = time.perf_counter()
    cfgs = [apply_values(_STATE["cfg"], s) for s in settings]
    outs, _ = run_population(cfgs, _STATE["stage1"], device=_STATE["device"])
    vals = [
        float("nan") if o.error is not None else o.result.selected["val"]["balanced_acc"]
        for o in outs
    ]
    return time.perf_counter() - start, vals


def _ceiling(settings: list[dict]) -> dict:
    """What no population can beat on this core: the matrix-product FLOPs of one setting's
    stage 2 (torch's FlopCounterMode over a single trial: forward, backward, evaluation) at the
    rate this core multiplies the head's largest layer in cache (one thread, the batch's
    shape). A population does at least the FLOPs of its members."""
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    from trainables.config import apply_values
    from trainables.modalities import modality_of
    from trainables.trial import features_data, run_stage2

    cfg = apply_values(_STATE["cfg"], settings[0])
    counter = FlopCounterMode(display=False)
    with counter:
        run_stage2(cfg, _STATE["stage1"], device=_STATE["device"])
    flops = counter.get_total_flops()
    data = features_data(_STATE["stage1"], torch.device("cpu"))
    model, _ = modality_of(cfg.data.source).feature_model(
        cfg, data, _STATE["stage1"].model_state, _STATE["stage1"].info
    )
    w = max((m.weight for m in model.modules() if isinstance(m, nn.Linear)), key=torch.numel)
    x = torch.randn(w.shape[1], cfg.stage2.batch_size)
    w = w.detach().clone()
    reps = max(50, int(2e9 / (2 * w.numel() * x.shape[1])))
    torch.matmul(w, x)
    start = time.perf_counter()
    for _ in range(reps):
        torch.matmul(w, x)
    rate = reps * 2 * w.numel() * x.shape[1] / (time.perf_counter() - start)
    return {"flops_per_setting": flops, "gemm_flops_per_s": rate, "layer": list(w.shape)}


def _chunks(items: list, n: int) -> list[list]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def _measure(pool, fn, jobs: list[list[dict]], n: int, repeats: int) -> dict:
    """The median wall time of ``repeats`` runs (a shared machine's noise), each run's
    validation scores checked equal (the same settings, seeded)."""
    walls, vals = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        got = pool.map(fn, jobs)
        walls.append(time.perf_counter() - start)
        run_vals = [v for _, vs in got for v in vs]
        if vals is not None and str(run_vals) != str(vals):
            raise SystemExit("a repeat gave different validation scores: not deterministic")
        vals = run_vals
    wall = sorted(walls)[len(walls) // 2]
    return {
        "wall_s": round(wall, 2),
        "runs_s": [round(w, 2) for w in walls],
        "settings_per_min": round(60 * n / wall, 2),
        "best_val": max(v for v in vals if v == v),
        "diverged": sum(v != v for v in vals),
        "vals": vals,
    }


def export(name: str, n: int, seed: int, folder: Path) -> None:
    """Stage 1 with its cached features, and the ``n`` settings, written to ``folder`` (what
    ``--from`` reads: for a machine without Optuna or the datasets, e.g. a lent GPU)."""
    from search_spaces import resolve
    from trainables.modalities import modality_of
    from trainables.trial import add_features, build_stage1, features_data

    cfg = resolve(name)
    torch.manual_seed(cfg.seed)
    cpu = torch.device("cpu")
    s1 = build_stage1(cfg, device=cpu)
    add_features(cfg, s1, cpu)
    # only the state stage 2 loads on the features (a text experiment's FCN, not its encoder)
    _, s1.model_state = modality_of(cfg.data.source).feature_model(
        cfg, features_data(s1, cpu), s1.model_state, s1.info
    )
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(s1.__dict__, folder / f"stage1_{name}.pt")
    (folder / f"settings_{name}.json").write_text(json.dumps(_settings(name, n, seed)))
    print(f"wrote {folder}/stage1_{name}.pt and settings_{name}.json")


def training(
    name: str, n: int, sizes: list[int], workers: int, seed: int, repeats: int = 3,
    source: Path | None = None, device: str = "cpu", single: int | None = None,
) -> dict:  # fmt: skip
    """``source``: a folder ``export`` wrote (else stage 1 is built and the settings drawn
    here). ``single``: time one setting per trial on the first ``single`` settings only (their
    rate stands for all: on a GPU the 64 single trials would take most of a lent machine's
    time); their scores are compared with the same settings' in every population."""
    with tempfile.TemporaryDirectory() as tmp:
        if source is not None:
            path = str(source / f"stage1_{name}.pt")
            settings = json.loads((source / f"settings_{name}.json").read_text())[:n]
        else:
            from search_spaces import resolve
            from trainables.trial import build_stage1

            cfg = resolve(name)
            torch.manual_seed(cfg.seed)
            t0 = time.perf_counter()
            s1 = build_stage1(cfg)
            print(f"stage 1 of {name}: {time.perf_counter() - t0:.1f} s", flush=True)
            settings = _settings(name, n, seed)
            path = str(Path(tmp) / "stage1.pt")
            torch.save(s1.__dict__, path)
        return _timed(name, settings, sizes, workers, repeats, path, device, single)


def _timed(name, settings, sizes, workers, repeats, path, device, single) -> dict:
    n = len(settings)
    out: dict = {}
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init, initargs=(name, path, device)) as pool:
        pool.map(abs, range(workers))  # every worker started and initialised
        # untimed: each worker's first trial and population (compiled kernels loaded or built)
        pool.map(_population, [settings[:2]] * workers)
        pool.map(_single, [settings[:1]] * workers)
        first = settings[: single or n]
        per = -(-len(first) // workers)
        base = _measure(pool, _single, _chunks(first, per), len(first), repeats)
        out["P=1"] = base
        print(f"P=1 (one setting per trial, {len(first)} settings): {base['wall_s']:.1f} s, "
              f"{base['settings_per_min']:.1f} settings/min, best val {base['best_val']:.2f}, "
              f"{base['diverged']} diverged", flush=True)  # fmt: skip
        if device == "cpu":
            ceil = pool.map(_ceiling, [settings[:1]])[0]
            per_min = 60 * workers * ceil["gemm_flops_per_s"] / ceil["flops_per_setting"]
            ceil["settings_per_min"] = round(per_min, 1)
            ceil["ratio"] = round(per_min / base["settings_per_min"], 2)
            out["ceiling"] = ceil
            print(f"ceiling: {ceil['flops_per_setting'] / 1e9:.3f} GFLOP per setting at "
                  f"{ceil['gemm_flops_per_s'] / 1e9:.1f} GFLOP/s per worker (a "
                  f"{ceil['layer']} layer in cache): at most {per_min:.0f} settings/min, "
                  f"{ceil['ratio']:.2f}x", flush=True)  # fmt: skip
        for p in sizes:
            r = _measure(pool, _population, _chunks(settings, p), n, repeats)
            r["ratio"] = round(r["settings_per_min"] / base["settings_per_min"], 2)
            same = zip(base["vals"], r["vals"][: len(first)], strict=True)
            r["picks_differ_from_single"] = sum(str(x) != str(y) for x, y in same)
            out[f"P={p}"] = r
            print(f"P={p}: {r['wall_s']:.1f} s, {r['settings_per_min']:.1f} settings/min "
                  f"({r['ratio']:.2f}x), best val {r['best_val']:.2f}, "
                  f"{r['diverged']} diverged", flush=True)  # fmt: skip
    return out


def _sweep(name: str, storage: str, trials: int, population: int) -> dict:
    cmd = [sys.executable, "-m", "orchestrator.sweep", name, "--quiet", "--storage", storage,
           "--trials", str(trials), "--population", str(population)]  # fmt: skip
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if res.returncode:
        raise SystemExit(f"sweep failed: {res.stderr.strip().splitlines()[-1]}")
    best = re.search(r"val balanced acc ([0-9.]+) \(selection metric\)", res.stdout)
    return {
        "wall_s": round(wall, 1),
        "settings_per_min": round(60 * trials / wall, 2),
        "best_val": float(best.group(1)) if best else None,
    }


def sweeps(name: str, trials: int, population: int) -> dict:
    with tempfile.TemporaryDirectory() as storage:
        _sweep(name, storage, 1, 1)  # builds the stage-1 cache entry: not timed
        out = {"P=1": _sweep(name, storage, trials, 1)}
        out[f"P={population}"] = _sweep(name, storage, trials, population)
    ratio = out[f"P={population}"]["settings_per_min"] / out["P=1"]["settings_per_min"]
    out["ratio"] = round(ratio, 2)
    for k, v in out.items():
        if k != "ratio":
            print(f"sweep {k}: {v['wall_s']:.1f} s, {v['settings_per_min']:.1f} settings/min, "
                  f"best val {v['best_val']}", flush=True)  # fmt: skip
    print(f"sweep ratio: {ratio:.2f}x", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--experiment", default="image_mnist_lt")
    p.add_argument("--settings", type=int, default=64)
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", action="store_true", help="also time the whole sweep command")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement (median)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda (then use --workers 1)")
    p.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="only write stage 1 (with its features) and the settings to DIR",
    )
    p.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="DIR",
        help="read stage 1 and the settings from DIR (written by --export)",
    )
    p.add_argument("--single-settings", type=int, default=None, metavar="K",
                   help="time one setting per trial on the first K settings only")  # fmt: skip
    args = p.parse_args()
    if args.export:
        export(args.experiment, args.settings, args.seed, args.export)
        return
    start = time.time()
    result = {
        "experiment": args.experiment,
        "settings": args.settings,
        "workers": args.workers,
        "repeats": args.repeats,
        "single_settings": args.single_settings or args.settings,
        "training": training(
            args.experiment,
            args.settings,
            args.sizes,
            args.workers,
            args.seed,
            args.repeats,
            args.source,
            args.device,
            args.single_settings,
        ),
    }
    if args.sweep:
        # the largest P that still makes one population trial per worker (all cores busy)
        fits = [p for p in args.sizes if args.settings // p >= args.workers]
        result["sweep"] = sweeps(args.experiment, args.settings, max(fits or args.sizes))
    out = args.out or REPO / f"bench/results/population_{args.experiment}.json"
    save_cpu_result(out, result, start, device=args.device)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
