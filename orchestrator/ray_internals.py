"""The one module that reads or writes Ray Tune's private names.

Tune offers no public way to: resume a trial a scheduler held at a rung; read or set an ASHA
scheduler's rungs (to decide in trial order, and to keep them across a restore); or set a
wrapping searcher's metric and mode; tell a starting trial from one waiting for resources; or
keep a new local cluster from announcing its token auth. What this project needs of them is
here, as small functions, so a Ray upgrade is checked in one place. :func:`check_ray_version`
stops in one line on a Ray outside the range these were tested with (``TESTED_RAY``;
pyproject.toml pins the same range).
"""

from __future__ import annotations

import logging

import ray
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher

__all__ = [
    "TESTED_RAY",
    "asha_bracket",
    "asha_settings",
    "check_ray_version",
    "count_stop",
    "forget_trial",
    "holds_resources",
    "quiet_token_notice",
    "resume_held_trial",
    "rung_state",
    "set_rung_state",
    "set_searcher_properties",
    "tracks_trial",
]

# [first, last] minor versions of Ray this module was tested with
TESTED_RAY = ((2, 60), (2, 60))


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def check_ray_version(version: str | None = None) -> None:
    """RuntimeError (one line) when Ray (``version``, default the installed one) is outside
    ``TESTED_RAY``: the private names below may have moved."""
    version = version or ray.__version__
    low, high = TESTED_RAY
    if not low <= _minor(version) <= high:
        tested = ".".join(map(str, low)) + (
            "" if low == high else " to " + ".".join(map(str, high))
        )
        raise RuntimeError(
            f"Ray {version} is installed; the sweep scheduler was tested with Ray {tested}.x "
            "(orchestrator/ray_internals.py): install the pinned Ray (./scripts/setup.sh)"
        )


# -- an ASHA scheduler (one bracket) -----------------------------------------------------------


def asha_bracket(scheduler: ASHAScheduler):
    """The scheduler's only bracket (Tune's ``_Bracket``); ValueError when it has several."""
    brackets = scheduler._brackets
    if len(brackets) != 1:
        raise ValueError("one bracket expected (ASHAScheduler(brackets=1))")
    return brackets[0]


def bracket_rungs(bracket) -> list[tuple[float, dict]]:
    """``[(milestone, {trial id: recorded value})]``, highest milestone first (live dicts)."""
    return bracket._rungs


def asha_settings(scheduler: ASHAScheduler) -> tuple[str, str, float, float]:
    """(time attribute, metric, sign that makes larger better, max_t) of ``scheduler``."""
    return scheduler._time_attr, scheduler._metric, scheduler._metric_op, scheduler._max_t


def tracks_trial(scheduler: ASHAScheduler, trial_id: str) -> bool:
    """Whether ASHA holds ``trial_id`` (added and not removed)."""
    return trial_id in scheduler._trial_info


def forget_trial(scheduler: ASHAScheduler, trial_id: str) -> None:
    scheduler._trial_info.pop(trial_id, None)


def count_stop(scheduler: ASHAScheduler) -> None:
    """One more trial stopped early (what ``debug_string`` reports)."""
    scheduler._num_stopped += 1


def rung_state(scheduler: ASHAScheduler) -> dict:
    """What an ASHA scheduler has decided so far: each bracket's values at each rung and the
    count it stopped."""
    return {
        "rungs": [[[m, dict(rec)] for m, rec in bracket_rungs(b)] for b in scheduler._brackets],
        "num_stopped": scheduler._num_stopped,
    }


def set_rung_state(scheduler: ASHAScheduler, state: dict) -> None:
    """Put back what :func:`rung_state` saved (into the same scheduler's brackets)."""
    brackets = scheduler._brackets
    if len(state["rungs"]) != len(brackets):
        raise ValueError("the saved rungs are not this scheduler's: a different bracket count")
    for bracket, rungs in zip(brackets, state["rungs"], strict=True):
        live = bracket_rungs(bracket)
        if [m for m, _ in live] != [m for m, _ in rungs]:
            raise ValueError("the saved rungs are not this scheduler's: different milestones")
        for (_, recorded), (_, saved) in zip(live, rungs, strict=True):
            recorded.clear()
            recorded.update(saved)
    scheduler._num_stopped = state["num_stopped"]


# -- the trial controller ---------------------------------------------------------------------


def resume_held_trial(tune_controller, trial) -> None:
    """Ask a trial a scheduler held (``NOOP`` at a rung) for its next result: what the
    controller does after a ``CONTINUE``. Schedulers get the controller, or a wrapper of it."""
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    controller._schedule_trial_train(trial)


def holds_resources(tune_controller, trial) -> bool:
    """Whether ``trial``'s actor has its resources: started, or starting (Tune still calls the
    trial PENDING while its process boots). A trial waiting for resources has none."""
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    actor = controller._trial_to_actor.get(trial)
    return actor is not None and controller._actor_manager.is_actor_started(actor)


# -- Ray's start --------------------------------------------------------------------------------


def quiet_token_notice() -> None:
    """Drop the warning a new local cluster logs at every start that it enabled token
    authentication (Ray's default, unchanged): news to nobody who typed a sweep. Setting
    ``RAY_AUTH_MODE`` ourselves would silence it too, but the driver's GCS client reads that
    mode when Ray is imported, before a command could set it."""
    logging.getLogger(_TOKEN_LOG).addFilter(_not_token_notice)


_TOKEN_LOG = "ray._private.authentication.authentication_token_setup"


def _not_token_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled for this Ray")


# -- a searcher that wraps another -------------------------------------------------------------


def set_searcher_properties(searcher: Searcher, metric: str | None, mode: str | None) -> None:
    """Set ``searcher``'s metric and mode to those its wrapped searcher settled on (Tune's
    ``Searcher`` has no setter; its ``set_search_properties`` is for the space too)."""
    searcher._metric, searcher._mode = metric, mode
