"""``python -m orchestrator.run NAME [--set key=value ...] [--seed S] [--out DIR]``

One full two-stage trial of a registered experiment, without Ray; prints the final metrics
(stage 1 and stage 2; validation and test) as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import cli

__all__ = ["main"]


def _progress(stage: str, epoch: int, m: dict) -> None:
    keys = ("train_loss", "ot_loss", "val_balanced_acc", "test_balanced_acc")
    shown = " ".join(f"{k}={m[k]:.4g}" for k in keys if k in m)
    print(f"[{stage} epoch {epoch}] {shown}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog="python -m orchestrator.run", description=__doc__)
    p.add_argument("name", help=f"one of: {cli.experiment_names()}")
    cli.add_config_args(p)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write result.json and stage1.pt here, and stage 1's epoch checkpoints until "
        "then (a rerun with the same DIR resumes from them)",
    )
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")
    return p


def _check_writable(out: Path) -> None:
    """``--out`` is checked before anything trains: a directory that exists or can be made,
    and that takes a file."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise cli.CommandError(f"--out {out}: cannot write there ({err.strerror})") from None


def run(args: argparse.Namespace) -> int:
    cfg = cli.config_from_args(args)  # a bad name or override: said before torch loads
    # torch: only once the arguments are read (--help and a bad argument answer at once)
    from trainables.trial import run_trial

    from . import runtime

    if args.print_config:
        runtime.print_configs([("", cfg)], full=args.print_config == "full")
        return 0
    runtime.preflight(cfg, data=False)  # the data is loaded first thing anyway
    if args.out is not None:
        _check_writable(args.out)
    start = time.time()
    try:
        result = run_trial(cfg, out_dir=args.out, callback=None if args.quiet else _progress)
    except (NotImplementedError, FloatingPointError) as err:
        raise cli.CommandError(str(err)) from None
    except ValueError as err:
        raise cli.CommandError(f"bad configuration: {err}") from None
    result["wall_s"] = round(time.time() - start, 1)
    print(json.dumps(result, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return cli.run_command(lambda: run(args))


if __name__ == "__main__":
    cli.exit_with(main())
