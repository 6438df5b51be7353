"""``shapes``: a synthetic point-cloud dataset of ten primitive solids, generated offline with
trimesh. It is not ModelNet and reports name it "shapes (synthetic, trimesh)".

Each sample is a primitive with random proportions, a random anisotropic scale, a random turn
about the up axis and a small tilt, sampled uniformly on its surface (area-weighted), jittered
with Gaussian noise and normalised like the ModelNet clouds (PyG's ``NormalizeScale``: centred,
largest |coordinate| 1). Every sample is
a pure function of ``(seed, class, index)``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

__all__ = ["SHAPES_SOURCE", "SHAPE_CLASSES", "make_shapes", "normalise_cloud"]

SHAPES_SOURCE = "shapes (synthetic, trimesh)"


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _builders() -> dict[str, Callable]:
    import trimesh.creation as tc

    return {
        "box": lambda r: tc.box(extents=[_u(r, 0.6, 1.4), _u(r, 0.6, 1.4), _u(r, 0.6, 1.4)]),
        "cylinder": lambda r: tc.cylinder(radius=_u(r, 0.3, 0.6), height=_u(r, 0.8, 2.0)),
        "cone": lambda r: tc.cone(radius=_u(r, 0.4, 0.8), height=_u(r, 0.8, 2.0)),
        "capsule": lambda r: tc.capsule(height=_u(r, 0.6, 1.5), radius=_u(r, 0.25, 0.5)),
        "sphere": lambda r: tc.icosphere(subdivisions=3, radius=1.0),
        "torus": lambda r: tc.torus(major_radius=1.0, minor_radius=_u(r, 0.15, 0.4)),
        "ring": lambda r: tc.annulus(r_min=_u(r, 0.5, 0.8), r_max=1.0, height=_u(r, 0.2, 0.6)),
        "pyramid": lambda r: tc.cone(radius=_u(r, 0.5, 0.9), height=_u(r, 0.8, 1.6), sections=4),
        "prism": lambda r: tc.cylinder(radius=_u(r, 0.4, 0.8), height=_u(r, 0.8, 1.8), sections=3),
        "icosahedron": lambda r: tc.icosahedron(),
    }


SHAPE_CLASSES = (
    "box",
    "cylinder",
    "cone",
    "capsule",
    "sphere",
    "torus",
    "ring",
    "pyramid",
    "prism",
    "icosahedron",
)


def normalise_cloud(points: np.ndarray) -> np.ndarray:
    """Centre on the mean and scale the largest |coordinate| to 1 (PyG ``NormalizeScale``)."""
    centred = points - points.mean(axis=0, keepdims=True)
    return centred / np.abs(centred).max()


def _rotation(rng: np.random.Generator) -> np.ndarray:
    yaw, tilt_x, tilt_y = rng.uniform(0, 2 * np.pi), rng.normal(0, 0.1), rng.normal(0, 0.1)
    cz, sz = np.cos(yaw), np.sin(yaw)
    cx, sx = np.cos(tilt_x), np.sin(tilt_x)
    cy, sy = np.cos(tilt_y), np.sin(tilt_y)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return rz @ ry @ rx


def _sample(name: str, build: Callable, rng: np.random.Generator, num_points: int) -> np.ndarray:
    import trimesh

    mesh = build(rng)
    scale = rng.uniform(0.7, 1.3, size=3)
    points, _ = trimesh.sample.sample_surface(mesh, num_points, seed=rng)
    points = (np.asarray(points) * scale) @ _rotation(rng).T
    points = points + rng.normal(0.0, 0.01, size=points.shape)
    return normalise_cloud(points).astype(np.float32)


@lru_cache(maxsize=4)
def make_shapes(per_class: int, num_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` clouds of every class: points ``[K*per_class, num_points, 3]`` float32 and
    labels ``[K*per_class]`` int64 (class order :data:`SHAPE_CLASSES`). Cached per process;
    callers must not modify the arrays."""
    if per_class <= 0 or num_points <= 0:
        raise ValueError("shapes: per_class and num_points must be positive")
    builders = _builders()
    xs = np.empty((len(SHAPE_CLASSES) * per_class, num_points, 3), dtype=np.float32)
    for c, name in enumerate(SHAPE_CLASSES):
        for i in range(per_class):
            rng = np.random.default_rng([seed, c, i])
            xs[c * per_class + i] = _sample(name, builders[name], rng, num_points)
    ys = np.repeat(np.arange(len(SHAPE_CLASSES), dtype=np.int64), per_class)
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys
