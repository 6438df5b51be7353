"""Typed experiment configs and define-by-run search spaces, one module per paper table.

``EXPERIMENTS`` is the registry: a literal dict from name to config builder. :func:`resolve`
turns (name, smoke, preset, seed, overrides) into a config, for every command, benchmark and
test. ``SPACES`` maps the same names to the table's search-space module, which has
``space(trial)`` (Optuna define-by-run, dotted config keys) and ``best()`` (the published
settings, enqueued as the first trial).
"""

from __future__ import annotations

from . import (
    cifar_lt,
    imagenet_lt,
    meta_reweight,
    modelnet,
    offline,
    offline_pointcloud,
    offline_text,
    ot_learn,
    places_lt,
    sst,
)
from .experiments import REGISTRY
from .resolve import resolve

__all__ = ["EXPERIMENTS", "SPACES", "SPACE_MODULES", "resolve"]

EXPERIMENTS = REGISTRY

SPACES = {
    "image_cifar10_lt": cifar_lt,
    "image_cifar100_lt": cifar_lt,
    "image_imagenet_lt": imagenet_lt,
    "image_places_lt": places_lt,
    "image_mnist_lt": offline,
    "pointcloud_modelnet10": modelnet,
    "pointcloud_shapes": offline_pointcloud,
    "text_sst2": sst,
    "text_sst5": sst,
    "text_tweets": offline_text,
}

# Every space module by name, for ``sweep --space NAME`` (a space other than the experiment's).
SPACE_MODULES = {
    m.__name__.rsplit(".", 1)[1]: m
    for m in (
        cifar_lt,
        imagenet_lt,
        places_lt,
        offline,
        sst,
        offline_text,
        modelnet,
        offline_pointcloud,
        meta_reweight,
        ot_learn,
    )
}
