"""Typed experiment configs and define-by-run search spaces.

``EXPERIMENTS`` is the registry: a literal dict from name to config builder. :func:`resolve`
turns (name, smoke, preset, seed, overrides) into a config, for every command, benchmark and
test. ``SEARCH_SPACES`` holds the search spaces by name (:class:`~search_spaces.spaces.Space`:
``space(trial)``, Optuna define-by-run over dotted config keys, and ``best(cfg)``, the setting
enqueued as the first trial); ``SPACES`` gives each experiment its own.
"""

from __future__ import annotations

from .experiments import REGISTRY
from .resolve import resolve
from .spaces import EXPERIMENT_SPACES, SEARCH_SPACES, Space

__all__ = ["EXPERIMENTS", "SEARCH_SPACES", "SPACES", "Space", "resolve"]

EXPERIMENTS = REGISTRY

SPACES: dict[str, Space] = {name: SEARCH_SPACES[s] for name, s in EXPERIMENT_SPACES.items()}
