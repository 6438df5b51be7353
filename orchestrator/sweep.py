"""``python -m orchestrator.sweep NAME``: search the OT method's stage-2 knobs with Ray Tune.

Stage 1 runs once per content hash (a Ray task; cached in the run storage), then a Tuner runs
the stage-2 trials: OptunaSearch (seeded TPE, the paper's settings enqueued first) with ASHA
on stage-2 epochs (by default both in trial order: ``scheduler.OrderedASHA`` and
``search.InOrder``; ASHA's rungs kept across ``--resume`` by ``scheduler.RungsKept``), ranked
on validation balanced accuracy only. MLflow gets one parent run per sweep, one child run per
trial and one run per stage-1 build.

Local by default (``ray.init()`` here, MLflow in ``<storage>/mlflow.db``); on a cluster pass
``--address`` (or RAY_ADDRESS), a shared ``--storage`` and ``--tracking-uri``.

This module reads the command line only (``--help``, ``--list`` and argument errors load
neither Ray, MLflow nor torch); the sweep itself is :mod:`orchestrator.sweep_run`, its parts
:mod:`~orchestrator.sweep_setup` (what runs: space, populations, resources, the Tuner),
:mod:`~orchestrator.sweep_results` (ranking, summary, control, figures) and
:mod:`~orchestrator.sweep_record` (what ``--resume`` takes back).
"""

from __future__ import annotations

import argparse

from search_spaces import EXPERIMENTS, SEARCH_SPACES, SPACES

from . import cli, cluster
from .sweep_record import given_options

__all__ = ["main", "parse_args"]


def _parser() -> argparse.ArgumentParser:
    p = cli.Parser(
        prog="python -m orchestrator.sweep",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="search spaces (--space):\n"
        + "\n".join(f"  {s.name:<14}{s.about}" for s in SEARCH_SPACES.values()),
    )
    p.add_argument("name", nargs="?", help="registered experiment (see --list)")
    p.add_argument("--list", action="store_true", help="list the registered experiments")
    p.add_argument("--trials", type=int, default=8, help="number of trials (default 8)")
    p.add_argument("--concurrency", type=int, default=0, help="trials at once (default: what fits)")
    cli.add_config_args(p)
    p.add_argument(
        "--space", choices=sorted(SEARCH_SPACES), default=None, metavar="SPACE",
        help="search space (default: the experiment's own, see --list); the spaces are below",
    )  # fmt: skip
    cli.add_cluster_args(p)
    p.add_argument(
        "--workers-per-trial", type=int, default=0,
        help="Ray Train workers per trial, data-parallel (default: 1, or the GPUs when > 1)",
    )  # fmt: skip
    p.add_argument(
        "--population", type=int, default=0,
        help="settings each trial trains at once on cached features (default: up to 16 where "
        "stage 2 runs on cached features, 1 where f1 trains); --trials counts settings",
    )  # fmt: skip
    p.add_argument(
        "--order", choices=("trial", "arrival"), default="trial",
        help="trial (default): ASHA decides and TPE is told in the order trials were created, "
        "so the outcome does not depend on timing (a trial can wait at a rung for an earlier "
        "one); arrival: Tune's own, as results arrive",
    )  # fmt: skip
    p.add_argument(
        "--figures", type=int, default=3, metavar="K",
        help="draw the PNGs of the K best settings at the end (default 3); every run keeps "
        "the data they are drawn from: python -m orchestrator.figures draws any later",
    )  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue the last interrupted sweep")
    return p


def _list() -> None:
    """Each experiment: its table, its own search space and what it is."""
    cfgs = {name: build() for name, build in EXPERIMENTS.items()}
    width = max(len(n) for n in cfgs)
    tables = max(len(c.table) for c in cfgs.values())
    spaces = max(len(s.name) for s in SPACES.values())
    for name, cfg in cfgs.items():
        space = SPACES[name].name
        print(f"{name:<{width}}  {cfg.table:<{tables}}  {space:<{spaces}}  {cfg.description}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The sweep's command line, checked (an argument error exits 2 with argparse's line);
    ``reproduce --tune`` builds its searches' with it too."""
    p = _parser()
    args = p.parse_args(argv)
    args.given = given_options(_parser(), argv)
    if args.list:
        return args
    if not args.name:
        p.error("give an experiment name (see --list)")
    if (
        args.trials < 1
        or args.cpus_per_trial <= 0
        or args.gpus_per_trial < 0
        or args.workers_per_trial < 0
        or args.population < 0
        or args.figures < 0
    ):
        p.error(
            "--trials must be >= 1, --cpus-per-trial > 0, --gpus-per-trial, "
            "--workers-per-trial, --population and --figures >= 0"
        )
    return args


def _resolves(args: argparse.Namespace) -> int:
    cli.config_from_args(args)  # raises the one-line error the run would raise later
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        _list()
        return 0
    if not args.resume and cli.run_command(lambda: _resolves(args)):
        return 2  # an unknown name or a bad override: said before torch, Ray and MLflow load
    cluster.before_ray_import(args.address)
    from .sweep_run import run  # Ray, MLflow and torch: only once the arguments are read

    return run(args)


if __name__ == "__main__":
    cli.exit_with(main())
