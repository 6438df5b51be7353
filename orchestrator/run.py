"""``python -m orchestrator.run NAME [--set key=value ...] [--seed S] [--out DIR]``

One full two-stage trial of a registered experiment, without Ray; prints the final metrics
(stage 1 and stage 2; validation and test) as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from search_spaces import EXPERIMENTS
from search_spaces.config import PRESETS, ConfigError, apply_overrides, apply_preset
from trainables.data import DatasetMissing
from trainables.models import PretrainedWeightsMissing


def _progress(stage: str, epoch: int, m: dict) -> None:
    keys = ("train_loss", "ot_loss", "val_balanced_acc", "test_balanced_acc")
    shown = " ".join(f"{k}={m[k]:.4g}" for k in keys if k in m)
    print(f"[{stage} epoch {epoch}] {shown}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestrator.run", description=__doc__)
    p.add_argument("name", help=f"one of: {', '.join(EXPERIMENTS)}")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set stage2.eps=0.05 (repeatable)",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="stage-2 fidelity preset (default: the experiment's own)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny variant (seconds)")
    p.add_argument("--out", type=Path, default=None, help="write result.json and stage1.pt here")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")
    args = p.parse_args(argv)
    if args.name not in EXPERIMENTS:
        p.error(f"unknown experiment {args.name!r}; choose from {', '.join(EXPERIMENTS)}")
    try:
        cfg = EXPERIMENTS[args.name](smoke=args.smoke)
        if args.preset:
            cfg = apply_preset(cfg, args.preset)
        if args.seed is not None:
            cfg = dataclasses.replace(cfg, seed=args.seed)
        cfg = apply_overrides(cfg, args.overrides)
    except ConfigError as err:
        p.error(str(err))
    from trainables.trial import check_config, run_trial

    try:
        check_config(cfg)
    except ValueError as err:
        print(f"error: bad configuration: {err}", file=sys.stderr)
        return 2

    start = time.time()
    try:
        result = run_trial(cfg, out_dir=args.out, callback=None if args.quiet else _progress)
    except (
        DatasetMissing,
        PretrainedWeightsMissing,
        NotImplementedError,
        FloatingPointError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"error: bad configuration: {err}", file=sys.stderr)
        return 2
    result["wall_s"] = round(time.time() - start, 1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
