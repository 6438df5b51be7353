"""Stage-2 search space for Table 3 (Places-LT, ImageNet-pretrained ResNet-152).

Used by ``image_places_lt``. Ranges around the paper's alpha 2e-5, beta 1e-3, lambda 0.1,
200 Sinkhorn iterations and 1:1 cost mixing.
"""

from __future__ import annotations

from .cifar_lt import RANGES, best, space

# The paper uses one stage-2 setting for every image table, so this table searches Table 1's
# space (cifar_lt.py); a range specific to this table goes here when one is needed.
__all__ = ["RANGES", "best", "space"]
