"""The compact progress view of ``sweep`` and ``reproduce``: one line per finished trial and
one live status line, instead of Tune's per-trial tables (``--verbose`` brings those back).

On a terminal the status line is rewritten in place (carriage return) at most every
``tty_every`` seconds; otherwise (a log file, a pipe) it is printed as a plain line at most
every ``plain_every`` seconds. The status shows trials done / running / stopped early /
errored, the best selection metric so far (validation only: ``names.SELECT_METRIC``; left out
where the trials are not one search's settings, as in ``reproduce``: ``best_val=False``) and the
elapsed time; each finished trial's line shows its selection metric, its test balanced accuracy
at the validation-selected epoch (``names.SELECTED_TEST``), whether the scheduler (ASHA)
stopped it early, and its sampled settings in short form.

The formatting is plain functions; :class:`CompactProgress`, the ``ray.tune.Callback`` that
prints them, adds Tune's hooks to :class:`_Progress` (which tests drive without Tune).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from ray.tune import Callback

from . import names
from .search import member_key

__all__ = [
    "CompactProgress",
    "Counts",
    "callbacks",
    "fmt_elapsed",
    "short_settings",
    "status_line",
    "trial_line",
    "tune_verbose",
]

# Trial.status values (ray.tune.experiment.Trial), spelled out so the formatting needs no Ray.
RUNNING, TERMINATED, ERROR = "RUNNING", "TERMINATED", "ERROR"
_CLEAR = "\r\x1b[K"  # back to the line's start, erase it


@dataclass(frozen=True)
class Counts:
    """Trials by state: ``done`` counts every finished trial (``stopped`` of them stopped early
    by the scheduler); ``interrupted``, those a stop signal (Ctrl-C) ended, is apart from them;
    ``total`` is the planned number (0: not known)."""

    done: int = 0
    running: int = 0
    stopped: int = 0
    errored: int = 0
    total: int = 0
    interrupted: int = 0


def fmt_elapsed(seconds: float) -> str:
    """``45s``, ``2m05s``, ``1h02m05s``."""
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _metric(value: Any) -> str:
    """A balanced accuracy (percent) with 2 decimals; ``-`` when absent or not finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return f"{value:.2f}"


def _value(v: Any) -> str:
    """3 significant digits, more where those would print a fraction as a whole number
    (cb_beta 0.9999 is not 1: a distinct setting)."""
    if not isinstance(v, float):
        return str(v)
    for digits in range(3, 7):
        text = f"{v:.{digits}g}"
        if not math.isfinite(v) or v == int(v) or float(text) != round(v):
            return text
    return text


def short_settings(config: Mapping[str, Any]) -> str:
    """A trial's sampled values as ``key=value`` pairs, each dotted key shortened to its last
    part (``stage2.eps`` -> ``eps``) unless two keys would then read the same; floats to 3
    significant digits (more where 3 would read as a whole number)."""
    last = [str(k).rsplit(".", 1)[-1] for k in config]
    return " ".join(
        f"{short if last.count(short) == 1 else key}={_value(v)}"
        for (key, v), short in zip(config.items(), last, strict=True)
    )


def status_line(
    counts: Counts,
    best: tuple[float, str] | None,
    elapsed: float,
    *,
    best_val: bool = True,
    early: bool = True,
) -> str:
    """``[2m05s] trials 5/32 done (2 stopped early), 4 running, 0 errored; best val 81.23
    (trial 6a1b_00003)``; ``best`` is (selection metric, trial id), None before any result.
    ``best_val=False`` leaves the best out (trials that are not rivals: each a table cell);
    ``early=False`` the early stops (no scheduler stops any trial)."""
    total = f"/{counts.total}" if counts.total else ""
    stopped = f" ({counts.stopped} stopped early)" if early else ""
    line = (
        f"[{fmt_elapsed(elapsed)}] trials {counts.done}{total} done{stopped}, "
        f"{counts.running} running, {counts.errored} errored"
        + (f", {counts.interrupted} interrupted" if counts.interrupted else "")
    )
    if not best_val:
        return line
    if best is None:
        return line + "; best val -"
    return f"{line}; best val {_metric(best[0])} (trial {best[1]})"


def stopped_early(result: Mapping[str, Any], max_t: int | None) -> bool:
    """Whether a finished trial ended before the scheduler's ``max_t`` (in ``TIME_ATTR`` units,
    stage-2 epochs): ASHA stopped it. Never, without a scheduler (``max_t`` None)."""
    reached = result.get(names.TIME_ATTR)
    return max_t is not None and isinstance(reached, (int, float)) and reached < max_t


