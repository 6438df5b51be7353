"""Stage-2 search space for the offline text table (``offline_text``: ``text_tweets``).

Stage 2 (the offline analogue of Table 5) trains the FCN with the OT weight net on cached
MiniLM features: alpha is the FCN's step
size and beta the weight net's. Appendix C (the paper's text settings) is not in our copy, so
``best()`` holds the experiment's own values; lambda 0.1 and 200 iterations are the paper's.
"""

from __future__ import annotations

from .sst import RANGES, best, space

# The same space and settings as Table 5 (sst.py): the offline runs test what the SST runs use.
__all__ = ["RANGES", "best", "space"]
