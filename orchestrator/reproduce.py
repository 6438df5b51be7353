"""``python -m orchestrator.reproduce TABLE``: re-run one of the paper's tables on Ray.

Every cell (column x method, ``search_spaces.tables``) runs over N seeds with the paper's
settings (``--preset``). Stage 1 is built once per content hash and shared (the CE baseline and
the OT method of a column share it); the stage-2 runs go through one Ray Tune grid, each an
MLflow run in the experiment ``reproduce-TABLE`` tagged with table, cell, method, preset and
seed. A second invocation skips every run that already finished (resume at the table level).
``--dry-run`` prints the grid and an estimate from measured per-epoch costs and runs nothing.
At the end, Fig. 1 (learned weights of a 10..1 batch under each cost) and Fig. 2 (confusion
matrices of CE and OT) go into the invocation's MLflow run, and the table is printed
(``python -m orchestrator.report TABLE`` prints it again, in md, csv, latex or html).

This module reads the command line only; the run is :mod:`orchestrator.reproduce_run`.
"""

from __future__ import annotations

import argparse
import textwrap

from search_spaces.resolve import unknown_name
from search_spaces.tables import TABLES

from . import cli, cluster

__all__ = ["grid_help", "main"]


def _parser() -> argparse.ArgumentParser:
    p = cli.Parser(
        prog="python -m orchestrator.reproduce",
        description=__doc__.split("\n\n")[0],
        epilog=grid_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("table", help=f"one of: {', '.join(TABLES)}")
    p.add_argument(
        "--seeds", type=int, default=None,
        help="seeds per cell, 0..N-1, N >= 1 (default: the experiments' protocol, e.g. 10 "
        "for text)",
    )  # fmt: skip
    p.add_argument(
        "--first-seed", type=int, default=None,
        help="seeds FIRST..FIRST+N-1 (default 0; 1 with --tune): e.g. fresh seeds for a "
        "--tuned setting that a sweep picked on seed 0",
    )  # fmt: skip
    p.add_argument(
        "--methods", nargs="+", default=None,
        help="only these rows (each table's are listed below; an OT row brings its +no_ot "
        "control)",
    )  # fmt: skip
    p.add_argument(
        "--columns", nargs="+", default=None,
        help="only these columns (each table's are listed below)",
    )  # fmt: skip
    cli.add_config_args(p, preset_default="paper", seed=False)
    p.add_argument(
        "--fidelity", action="store_true",
        help="also run the released-code rows (each extra switched off alone), first column",
    )  # fmt: skip
    p.add_argument(
        "--tuned", action="store_true",
        help="OT rows use the best setting of the latest finished sweep of their experiment "
        "(same data, model and stage 1); recorded and reported as PRESET+sweep",
    )  # fmt: skip
    p.add_argument(
        "--tune", type=int, default=0, metavar="N",
        help="every row (baselines included) first searches N settings of its own space on "
        "seed 0 (the same searcher and validation metric for all), then its best runs on the "
        "fresh seeds; recorded and reported as PRESET+tuneN beside the published rows",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the grid; run nothing")
    cli.add_cluster_args(p)
    return p


def grid_help(width: int = 88) -> str:
    """Every table's row names (``--methods``) and column names (``--columns``), for --help;
    the ``+no_ot`` controls, the ``+la`` readings and the fidelity rows come with the rows and
    ``--fidelity``."""
    out = ["rows (--methods) and columns (--columns) of each table:"]
    for t in TABLES.values():
        rows = [m.name for m in t.methods if not (m.control_of or m.fidelity or m.la_of)]
        out.append(f"  {t.name}")
        for label, words in (("methods", rows), ("columns", [c.name for c in t.columns])):
            out += textwrap.wrap(
                f"{label}: {' '.join(words)}", width, initial_indent="    ",
                subsequent_indent="      ", break_on_hyphens=False,
            )  # fmt: skip
    out.append(
        "\nEvery OT row comes with ROW+no_ot (its weights not learned) and ROW+la, "
        "ROW+la+no_ot\n(both read through post-hoc logit adjustment: no extra run).\n"
        "--fidelity adds the "
        "released-code rows (ot@released_code...), first column."
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.table not in TABLES:
        p.error(unknown_name("table", args.table, TABLES))
    if args.seeds is not None and args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds} (leave it out for the protocol's)")
    if args.tune < 0 or (args.tune and (args.tuned or args.fidelity)):
        p.error("--tune N needs N >= 1, and neither --tuned (a sweep's best for OT rows only) "
                "nor --fidelity (presets, not searched)")  # fmt: skip
    if args.tune and args.first_seed == 0:
        p.error("--tune searches on seed 0: its re-runs take fresh seeds (--first-seed >= 1)")
    if args.first_seed is None:
        args.first_seed = 1 if args.tune else 0
    if args.first_seed < 0:
        p.error(f"--first-seed must be >= 0, got {args.first_seed}")
    if args.cpus_per_trial <= 0 or args.gpus_per_trial < 0:
        p.error("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    cluster.before_ray_import(args.address)
    from .reproduce_run import run  # Ray, MLflow and torch: only once the arguments are read

    return run(args)


if __name__ == "__main__":
    cli.exit_with(main())
