"""What a command needs once it runs (the command-line modules import this only after the
arguments are read): the checks before a run, ``--print-config``, Ray's start or connection,
and the cluster's size."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Iterable

import ray

from trainables.config import ExperimentConfig, to_dict, unused_fields
from trainables.data import DatasetMissing, PretrainedWeightsMissing
from trainables.data.fetch import CACHE_VARS, MIRROR_VAR, OFFLINE_VARS, first_line
from trainables.trial import check_config, check_data

from . import cli, cluster, ray_internals
from .cli import CommandError, check_ray_address
from .stage_cache import stage1_hash

__all__ = ["fitting_trials", "init_ray", "node_cpus", "preflight", "print_configs"]


def preflight(
    cfg: ExperimentConfig, *, data: bool = True, label: str = "", fetch: bool = True
) -> None:
    """Refuse, in one line, what would fail later: a combination the stages reject, and
    (``data``) a dataset or pretrained weights that are not there, after fetching what is
    missing (unless ``fetch`` is off or the process is offline). Runs before Ray starts or the
    store is touched."""
    where = f"{label}: " if label else ""
    try:
        check_config(cfg)
    except ValueError as err:
        raise CommandError(f"{where}bad configuration: {err}") from None
    if data:
        try:
            check_data(cfg, fetch=fetch)
        except (DatasetMissing, PretrainedWeightsMissing) as err:
            raise CommandError(str(err)) from None


def print_configs(items: Iterable[tuple[str, ExperimentConfig]], *, full: bool = False) -> None:
    """``--print-config``: each config as JSON with its stage-1 key (one object, or a list),
    after the checks a run makes of it (a config ``run`` refuses is refused here too). Only the
    fields the experiment reads (:func:`~trainables.config.unused_fields` left out, and a
    section none of whose fields it reads), unless ``full``; a last line on stderr says how
    many were left out."""
    items = list(items)
    for label, cfg in items:
        preflight(cfg, data=False, label=label)
    out, left = [], []
    for label, cfg in items:
        unused = frozenset() if full else unused_fields(cfg)
        left.append(len(unused))
        shown = {"stage1_key": stage1_hash(cfg), "config": _leave_out(to_dict(cfg), unused)}
        out.append({"run": label, **shown} if label else shown)
    print(json.dumps(out[0] if len(out) == 1 and not items[0][0] else out, indent=1))
    if max(left, default=0):
        n = str(left[0]) if min(left) == max(left) else f"{min(left)}-{max(left)}"
        per = " per run" if len(left) > 1 else ""
        print(
            f"{n} fields the experiment does not read left out{per}; "
            "--print-full-config prints every field",
            file=sys.stderr,
        )


def _leave_out(config: dict, keys: Iterable[str]) -> dict:
    """``config`` (nested, as ``to_dict``) without the dotted ``keys``, nor a section they
    empty."""
    for key in keys:
        *path, name = key.split(".")
        node = config
        for part in path:
            node = node[part]
        del node[name]
    return {k: v for k, v in config.items() if v != {}}


def init_ray(address: str | None) -> None:
    """Start a local Ray that listens on loopback only, or connect to ``address`` /
    ``RAY_ADDRESS`` once something there answers as a Ray cluster (else one line, within
    seconds). Call it before Ray is first imported: the local start's setting is read then.
    A Ray this process started already is kept (``reproduce --tune`` runs sweeps in it)."""
    if ray.is_initialized():
        return
    address = check_ray_address(address)
    if address is None:
        cluster.local_on_loopback()
        # Ray starts its workers at nice 15 (a cluster's raylet stays responsive); here the
        # trials are the user's job, and at 15 any other program on the machine starves them:
        # a smoke sweep beside two busy loops took 370 s for 22 s alone (40 s at nice 0).
        os.environ.setdefault("RAY_worker_niceness", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Save the experiment state at every controller step (not every 10 s): a trial the driver
    # started is then always known to a resumed sweep, so it is resumed, never re-sampled.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    # A trial stopped by ASHA closes its MLflow run (artifacts, summary) before its actor takes
    # the next trial; Tune waits 2 s for that by default, then fails the next trial with
    # "Could not re-use actor" (seen on 2 busy cores). The actors inherit this process's env.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "120")
    # MLflow holds every result: of Tune's automatic copies of each report (CSV, JSON,
    # TensorBoard) the sweep's Tuner keeps the JSON its result grid reads; the TensorBoard
    # writer's thread alone took ~1.5 s of a 64-setting sweep's CPU
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    kwargs: dict = dict(include_dashboard=False, logging_level=logging.WARNING)
    if address:
        # The workers of a running cluster were started by `ray start`, not by this process:
        # the settings their trials read travel in the job's runtime environment.
        shipped = (
            "TUNE_FUNCTION_THREAD_TIMEOUT_S",
            "OT_REWEIGHT_FAIL_ONCE",
            "HF_ENDPOINT",
            MIRROR_VAR,
            *OFFLINE_VARS,
            *CACHE_VARS,
        )
        env_vars = {k: os.environ[k] for k in shipped if k in os.environ}
        kwargs["runtime_env"] = {"env_vars": env_vars}
    ray_internals.quiet_token_notice()
    try:
        # "local": a new Ray of this process's own, never the cluster `ray start` last
        # recorded on this machine (which plain ray.init() joins)
        ray.init(address=address or "local", **kwargs)
        cli.sigterm_as_sigint()  # replaces the handler ray.init installed
    except Exception as err:  # a start that times out raises plain Exception ("timed out
        # during startup", seen on 2 busy cores): every failure to start is one line
        what = f"connect to Ray at {address}" if address else "start a local Ray"
        raise CommandError(f"cannot {what}: {first_line(err)}") from None


def node_cpus() -> int:
    """CPUs of the largest live node (a stage-1 build runs on one node)."""
    per_node = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return max(1, int(max(per_node, default=1)))


def fitting_trials(cpus: float, gpus: float) -> int:
    """How many trials of ``cpus`` / ``gpus`` each the cluster runs at once."""
    res = ray.cluster_resources()
    fits = math.floor(res.get("CPU", 1) / max(cpus, 1e-3))
    if gpus > 0:
        fits = min(fits, math.floor(res.get("GPU", 0) / gpus))
    return fits
