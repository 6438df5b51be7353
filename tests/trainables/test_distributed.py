"""Data-parallel stage 2 (two gloo workers) equals one worker on the same global batches."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from trainables.config import Stage2Config
from trainables.data.arrays import StageData
from trainables.distributed import DataParallel
from trainables.models import SplitNet
from trainables.stage2 import train_stage2

from ._synthetic import three_class_features


def _data() -> StageData:
    return three_class_features()


def _model() -> SplitNet:
    torch.manual_seed(1)
    return SplitNet(nn.Sequential(nn.Linear(8, 6), nn.Tanh()), nn.Linear(6, 3), 6)


def _cfg(train: str) -> Stage2Config:
    return Stage2Config(
        epochs=2, batch_size=8, train=train, lr=0.1, weight_lr=2.0, max_iter=30, meta_ce_coef=1.0
    )


def _run(train: str, parallel: DataParallel | None):
    torch.set_num_threads(1)
    model = _model()
    seen = []
    res = train_stage2(
        model,
        _data(),
        _cfg(train),
        generator=torch.Generator().manual_seed(5),
        parallel=parallel,
        callback=lambda s, e, m: seen.append(m.get("shard_samples")),
    )
    return model.state_dict(), res.sample_weights, seen


def _init(rank: int, world: int, init: str) -> None:
    import torch.distributed as dist

    # a rank that fails leaves the other one waiting at most this long (not gloo's 30 min)
    dist.init_process_group(
        "gloo", init_method=init, rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )


def _close(done: bool) -> None:
    """Both ranks meet before the group is torn down: a rank that tears it down while the
    other still talks to it can make gloo abort that one at exit (SIGABRT, seen once)."""
    import torch.distributed as dist

    try:
        if done:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _worker(rank: int, world: int, init: str, train: str, out: str) -> None:
    _init(rank, world, init)
    done = False
    try:
        state, weights, seen = _run(train, DataParallel(rank, world))
        payload = {"state": state, "weights": torch.tensor(weights), "seen": seen}
        torch.save(payload, f"{out}.{rank}")
        done = True
    finally:
        _close(done)


@pytest.mark.parametrize("train", ["classifier", "all"])
def test_two_workers_match_one(tmp_path, train):
    init = f"file://{tmp_path / 'rendezvous'}"
    out = str(tmp_path / "result")
    mp.spawn(_worker, args=(2, init, train, out), nprocs=2, join=True)
    single_state, single_w, _ = _run(train, None)
    results = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    n_train = 21
    for r, res in enumerate(results):
        # each worker trained on its own shard: 21 samples in batches of 8 -> 4+4+3 / 4+4+2 ...
        expected = sum(len(range(r, b, 2)) for b in (8, 8, 5))
        assert res["seen"] == [expected, expected]
        for k, v in single_state.items():
            torch.testing.assert_close(res["state"][k], v, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res["weights"], torch.tensor(single_w), rtol=1e-5, atol=1e-7)
    assert sum(res["seen"][0] for res in results) == n_train
    # and the run really moved the model (the comparison is not between two untouched copies)
    start = _model().state_dict()
    assert not torch.allclose(single_state["classifier.weight"], start["classifier.weight"])


def test_shards_partition_the_batch():
    parts = [DataParallel(r, 3).shard(10) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
    assert parts[1].tolist() == [1, 4, 7]


def _stage1(parallel: DataParallel | None):
    from trainables.config import Stage1Config
    from trainables.loop import train_stage1

    torch.set_num_threads(1)
    model = _model()
    cfg = Stage1Config(epochs=3, batch_size=8, lr=0.1, warmup_epochs=1, milestones=(2,))
    res = train_stage1(
        model, _data(), cfg, generator=torch.Generator().manual_seed(5), parallel=parallel
    )
    return model.state_dict(), res.last["val"]["balanced_acc"]


def _stage1_worker(rank: int, world: int, init: str, out: str) -> None:
    _init(rank, world, init)
    done = False
    try:
        state, acc = _stage1(DataParallel(rank, world))
        torch.save({"state": state, "acc": torch.tensor(acc)}, f"{out}.{rank}")
        done = True
    finally:
        _close(done)


def test_stage1_two_workers_match_one(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    out = str(tmp_path / "result")
    mp.spawn(_stage1_worker, args=(2, init, out), nprocs=2, join=True)
    single, acc = _stage1(None)
    for r in range(2):
        res = torch.load(f"{out}.{r}", weights_only=True)
        for k, v in single.items():
            torch.testing.assert_close(res["state"][k], v, rtol=1e-5, atol=1e-6)
        assert abs(float(res["acc"]) - acc) < 1e-4
    start = _model().state_dict()["classifier.weight"]
    assert not torch.allclose(single["classifier.weight"], start)
