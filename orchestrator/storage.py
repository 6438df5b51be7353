"""Run storage: a local or shared path (NFS) or an object-store URI (``s3://``), via pyarrow.fs.

Ray Tune already speaks pyarrow filesystems, so the stage cache and the sweep records use the
same layer and work wherever Tune's ``storage_path`` works.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow.fs as pafs

__all__ = ["Storage", "StorageError"]


class StorageError(RuntimeError):
    """The run storage cannot be opened or written."""


class Storage:
    """A directory in some filesystem; every path argument is relative to it."""

    def __init__(self, uri: str) -> None:
        if "://" not in uri:
            uri = str(Path(uri).expanduser().resolve())
        self.uri = uri.rstrip("/")
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        except Exception as err:  # pyarrow raises several types for bad URIs
            raise StorageError(f"cannot open storage {uri!r}: {err}") from None
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def child_uri(self, *parts: str) -> str:
        return "/".join([self.uri, *parts])

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def makedirs(self, rel: str = "") -> None:
        try:
            self.fs.create_dir(self._path(rel), recursive=True)
        except OSError as err:
            raise StorageError(f"cannot create {self.child_uri(rel)}: {err}") from None

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self._path(rel)).type != pafs.FileType.NotFound

    def is_dir(self, rel: str) -> bool:
        return self.fs.get_file_info(self._path(rel)).type == pafs.FileType.Directory

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self._path(rel)) as f:
            return f.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Whole-file write that readers never see half done: a temporary name, then a rename
        (object stores publish a PUT atomically, so there the rename is skipped)."""
        parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
        self.makedirs(parent)
        if not self.local:
            with self.fs.open_output_stream(self._path(rel)) as f:
                f.write(data)
            return
        tmp = f"{rel}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(self._path(tmp)) as f:
            f.write(data)
        self.fs.move(self._path(tmp), self._path(rel))

    def delete_dir(self, rel: str) -> None:
        if self.is_dir(rel):
            self.fs.delete_dir(self._path(rel))

    def delete_file(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_file(self._path(rel))

    def list_files(self, rel: str) -> list[str]:
        if not self.is_dir(rel):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self._path(rel)))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)

    def list_dirs(self, rel: str) -> list[str]:
        if not self.is_dir(rel):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self._path(rel)))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)
