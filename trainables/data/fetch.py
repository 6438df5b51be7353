"""Fetching a missing source the way its own library does, or refusing in one line offline.

- **Online by default.** A source that is not on disk is fetched on first use through its own
  library into that library's usual place: SST-2 / SST-5 through Hugging Face ``datasets`` and
  encoders through the hub (both into the Hugging Face cache, ``HF_HOME``; ``HF_ENDPOINT``
  points them at a mirror), CIFAR through torchvision and ModelNet10 through torch-geometric
  (both under ``data.root``, default ``data/``). ``OT_DATA_MIRROR=http://host[:port]`` replaces
  the scheme and host of torchvision's and torch-geometric's URLs (the path is kept), for a
  mirror or a proxy cache.
- **Offline on request.** ``--offline`` (it sets ``HF_HUB_OFFLINE=1``), ``HF_HUB_OFFLINE=1`` or
  ``HF_DATASETS_OFFLINE=1``: nothing is fetched; a missing source is one line naming what to
  fetch and where it goes. A host that cannot be reached (no DNS, no route, refused) is found
  by one TCP connection with a short timeout before any library is asked, so no fetch hangs.
- **Nothing half-fetched is kept.** Downloads and extraction happen in a temporary folder
  beside the target (``.<name>.partial-*``), under a file lock so concurrent trials on one node
  fetch once; only a verified, complete tree is renamed into place. A failure removes the
  temporary folder; the next run fetches again.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "HUB_DEFAULT",
    "MIRROR_VAR",
    "OFFLINE_VARS",
    "first_line",
    "go_offline",
    "hub_endpoint",
    "is_offline",
    "mirrored",
    "staged",
    "unreachable",
]

MIRROR_VAR = "OT_DATA_MIRROR"
# Every switch the libraries read; --offline sets them all before any of them is imported.
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
HUB_DEFAULT = "https://huggingface.co"
# --cache-in-storage: where datasets fetched by URL go (data.root's default), and the libraries'
# own cache settings (Hugging Face hub and datasets; torch.hub's weights)
DATA_HOME_VAR = "OT_DATA_HOME"
CACHE_VARS = (DATA_HOME_VAR, "HF_HOME", "TORCH_HOME")
CHECKOUT_DATA = Path(__file__).resolve().parents[2] / "data"
CONNECT_TIMEOUT_S = 5.0


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is set (``--offline`` sets both)."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(
        os.environ.get("HF_DATASETS_OFFLINE")
    )


def go_offline() -> None:
    """Turn every library's offline switch on for this process and the workers it starts."""
    for var in OFFLINE_VARS:
        os.environ[var] = "1"
    # A library imported before this call read its switch already: tell it too.
    import sys

    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        hub.HF_HUB_OFFLINE = True
    ds = sys.modules.get("datasets.config")
    if ds is not None:
        ds.HF_HUB_OFFLINE = True
        ds.HF_DATASETS_OFFLINE = True


def use_cache_dir(root: str | Path) -> Path:
    """Everything fetched goes under ``root``: datasets fetched by URL in ``root/data`` (the
    default of ``data.root``), the Hugging Face hub and ``datasets`` caches in
    ``root/huggingface``, torch.hub's weights in ``root/torch``; for this process and the workers
    it starts. Called before the Hugging Face libraries are imported (they read their cache
    paths once)."""
    import sys

    root = Path(root).expanduser().resolve()
    subs = ("data", "huggingface", "torch")
    paths = {v: str(root / sub) for v, sub in zip(CACHE_VARS, subs, strict=True)}
    if all(os.environ.get(v) == p for v, p in paths.items()):
        return root  # already in place (a second call)
    loaded = [m for m in ("huggingface_hub", "datasets") if m in sys.modules]
    if loaded:
        raise RuntimeError(f"use_cache_dir after {', '.join(loaded)} was imported")
    os.environ.update(paths)
    return root


def data_home(default: Path = CHECKOUT_DATA) -> Path:
    """Where a dataset fetched by URL goes when ``data.root`` is unset: ``default`` (the
    checkout's ``data/``), or ``<root>/data`` under :func:`use_cache_dir`."""
    home = os.environ.get(DATA_HOME_VAR)
    return Path(home) if home else default


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or HUB_DEFAULT).rstrip("/")


def mirrored(url: str) -> str:
    """``url`` with its scheme and host replaced by ``OT_DATA_MIRROR``'s, when that is set."""
    mirror = (os.environ.get(MIRROR_VAR) or "").strip()
    if not mirror:
        return url
    m = urllib.parse.urlsplit(mirror)
    if not m.scheme or not m.netloc:
        raise ValueError(f"{MIRROR_VAR}={mirror!r} is not a URL like http://host:port")
    u = urllib.parse.urlsplit(url)
    path = m.path.rstrip("/") + u.path
    return urllib.parse.urlunsplit((m.scheme, m.netloc, path, u.query, u.fragment))


def unreachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why ``url``'s host cannot be reached (one TCP connection), or None when it can."""
    u = urllib.parse.urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname or "", port), timeout=timeout):
            return None
    except OSError as err:
        return f"cannot reach {u.hostname}:{port}: {err.strerror or err}"


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextmanager
def staged(target: Path) -> Iterator[Path]:
    """A fresh temporary folder beside ``target``, held under a lock on ``target``'s parent;
    removed whatever happens. The caller moves the finished result into place inside the
    ``with`` block (:func:`os.replace` on one file system)."""
    from filelock import FileLock

    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(parent / f".{target.name}.lock")):
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=parent))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
