"""The commands resolve configs the same way: ``--preset`` goes into the builder from run,
sweep and reproduce alike, ``--smoke`` stays smoke-sized, ``--print-config`` touches nothing."""

from __future__ import annotations

import json

import pytest

from orchestrator import reproduce, run, sweep
from search_spaces import resolve
from trainables.config import to_dict


def _printed(capsys, main, argv):
    code = main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


@pytest.mark.parametrize("preset", ["paper", "released_code"])
def test_smoke_preset_is_the_same_config_from_run_sweep_and_reproduce(tmp_path, capsys, preset):
    import ray

    store = ["--storage", str(tmp_path / "runs")]
    common = ["--smoke", "--preset", preset, "--print-config"]
    got_run = _printed(capsys, run.main, ["image_mnist_lt", *common])
    got_sweep = _printed(capsys, sweep.main, ["image_mnist_lt", *common, *store])
    grid = _printed(
        capsys,
        reproduce.main,
        ["offline_image", *common, *store, "--methods", "ot_weight_vector", "--seeds", "1"],
    )
    assert [g["run"] for g in grid] == ["mnist_if100|ot_weight_vector|seed0"]
    got_reproduce = grid[0]

    for got in (got_run, got_sweep, got_reproduce):
        s2 = got["config"]["stage2"]
        # smoke sizes and the experiment's own step sizes survive the preset
        assert (s2["epochs"], s2["max_iter"], s2["lr"], s2["weight_lr"]) == (1, 20, 0.05, 5.0)
        assert s2["train"] == "classifier"
        assert got["config"]["stage1"]["epochs"] == 2
        assert got["config"]["preset"] == preset
    assert got_run == got_sweep
    assert got_run["config"] == got_reproduce["config"]
    assert got_run["stage1_key"] == got_reproduce["stage1_key"]
    # the preset's own fields are there too
    expected = to_dict(resolve("image_mnist_lt", smoke=True, preset=preset))
    assert json.loads(json.dumps(expected)) == got_run["config"]
    if preset == "released_code":
        assert got_run["config"]["stage2"]["meta_ce_coef"] == 10.0
        assert got_run["config"]["stage2"]["loss_weights"] == "raw"
    # --print-config starts nothing and writes nothing
    assert not ray.is_initialized()
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("key", ["preset", "name", "table", "description"])
def test_identity_keys_are_refused_in_set(capsys, key):
    code = run.main(["image_mnist_lt", "--smoke", "--print-config", "--set", f"{key}=x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {key} names the run")


def test_print_config_of_a_sweep_honours_seed_and_overrides(tmp_path, capsys):
    got = _printed(
        capsys,
        sweep.main,
        [
            "image_mnist_lt", "--smoke", "--seed", "3", "--set", "stage2.eps=0.05",
            "--storage", str(tmp_path), "--print-config",
        ],
    )  # fmt: skip
    assert got["config"]["seed"] == 3 and got["config"]["stage2"]["eps"] == 0.05
    from orchestrator.stages import stage1_hash

    cfg = resolve("image_mnist_lt", smoke=True, seed=3, overrides=["stage2.eps=0.05"])
    assert got["stage1_key"] == stage1_hash(cfg)
    assert got["stage1_key"] != stage1_hash(resolve("image_mnist_lt", smoke=True))
