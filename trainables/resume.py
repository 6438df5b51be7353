"""Stage-1 epoch checkpoints: what lets an interrupted stage 1 continue bit for bit.

A checkpoint is one file per saved epoch, ``stage1-epoch-EEEE.ckpt``: a header line
``ot-reweight-stage1 <sha256 of the rest>`` then the ``torch.save`` bytes of ``{"key",
"epoch", "state"}``. The file is written whole under a temporary name, flushed to disk
(fsync) and renamed over its final name, so a reader sees a complete file or none; the
checksum catches what the rename cannot (a truncated copy, a disk error). The last ``keep``
are kept: when the newest is corrupt it is reported in one line and skipped, and the one
before it is used. A checkpoint of another stage 1 (another key) is never loaded.

Where the files live is the caller's choice, passed in as a :class:`CheckpointStore`
(:class:`DirStore` for a local directory; the orchestrator adapts its run storage).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

__all__ = ["CheckpointStore", "DirStore", "Stage1Checkpoints"]

_MAGIC = b"ot-reweight-stage1"
_NAME = re.compile(r"^stage1-epoch-(\d{4,})\.ckpt$")


class CheckpointStore(Protocol):
    """A flat directory of whole files; ``write`` replaces a file atomically."""

    def names(self) -> list[str]: ...

    def read(self, name: str) -> bytes: ...

    def write(self, name: str, data: bytes) -> None: ...

    def delete(self, name: str) -> None: ...


class DirStore:
    """A local directory (made on first write): temporary file, fsync, ``os.replace``, then an
    fsync of the directory so the rename itself survives a lost node."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def names(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.is_file())

    def read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def write(self, name: str, data: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / name)
        finally:
            tmp.unlink(missing_ok=True)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def delete(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Stage1Checkpoints:
    """The epoch checkpoints of one stage 1 (``key``: its cache key) in ``store``.

    ``every``: save after every ``every``-th epoch (and after the last); not part of the key,
    as it changes nothing stage 1 computes. ``log``: where the one-line reports go.
    """

    def __init__(
        self,
        store: CheckpointStore,
        key: str,
        *,
        every: int = 1,
        keep: int = 2,
        log: Callable[[str], None] = _stderr,
    ) -> None:
        if every < 1 or keep < 1:
            raise ValueError(f"checkpoint every={every} and keep={keep} must be >= 1")
        self.store, self.key, self.every, self.keep, self.log = store, key, every, keep, log

    def due(self, done: int, total: int) -> bool:
        """A checkpoint is written after ``done`` epochs of ``total``."""
        return done % self.every == 0 or done == total

    def _epochs(self) -> list[tuple[int, str]]:
        found = [(_NAME.match(n), n) for n in self.store.names()]
        return sorted(((int(m.group(1)), n) for m, n in found if m), reverse=True)

    def save(self, done: int, state: dict) -> None:
        """Store ``state`` as the checkpoint after ``done`` epochs; prune the older ones."""
        buf = io.BytesIO()
        torch.save({"key": self.key, "epoch": done, "state": state}, buf)
        payload = buf.getvalue()
        digest = hashlib.sha256(payload).hexdigest().encode()
        self.store.write(f"stage1-epoch-{done:04d}.ckpt", _MAGIC + b" " + digest + b"\n" + payload)
        for _, name in self._epochs()[self.keep :]:
            self.store.delete(name)

    def _decode(self, name: str) -> dict:
        """The checkpoint's content, or ValueError saying in a few words why it is unusable."""
        blob = self.store.read(name)
        head, sep, payload = blob.partition(b"\n")
        parts = head.split(b" ")
        if not sep or len(parts) != 2 or parts[0] != _MAGIC:
            raise ValueError("not a stage-1 checkpoint")
        if hashlib.sha256(payload).hexdigest().encode() != parts[1]:
            raise ValueError("checksum mismatch (truncated or damaged)")
        ckpt = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        if ckpt.get("key") != self.key:
            raise ValueError("written by another stage 1 (other key)")
        return ckpt

    def latest(self) -> tuple[int, dict] | None:
        """(epochs done, state) of the newest valid checkpoint; None when there is none.
        Every unusable one met on the way is reported in one line and skipped."""
        for epoch, name in self._epochs():
            try:
                ckpt = self._decode(name)
            except (OSError, ValueError, RuntimeError) as err:
                self.log(f"stage 1: checkpoint {name} skipped: {err}")
                continue
            return epoch, ckpt["state"]
        return None

    def clear(self) -> None:
        """Delete every checkpoint (the stage 1 they continue is complete)."""
        for _, name in self._epochs():
            self.store.delete(name)
