"""What a cached result depends on besides its config: the source of the code that made it.

``code_fingerprint("trainables.trial")`` is a SHA-256 over the source of that module and of
every module of this package it imports, transitively (imports inside functions included, found
by reading the source, not by importing it), plus the ``__init__.py`` of each package on the way.
As ``joblib.Memory`` hashes a function's code, a change to any of those files changes the
fingerprint, and so the stage-1 cache key; a change elsewhere (a command, a benchmark, the
demo) does not.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

__all__ = ["code_fingerprint", "module_closure"]

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # holds trainables/


def _module_file(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path, module: str, package: str) -> set[str]:
    """Every module name of ``package`` that ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                parts = parts if is_pkg else parts[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.add(base)
            # ``from pkg import name``: name may be a submodule
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in found if n == package or n.startswith(package + ".")}


def module_closure(entry: str, root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    """``{module name: file}`` of ``entry`` and every module of its package it reaches."""
    package = entry.split(".")[0]
    out: dict[str, Path] = {}
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in out:
            continue
        path = _module_file(root, name)
        if path is None:  # ``from pkg import a_function``: not a module
            continue
        out[name] = path
        parents = name.split(".")
        todo.extend(".".join(parents[:i]) for i in range(1, len(parents)))
        todo.extend(_imports(path, name, package))
    return out


@functools.cache
def _fingerprint(entries: tuple[str, ...], root: Path) -> str:
    files: dict[str, Path] = {}
    for entry in entries:
        files.update(module_closure(entry, root))
    h = hashlib.sha256()
    for name, path in sorted(files.items()):
        h.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def code_fingerprint(*entries: str, root: Path | None = None) -> str:
    """SHA-256 over the source of the ``entries`` modules and their package-internal imports
    (see the module doc). ``root`` is the directory that holds the package (default: this
    installed package's). Computed once per process: a process runs the code it imported, so
    every key it computes names that code even if the files are edited while it runs."""
    return _fingerprint(tuple(sorted(entries)), Path(root or PACKAGE_ROOT).resolve())
