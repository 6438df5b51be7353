"""What the commands share on their command line: their config and cluster options, the
resolver call, the run storage, the tracking store, the commands they print, and the one-line
error exit (``error: ...`` on stderr, status 2).

Nothing here loads torch, Ray or MLflow (MLflow loads when a store is opened), so ``--help``,
``--list`` and a bad argument answer at once; what needs them once a command runs (the checks
before a run, ``--print-config``, Ray's start) is :mod:`orchestrator.runtime`.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import gc
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from search_spaces import EXPERIMENTS, resolve
from trainables.config import PRESETS, ConfigError, ExperimentConfig
from trainables.data import DatasetMissing, PretrainedWeightsMissing
from trainables.data.fetch import first_line, go_offline, use_cache_dir

from . import cluster, names, tracking
from .storage import Storage, StorageError

__all__ = [
    "REPO",
    "CommandError",
    "add_cluster_args",
    "add_config_args",
    "apply_fetch_settings",
    "check_ray_address",
    "command",
    "config_from_args",
    "exit_with",
    "open_storage",
    "open_tracking",
    "read_tracking",
    "run_command",
    "stage1_failure",
    "watch_run",
]

REPO = Path(__file__).resolve().parent.parent


class CommandError(RuntimeError):
    """A user-facing failure: printed as one line, exit status 2."""


# set when SIGTERM arrived: Ray's waits re-raise whatever a handler raised as a plain
# KeyboardInterrupt, so the exception alone cannot tell SIGTERM from Ctrl-C
_sigterm: list[bool] = []


def sigterm_as_sigint() -> None:
    """From now on SIGTERM (a scheduler's time limit, a preemption) stops the command as Ctrl-C
    would: through the SIGINT handler of the moment (Tune's during a sweep's fit: its state
    saved, resumable), else as KeyboardInterrupt. Called after ``ray.init``, whose driver
    handler would exit at once (and Ray's C++ handler then aborts the process)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame) -> None:
        _sigterm.append(True)
        current = signal.getsignal(signal.SIGINT)
        if not callable(current):  # SIG_IGN / SIG_DFL: nothing of Python's to call
            raise KeyboardInterrupt
        current(signal.SIGINT, frame)  # Tune's returns: the fit stops itself

    signal.signal(signal.SIGTERM, handler)


class Parser(argparse.ArgumentParser):
    """argparse with the project's error form: one ``error: ...`` line (no usage block, which
    ``--help`` shows), exit status 2."""

    def error(self, message: str):
        print(
            f"error: {message}{self._suggestion(message)} (see {self.prog} --help)", file=sys.stderr
        )
        raise SystemExit(2)

    def _suggestion(self, message: str) -> str:
        """``; did you mean --trials?`` for a mistyped option, as for a mistyped name."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        known = sorted(set(re.findall(r"--[a-z][a-z0-9-]*", self.format_help())))
        for token in message.split(":", 1)[1].split():
            close = difflib.get_close_matches(token.split("=")[0], known, n=1)
            if token.startswith("--") and close:
                return f"; did you mean {close[0]}?"
        return ""


def add_config_args(
    p: argparse.ArgumentParser, *, preset_default: str | None = None, seed: bool = True
) -> None:
    """``--set``, ``--seed`` (unless ``seed=False``), ``--preset``, ``--smoke`` and
    ``--print-config`` / ``--print-full-config`` (``args.print_config``: None, ``"used"`` or
    ``"full"``)."""
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set stage2.eps=0.05 (repeatable)",
    )  # fmt: skip
    if seed:
        p.add_argument("--seed", type=int, default=None, help="experiment (and searcher) seed")
    p.add_argument(
        "--preset", choices=sorted(PRESETS), default=preset_default,
        help="stage-2 fidelity preset, passed into the experiment's builder"
        + ("" if preset_default else " (default: the experiment's own)"),
    )  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="tiny variant (seconds)")
    p.add_argument(
        "--offline", action="store_true",
        help="fetch nothing (sets HF_HUB_OFFLINE=1): a missing dataset or encoder stops in one "
        "line naming what to fetch and where it goes",
    )  # fmt: skip
    printed = p.add_mutually_exclusive_group()
    printed.add_argument(
        "--print-config", dest="print_config", action="store_const", const="used",
        help="print the resolved config(s), only the fields the experiment reads, and the "
        "stage-1 key(s) as JSON; run nothing",
    )  # fmt: skip
    printed.add_argument(
        "--print-full-config", dest="print_config", action="store_const", const="full",
        help="as --print-config, with every field of the config",
    )  # fmt: skip


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    """Where runs go and what each gets: Ray, storage, MLflow, resources, retries."""
    p.add_argument("--address", default=None, help="Ray cluster address (or RAY_ADDRESS)")
    p.add_argument(
        "--storage", default=None,
        help="run storage: a path (shared on a cluster) or s3://... (default ./runs)",
    )  # fmt: skip
    p.add_argument(
        "--tracking-uri", default=None,
        help="MLflow tracking URI (or MLFLOW_TRACKING_URI; default <storage>/mlflow.db)",
    )  # fmt: skip
    p.add_argument(
        "--cache-in-storage", action="store_true",
        help="fetch data sets, encoders and weights into <storage>/cache (a path) instead of "
        "the checkout's data/ and each library's own cache (HF_HOME, TORCH_HOME)",
    )  # fmt: skip
    p.add_argument(
        "--cpus-per-trial", type=float, default=1.0,
        help="CPUs per trial (per worker of a data-parallel trial; default 1)",
    )  # fmt: skip
    p.add_argument(
        "--gpus-per-trial", type=float, default=0.0,
        help="fractions share a GPU; more than 1 runs the trial on that many GPU workers",
    )  # fmt: skip
    p.add_argument("--max-failures", type=int, default=2, help="retries per trial")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument(
        "--quiet", action="store_true", help="no progress at all, only the final summary"
    )  # fmt: skip
    shown.add_argument(
        "--verbose", action="count", default=0,
        help="Tune's own progress tables instead of the compact view (one line per finished "
        "trial and a status line); twice: Tune's most detailed output",
    )  # fmt: skip


def apply_fetch_settings(args: argparse.Namespace) -> None:
    """``--offline``: every library's offline switch on, for this process and its workers;
    ``--cache-in-storage``: every fetch under ``<storage>/cache``."""
    if getattr(args, "offline", False):
        go_offline()
    if getattr(args, "cache_in_storage", False):
        arg = args.storage or "runs"
        if arg.startswith("file://"):
            arg = arg[len("file://") :]
        elif "://" in arg:
            raise CommandError(
                f"--cache-in-storage needs a storage path, not {arg}: the libraries cache on "
                "a file system"
            )
        use_cache_dir(Path(arg) / "cache")


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The resolved config of ``args.name`` (the options of :func:`add_config_args`); applies
    ``--offline`` first."""
    apply_fetch_settings(args)
    try:
        return resolve(
            args.name,
            smoke=args.smoke,
            preset=args.preset,
            seed=args.seed,
            overrides=args.overrides,
        )
    except ConfigError as err:
        raise CommandError(str(err)) from None


def open_storage(arg: str | None, *, create: bool = True) -> tuple[Storage, Path | None]:
    """The run storage (default ``./runs``) and its local path when it has one. ``create=False``
    only reads (a dry run never writes)."""
    storage = Storage(arg or "runs")
    if create:
        storage.makedirs()
    return storage, (Path(storage.uri) if storage.local else None)


def open_tracking(
    explicit: str | None, storage: Storage, local_root: Path | None, experiment: str
) -> tuple[str, str, object]:
    """(tracking URI, experiment id, client): the store checked reachable, the experiment
    created with its artifacts beside the run storage; on an MLflow server, where the server
    puts them (its proxied artifact store: every node uploads through the server)."""
    uri = tracking.resolve_tracking_uri(explicit, storage.uri, local_root)
    tracking.check_reachable(uri)
    if uri.startswith(("http://", "https://")):
        artifacts = None
    else:
        artifacts = (
            (local_root / "mlartifacts").as_uri()
            if local_root
            else storage.child_uri("mlartifacts")
        )
    exp_id = tracking.ensure_experiment(uri, experiment, artifacts)
    return uri, exp_id, tracking.client(uri)


def read_tracking(explicit: str | None, storage_arg: str | None) -> tuple[str, object | None]:
    """(tracking URI, client or None): for commands that only read. A local SQLite store that
    does not exist is not created (None); any other store is checked reachable."""
    storage, local_root = open_storage(storage_arg, create=False)
    uri = tracking.resolve_tracking_uri(explicit, storage.uri, local_root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite://")).exists():
        return uri, None
    tracking.check_reachable(uri)
    return uri, tracking.client(uri)


def store_args(uri: str, storage: Storage, local_root: Path | None) -> str:
    """The options that point a later command (``ui``, ``report``) at this store: none for the
    default, ``--storage`` for another run directory, ``--tracking-uri`` for any other store."""
    if local_root is not None and uri == tracking.default_tracking_uri(local_root):
        default = Path("runs").resolve()
        return "" if local_root == default else f" --storage {storage.uri}"
    return f" --tracking-uri {uri}"


def command(args: str) -> str:
    """``.venv/bin/python -m <args>``: a command to print that works as typed, with the
    interpreter this one runs on (a bare ``python`` is another one unless the venv is active),
    relative to the working directory when it lies below it."""
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):  # not below the working directory: absolute
        python = python.relative_to(Path.cwd())
    return f"{python} -m {args}"


def ui_hint(uri: str, storage: Storage, local_root: Path | None) -> str:
    """The exact command that opens this store in the MLflow UI (a server is opened as is)."""
    if not uri.startswith("sqlite:///"):
        return f"open {uri} in a browser (an MLflow server)"
    return command(f"orchestrator.ui{store_args(uri, storage, local_root)}")


def check_ray_address(address: str | None) -> str | None:
    """The cluster to join (``address``, else ``RAY_ADDRESS``; None for a local Ray), checked to
    answer as one within seconds: a command calls it early, before its slow preparations."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "local"):
        return None
    try:
        cluster.check_reachable(address)
    except cluster.UnreachableRay as err:
        raise CommandError(f"cannot connect to Ray at {address}: {err}") from None
    return address


def stage1_failure(err: Exception, c, parent: str) -> CommandError:
    """A failed stage-1 Ray task: the parent run marked FAILED with the cause in ``ot.error``,
    as :func:`run_command` closes a watched run, and the cause in one line."""
    cause = err.cause if getattr(err, "cause", None) is not None else err
    failure = CommandError(f"stage 1 failed: {str(cause).strip().splitlines()[-1]}")
    c.set_tag(parent, names.ERROR, str(failure))
    c.set_terminated(parent, status="FAILED")
    return failure


# The MLflow runs the running command opened and has not closed yet: (client, run id).
_watched: list[tuple[object, str]] = []


def watch_run(client, run_id: str) -> None:
    """``run_id`` is the command's to close: if the command fails before it does (a
    ``CommandError``, any exception, Ctrl-C), :func:`run_command` closes it FAILED (KILLED for
    Ctrl-C) with the failure's first line in ``ot.error``, so no run is left RUNNING."""
    _watched.append((client, run_id))


def _close_watched(err: BaseException) -> None:
    status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
    while _watched:
        c, run_id = _watched.pop()
        try:
            if c.get_run(run_id).info.status == "RUNNING":
                c.set_tag(run_id, names.ERROR, first_line(err)[:5000])
                c.set_terminated(run_id, status=status)
        except Exception:  # the store may be what failed; the cause to report is `err`
            pass


def run_command(body: Callable[[], int]) -> int:
    """Run a command's body; a user-facing failure prints one line and returns 2. Either way a
    run the body watched (:func:`watch_run`) and left open is closed."""
    try:
        return body()
    except (
        CommandError,
        ConfigError,
        tracking.TrackingError,
        StorageError,
        DatasetMissing,
        PretrainedWeightsMissing,
    ) as err:
        _close_watched(err)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM outside a sweep's trials
        _close_watched(err)
        what = "stopped (SIGTERM)" if _sigterm else "interrupted (Ctrl-C)"
        print(
            f"{what}: its open runs are closed as KILLED; a stage-1 build continues from its "
            "last epoch when the command runs again",
            file=sys.stderr,
        )
        return 128 + signal.SIGTERM if _sigterm else 130
    except BaseException as err:
        _close_watched(err)
        raise
    finally:
        _watched.clear()


def exit_with(status: int) -> NoReturn:
    """End a command's process with ``status``. Its objects are frozen first: the collector's
    passes over torch's, Ray's and MLflow's objects at exit took about 2 s of every command
    (2 cores). Nothing is skipped: the atexit handlers (Ray's shutdown among them) still run."""
    gc.freeze()
    sys.exit(status)


def experiment_names() -> str:
    return ", ".join(EXPERIMENTS)


class _NoRestoreHint(logging.Filter):
    """Drops Tune's "interrupted ... Resume experiment with: Tuner.restore(...)" lines: the
    commands print their own (``--resume``, or running ``reproduce`` again)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not msg.startswith(("Experiment has been interrupted", "Training has been inter"))


def fit(tuner) -> tuple:
    """``tuner.fit()``: (its results, whether a stop signal ended it: ``tune_interrupted``),
    with Tune's own restore hint left out of the output."""
    sigint = signal.getsignal(signal.SIGINT)
    tune_log = logging.getLogger("ray.tune.tune")
    hint = _NoRestoreHint()
    tune_log.addFilter(hint)
    try:
        results = tuner.fit()
    finally:
        tune_log.removeFilter(hint)
    return results, tune_interrupted(sigint)


def tune_interrupted(sigint_before) -> bool:
    """Whether ``Tuner.fit`` just ended on a stop signal (Ctrl-C, or SIGUSR1). It then returns
    as if done, with the trials it stopped marked terminated and its state saved for a
    restore; its signal handler puts back the SIGINT handler it replaced (``sigint_before``),
    which it leaves replaced after a run that ended by itself. It replaces it only in the main
    thread and without ``TUNE_DISABLE_SIGINT_HANDLER``."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") or 0):
        return False
    return signal.getsignal(signal.SIGINT) is sigint_before
