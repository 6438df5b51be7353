"""Shared body of the per-table stage-2 search spaces.

Each table module states its own :class:`Stage2Ranges` and published settings; this helper only
turns the ranges into ``trial.suggest_*`` calls so the four spaces cannot drift apart in which
keys they sample or how (log scale, integer step, categorical tolerance).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Stage2Ranges", "SuggestTrial", "suggest_stage2"]


class SuggestTrial(Protocol):
    """The part of ``optuna.trial.Trial`` a define-by-run space may touch."""

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = ..., log: bool = ...
    ) -> float: ...

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = ..., log: bool = ...
    ) -> int: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class Stage2Ranges:
    """Bounds of the stage-2 knobs one table searches.

    lr (alpha), weight_lr (beta), eps (lambda), feature_weight: ``(low, high)`` on a log scale.
    max_iter: ``(low, high, step)`` Sinkhorn iteration cap. tol: the Sinkhorn tolerances to try,
    ``None`` meaning "no early stop" (run all ``max_iter`` iterations). feature_weight is the
    weight of the feature cost in the combined cost; label_weight stays at 1.0.
    """

    lr: tuple[float, float]
    weight_lr: tuple[float, float]
    eps: tuple[float, float]
    max_iter: tuple[int, int, int]
    tol: tuple[float | None, ...]
    feature_weight: tuple[float, float]


def suggest_stage2(trial: SuggestTrial, ranges: Stage2Ranges) -> None:
    """Suggest every stage-2 knob in ``ranges`` under its dotted config key."""
    trial.suggest_float("stage2.lr", *ranges.lr, log=True)
    trial.suggest_float("stage2.weight_lr", *ranges.weight_lr, log=True)
    trial.suggest_float("stage2.eps", *ranges.eps, log=True)
    low, high, step = ranges.max_iter
    trial.suggest_int("stage2.max_iter", low, high, step=step)
    trial.suggest_categorical("stage2.tol", list(ranges.tol))
    trial.suggest_float("stage2.feature_weight", *ranges.feature_weight, log=True)
