"""The epoch-checkpoint files themselves (trainables/resume.py), without training."""

from __future__ import annotations

import torch

from trainables.resume import DirStore, Stage1Checkpoints


def _ckpts(path, key="k1", log=None, **kw):
    return Stage1Checkpoints(
        DirStore(path), key, log=(log.append if log is not None else print), **kw
    )


def test_the_last_two_are_kept_and_no_temporary_file_is_left(tmp_path):
    c = _ckpts(tmp_path)
    for done in range(1, 5):
        c.save(done, {"w": torch.full((3,), float(done))})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "stage1-epoch-0003.ckpt",
        "stage1-epoch-0004.ckpt",
    ]
    done, state = c.latest()
    assert done == 4 and torch.equal(state["w"], torch.full((3,), 4.0))


def test_damaged_foreign_and_stray_files_are_skipped_in_one_line_each(tmp_path):
    log = []
    c = _ckpts(tmp_path, log=log, keep=3)
    c.save(1, {"w": torch.ones(2)})
    _ckpts(tmp_path, key="other", keep=3).save(2, {"w": torch.zeros(2)})
    c.save(3, {"w": torch.ones(2)})
    three = tmp_path / "stage1-epoch-0003.ckpt"
    blob = bytearray(three.read_bytes())
    blob[-5] ^= 0xFF  # one flipped byte, same length
    three.write_bytes(bytes(blob))
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert c.latest()[0] == 1
    assert log == [
        "stage 1: checkpoint stage1-epoch-0003.ckpt skipped: checksum mismatch (truncated or "
        "damaged)",
        "stage 1: checkpoint stage1-epoch-0002.ckpt skipped: written by another stage 1 (other "
        "key)",
    ]
    (tmp_path / "stage1-epoch-0001.ckpt").write_bytes(b"garbage")
    log.clear()
    assert c.latest() is None
    assert log[-1] == "stage 1: checkpoint stage1-epoch-0001.ckpt skipped: not a stage-1 checkpoint"


def test_every_n_epochs_and_the_last(tmp_path):
    c = _ckpts(tmp_path, every=3)
    assert [d for d in range(1, 8) if c.due(d, 7)] == [3, 6, 7]


def test_clear_and_an_empty_or_missing_folder(tmp_path):
    c = _ckpts(tmp_path / "absent")
    assert c.latest() is None
    c.save(1, {})
    c.clear()
    assert c.latest() is None and list((tmp_path / "absent").iterdir()) == []