def trial_line(
    trial_id: str,
    result: Mapping[str, Any],
    config: Mapping[str, Any],
    *,
    outcome: str,
    max_t: int | None = None,
) -> str:
    """One finished trial: ``outcome`` is ``finished``, ``stopped`` (early, by the scheduler),
    ``interrupted`` (by a stop signal) or ``errored``; a trial that reported ``diverged`` reads
    ``diverged``.

    ``trial 6a1b_00003  finished           val 81.23  test 79.10  eps=0.1 lr=0.05``
    """
    if outcome in ("stopped", "interrupted"):  # after EPOCH of MAX_T stage-2 epochs
        epoch = result.get(names.TIME_ATTR, "?")
        word = "stopped early" if outcome == "stopped" else "interrupted"
        state = f"{word} {epoch}" + (f"/{max_t}" if max_t else "")
    elif outcome == "finished" and result.get("diverged"):
        state = "diverged"
    else:
        state = outcome
    line = (
        f"trial {trial_id}  {state:<17}  val {_metric(result.get(names.SELECT_METRIC))}  "
        f"test {_metric(result.get(names.SELECTED_TEST))}"
    )
    if "population" in config:  # a population trial: its best member's setting
        members = config["population"]
        vals = [result.get(member_key(i), -1.0) for i in range(len(members))]
        top = max(range(len(members)), key=lambda i: vals[i]) if members else 0
        best = short_settings(members[top]) if members else ""
        return f"{line}  {len(members)} settings; best m{top}: {best}"
    settings = short_settings(config)
    return f"{line}  {settings}" if settings else line


def tune_verbose(args) -> int:
    """Tune's own ``verbose``: 0 for the compact view and for ``--quiet``; 1 or 2 with
    ``--verbose`` (once, twice).

    At 0 this also selects Tune's legacy output engine for this process
    (``RAY_AIR_NEW_OUTPUT=0``, unless set already): the new one (Ray 2.60) prints its
    experiment header (a configuration table, the results path, a TensorBoard hint) even at
    verbose 0; the legacy one at 0 prints nothing."""
    verbose = 0 if args.quiet else min(2, int(args.verbose or 0))
    if verbose == 0:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return verbose


def callbacks(args, *, max_t: int | None = None, best_val: bool = True) -> list:
    """The progress callbacks of a command: the compact view, unless ``--quiet`` (nothing at
    all) or ``--verbose`` (Tune's own output instead). ``max_t``: the scheduler's limit in
    stage-2 epochs, for telling an early stop (None: no scheduler); ``best_val``: whether the
    status line shows the best validation score so far (see :func:`status_line`)."""
    if args.quiet or args.verbose:
        return []
    return [CompactProgress(max_t=max_t, best_val=best_val)]


