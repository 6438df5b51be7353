"""Stage-2 search space for the offline point-cloud table (``offline_pointcloud``:
``pointcloud_shapes``, synthetic trimesh shapes).

Its stage 2 is sized like MNIST-LT's (classifier only on cached features, 10 epochs, alpha 0.05,
beta 5.0, 100 Sinkhorn iterations), so it searches the offline image space.
"""

from __future__ import annotations

from .offline import RANGES, best, space

__all__ = ["RANGES", "best", "space"]
