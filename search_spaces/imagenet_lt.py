"""Stage-2 search space for Table 4 (ImageNet-LT, ResNet-50).

Used by ``image_imagenet_lt`` (100 random prototypes per step). Ranges around the paper's
alpha 2e-5, beta 1e-3, lambda 0.1, 200 Sinkhorn iterations and 1:1 cost mixing.
"""

from __future__ import annotations

from .cifar_lt import RANGES, best, space

# The paper uses one stage-2 setting for every image table, so this table searches Table 1's
# space (cifar_lt.py); a range specific to this table goes here when one is needed.
__all__ = ["RANGES", "best", "space"]