class _Progress:
    """The compact view's state and output; :class:`CompactProgress` adds ``ray.tune.Callback``
    as a base. The hooks take Tune's keyword arguments (``trials``, ``trial``, ``result``)."""

    def __init__(
        self,
        *,
        max_t: int | None = None,
        best_val: bool = True,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        plain_every: float = 30.0,
        tty_every: float = 1.0,
        tty: bool | None = None,
        columns: int | None = None,
    ):
        self.max_t = max_t
        self.best_val = best_val
        self.plain_every = plain_every
        self.tty_every = tty_every
        self._stream = stream  # None: sys.stdout at each write (not pickled with the Tuner)
        self._clock = clock
        self._tty = tty  # None: the stream's isatty()
        self._columns = columns  # the terminal's width (None: asked at each write)
        self._reset()

    def _reset(self) -> None:
        self._start: float | None = None
        self._last_status: float | None = None
        self._total = 0
        self._finished: dict[str, str] = {}  # trial id -> finished | stopped | ... | errored
        self._sigint = None  # the SIGINT handler Tune installed for this run (see setup)
        self._best: tuple[float, str] | None = None
        self._shown = False  # a status line is on screen without its newline (tty)
        self._trials: list = []  # Tune's trials, as last passed to a hook

    # Tune pickles its RunConfig (tuner.pkl); a stream does not pickle, and a restored
    # callback starts afresh.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_stream"] = None
        state["_clock"] = time.monotonic
        state["_sigint"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    # ---- output
    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stdout

    @property
    def is_tty(self) -> bool:
        if self._tty is not None:
            return self._tty
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def _now(self) -> float:
        now = self._clock()
        if self._start is None:
            self._start = now
        return now

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _print(self, line: str) -> None:
        """A permanent line (a finished trial), above the live status line on a terminal."""
        if self.is_tty and self._shown:
            self._write(_CLEAR + line + "\n")
            self._shown = False
            self._status(force=True)
        else:
            self._write(line + "\n")

    def _status(self, *, force: bool = False, final: bool = False) -> None:
        now = self._now()
        if not (force or final):
            if self.is_tty:
                due = not self._shown or now - self._last_status >= self.tty_every
            else:  # the first one after a full interval: a short run prints only the final one
                since = self._start if self._last_status is None else self._last_status
                due = now - since >= self.plain_every
            if not due:
                return
        self._last_status = now
        line = status_line(
            self.counts(),
            self._best,
            now - self._start,
            best_val=self.best_val,
            early=self.max_t is not None,
        )
        if not self.is_tty:
            self._write(line + "\n")
            return
        width = (self._columns or shutil.get_terminal_size((120, 24)).columns) - 1
        self._write(_CLEAR + line[:width] + ("\n" if final else ""))
        self._shown = not final

    # ---- state
    def counts(self) -> Counts:
        """The counts: the trials seen finishing here, then the states of Tune's trials (one
        finished before a resumed sweep was not seen here)."""
        outcome = dict(self._finished)
        running = 0
        for t in self._trials:
            if t.trial_id in outcome:
                continue
            if t.status == TERMINATED:
                early = stopped_early(t.last_result or {}, self.max_t)
                outcome[t.trial_id] = self._early_outcome() if early else "finished"
            elif t.status == ERROR:
                outcome[t.trial_id] = "errored"
            elif t.status == RUNNING:
                running += 1
        got = list(outcome.values())
        return Counts(
            done=got.count("finished") + got.count("stopped"),
            running=running,
            stopped=got.count("stopped"),
            errored=got.count("errored"),
            total=max(self._total, len(self._trials)),
            interrupted=got.count("interrupted"),
        )

    def _see(self, trial_id: str, result: Mapping[str, Any] | None) -> None:
        value = (result or {}).get(names.SELECT_METRIC)
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        if finite and (self._best is None or value > self._best[0]):
            self._best = (float(value), trial_id)

    def _early_outcome(self) -> str:
        """A trial that ended before ``max_t``: ``interrupted`` once a stop signal reached
        Tune (its handler, having set the stop, puts back the handler it replaced), else
        ``stopped`` (by the scheduler)."""
        in_main = threading.current_thread() is threading.main_thread()
        if (
            self._sigint is not None
            and in_main
            and signal.getsignal(signal.SIGINT) is not self._sigint
        ):
            return "interrupted"
        return "stopped"

    def _finish(self, trial, outcome: str) -> None:
        if trial.trial_id in self._finished:
            return
        result = trial.last_result or {}
        if outcome == "finished" and stopped_early(result, self.max_t):
            outcome = self._early_outcome()
        self._finished[trial.trial_id] = outcome
        self._see(trial.trial_id, result)
        self._print(
            trial_line(trial.trial_id, result, trial.config or {}, outcome=outcome,
                       max_t=self.max_t)
        )  # fmt: skip

    # ---- Tune's hooks
    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        self._now()
        if threading.current_thread() is threading.main_thread():
            # Tune's own handler, installed before its callbacks are set up (none when it runs
            # off the main thread or with TUNE_DISABLE_SIGINT_HANDLER: nothing then changes)
            self._sigint = signal.getsignal(signal.SIGINT)
        if total_num_samples and total_num_samples > 0:
            self._total = int(total_num_samples)

    def on_step_end(self, iteration: int, trials: list, **info):
        self._trials = list(trials)
        for t in self._trials:  # best so far of trials resumed from before
            self._see(t.trial_id, t.last_result)
        self._status()

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info):
        self._trials = list(trials)
        self._see(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info):
        self._trials = list(trials)
        self._finish(trial, "finished")

    def on_trial_error(self, iteration: int, trials: list, trial, **info):
        self._trials = list(trials)
        self._finish(trial, "errored")

    def on_experiment_end(self, trials: list, **info):
        self._trials = list(trials)
        self._status(final=True)


class CompactProgress(_Progress, Callback):
    """``ray.tune.Callback``: the compact progress view (see the module's doc)."""
