"""What runs inside one trial: data, models, the training loop, metrics, modality adapters.

Never imports Ray or MLflow; reports through a callback.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("ot-reweight")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+source"
