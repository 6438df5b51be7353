"""Typed experiment configs and (later) define-by-run search spaces, one module per table.

``EXPERIMENTS`` is the registry: a literal dict from name to config builder.
"""

from __future__ import annotations

from .experiments import (
    image_cifar10_lt,
    image_cifar100_lt,
    image_imagenet_lt,
    image_mnist_lt,
    image_places_lt,
)

__all__ = ["EXPERIMENTS"]

EXPERIMENTS = {
    "image_cifar10_lt": image_cifar10_lt,
    "image_cifar100_lt": image_cifar100_lt,
    "image_imagenet_lt": image_imagenet_lt,
    "image_places_lt": image_places_lt,
    "image_mnist_lt": image_mnist_lt,
}
