"""Stage-2 search space for the point-cloud experiment (``modelnet10``: ModelNet10-LT).

Appendix D (the paper's point-cloud settings) is not in our copy; the paper says the point-cloud
runs follow the image protocol (a weight vector, the combined cost), so this table searches
Table 1's space and ``best()`` is the paper's image setting.
"""

from __future__ import annotations

from .cifar_lt import RANGES, best, space

__all__ = ["RANGES", "best", "space"]
