"""The stage-1 cache key follows the code stage 1 runs and the data's identity, not its path."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from search_spaces import resolve
from trainables.fingerprint import code_fingerprint, module_closure

PACKAGE = Path(__file__).resolve().parents[2] / "trainables"
ENTRY = ("trainables.trial", "trainables.distributed")


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    shutil.copytree(PACKAGE, root / "trainables", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_a_change_to_a_stage1_source_changes_the_fingerprint(tmp_path):
    root = _copy(tmp_path)
    before = code_fingerprint(*ENTRY, root=root)
    assert before == code_fingerprint(*ENTRY)  # a copy of the same code: the same print
    losses = root / "trainables" / "losses.py"  # reached through trial -> loop -> losses
    losses.write_text(losses.read_text() + "\n# a fix to a loss\n")
    assert code_fingerprint(*ENTRY, root=root) == before  # this process keeps its code's print
    fresh = tmp_path / "fresh"  # what another process (a new root here) sees
    shutil.copytree(root, fresh)
    assert code_fingerprint(*ENTRY, root=fresh) != before


def test_an_import_inside_a_function_is_followed(tmp_path):
    closure = module_closure("trainables.trial", _copy(tmp_path))
    # trainables.data.modelnet is imported only inside functions of point_cloud / the data
    assert "trainables.data.modelnet" in closure
    assert "trainables.losses" in closure and "trainables.data" in closure


def test_code_outside_stage1_does_not_change_it(tmp_path):
    root = _copy(tmp_path)
    before = code_fingerprint(*ENTRY, root=root)
    assert "trainables.demo" not in module_closure("trainables.trial", root)
    demo = root / "trainables" / "demo.py"
    demo.write_text(demo.read_text() + "\n# the demo changed\n")
    fresh = tmp_path / "fresh"
    shutil.copytree(root, fresh)
    assert code_fingerprint(*ENTRY, root=fresh) == before


def test_the_data_path_is_not_part_of_the_key():
    from orchestrator.stage_cache import stage1_hash

    cfg = resolve("image_cifar10_lt", smoke=True)
    elsewhere = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, root="/mnt/other/cifar", download=True)
    )
    assert stage1_hash(elsewhere) == stage1_hash(cfg)
    other_split = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, meta_per_class=3))
    assert stage1_hash(other_split) != stage1_hash(cfg)


def test_the_stage1_key_of_a_copy_of_the_package_follows_its_code(tmp_path):
    """The whole path (resolver -> stage1_hash) in a fresh interpreter on a copy of the
    package: the same code gives the same key, a changed stage-1 source another."""
    import os
    import subprocess
    import sys

    repo = PACKAGE.parent
    src = tmp_path / "copy"
    for pkg in ("trainables", "search_spaces", "orchestrator"):
        shutil.copytree(repo / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "import trainables; from orchestrator.stage_cache import stage1_hash; "
        "from search_spaces import resolve; "
        "print(trainables.__file__, stage1_hash(resolve('image_mnist_lt', smoke=True)))"
    )

    def key() -> tuple[str, str]:
        env = {**os.environ, "PYTHONPATH": str(src)}
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=src, env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        where, digest = out.stdout.split()
        return where, digest

    from orchestrator.stage_cache import stage1_hash

    where, before = key()
    assert where == str(src / "trainables" / "__init__.py")
    assert before == stage1_hash(resolve("image_mnist_lt", smoke=True))
    loop = src / "trainables" / "loop.py"
    loop.write_text(loop.read_text().replace("def lr_at(", "def lr_at(  ", 1))
    assert key()[1] != before
