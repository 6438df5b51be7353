"""The one way a command, a benchmark or a test turns an experiment name into a config."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Sequence

from trainables.config import PRESETS, ConfigError, ExperimentConfig, apply_overrides

from .experiments import REGISTRY

__all__ = ["resolve", "unknown_name"]


def unknown_name(kind: str, name: str, known: Iterable[str]) -> str:
    """``unknown experiment 'x'; did you mean 'y'? (choose from a, b, ...)``: one line."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (choose from {', '.join(known)})"


def resolve(
    name: str,
    *,
    smoke: bool = False,
    preset: str | None = None,
    seed: int | None = None,
    overrides: Sequence[str] = (),
) -> ExperimentConfig:
    """The config of experiment ``name``: its builder at ``smoke`` size under ``preset``
    (``None``: the experiment's own), then ``seed``, then the ``--set`` overrides in order.

    The preset goes into the builder, so what the builder sizes for its data (epochs, step
    sizes, the smoke limits) stays; the same arguments give the same config from every entry
    point. Raises :class:`ConfigError` (one line) for an unknown name, preset or override.
    """
    if name not in REGISTRY:
        raise ConfigError(unknown_name("experiment", name, REGISTRY))
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    build = REGISTRY[name]
    cfg = build(smoke=smoke) if preset is None else build(smoke=smoke, preset=preset)
    if seed is not None:
        cfg = dataclasses.replace(cfg, seed=seed)
    return apply_overrides(cfg, list(overrides))
