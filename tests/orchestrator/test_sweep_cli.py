"""The sweep command's quick paths: bad input fails fast with one line, --list."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest


@pytest.mark.parametrize(
    "args, message",
    [
        (["no_such_experiment"], "unknown experiment"),
        (["image_mnist_lt", "--smoke", "--set", "stage2.nope=1"], "unknown config key"),
        (["image_mnist_lt", "--smoke", "--set", "stage2.eps=abc"], "bad value"),
        (["image_mnist_lt", "--smoke", "--set", "stage2.eps"], "malformed override"),
        (
            ["image_mnist_lt", "--smoke", "--tracking-uri", "http://127.0.0.1:9"],
            "unreachable",
        ),
        (["image_mnist_lt", "--smoke", "--resume"], "no interrupted sweep"),
        (
            ["image_mnist_lt", "--smoke", "--population", "4", "--set", "stage2.train=all"],
            "--population 4: f1 trains in stage 2 (stage2.train=all): one setting per trial",
        ),
        (
            [
                "image_mnist_lt",
                "--smoke",
                "--population",
                "4",
                "--space",
                "meta_reweight",
                "--set",
                "stage1.reweight=mwn",
            ],
            "--population 4: the space searches stage1.meta_lr, which members cannot set",
        ),
        (
            ["image_mnist_lt", "--smoke", "--space", "meta_reweight"],
            "--space meta_reweight searches stage1.meta_lr, stage1.meta_batch, which this "
            "configuration does not read: L2RW / Meta-Weight-Net (with --set "
            "stage1.reweight=mwn or l2rw)",
        ),
        (["text_sst5", "--smoke"], "SST-5 not found"),
        (["text_sst2", "--smoke", "--set", "data.root=/nonexistent"], "SST-2.zip"),
        (
            ["pointcloud_modelnet10", "--smoke", "--set", "data.root=/nonexistent"],
            "ModelNet10 not found under /nonexistent/raw",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, in_process, args, message):
    import ray

    status, err = in_process("sweep", *args, "--storage", str(tmp_path))
    assert status == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert message in lines[-1]
    assert "Traceback" not in err
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    "module, args, message",
    [
        ("sweep", ["image_mnist_lt", "--smoke", "--set", "stage2.eps"], "malformed override"),
        ("reproduce", ["offline_image", "--set", "stage2.nope=1"], "unknown config key"),
    ],
)
def test_bad_input_exits_2_in_one_line_as_typed(tmp_path, command, module, args, message):
    """The same failures in a fresh interpreter, as a user types them: status 2, one line."""
    res = command(module, *args, "--storage", str(tmp_path), timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], lines


@pytest.mark.parametrize(
    "sets, message",
    [
        (["stage1.amp=fp16"], "bad value for stage1.amp: 'fp16'; choose from none, bf16"),
        (
            ["stage1.reweight=bogus"],
            "bad value for stage1.reweight: 'bogus'; choose from none, l2rw, mwn, metasaug",
        ),
        (["stage1.loss=hinge"], "bad value for stage1.loss: 'hinge'; choose from ce, focal"),
        (["stage2.impl=fast"], "bad value for stage2.impl: 'fast'; choose from auto, reference"),
        (["stage2.weights=matrix"], "bad value for stage2.weights: 'matrix'; choose from vector"),
        (
            ["stage2.meta_distribution=median"],
            "bad value for stage2.meta_distribution: 'median'; choose from prototype, whole",
        ),
        # a combination (each choice valid alone) is refused by the pre-flight check
        (
            ["stage1.reweight=mwn", "stage1.loss=focal"],
            "bad configuration: stage1.reweight (l2rw / mwn) runs single-worker with",
        ),
        (["stage2.eps=-1"], "bad configuration: eps must be > 0"),
        # a loss parameter out of range: refused here, not in stage 1's Ray task
        (
            ["stage1.loss=focal", "stage1.focal_gamma=-1"],
            "bad configuration: stage1.focal_gamma must be >= 0, got -1.0",
        ),
        (
            ["stage1.loss=cb_ce", "stage1.cb_beta=1"],
            "bad configuration: stage1.cb_beta must be in [0, 1), got 1.0",
        ),
    ],
)
def test_bad_choices_stop_the_sweep_before_ray_starts(tmp_path, capsys, sets, message):
    import ray

    from orchestrator.sweep import main

    args = [x for s in sets for x in ("--set", s)]
    code = main(["image_mnist_lt", "--smoke", "--storage", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not ray.is_initialized()
    assert not (tmp_path / "mlflow.db").exists()


def test_list_names_every_experiment(repo):
    from search_spaces import EXPERIMENTS

    res = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "--list"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0
    lines = res.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == list(EXPERIMENTS)
    assert any("table1" in ln for ln in lines)
    # each experiment's own search space, the name --space takes
    spaces = {ln.split()[0]: ln.split()[2] for ln in lines}
    assert spaces["image_cifar10_lt"] == spaces["pointcloud_modelnet10"] == "paper"
    assert spaces["image_mnist_lt"] == "offline" and spaces["text_tweets"] == "text"


@pytest.mark.parametrize(
    "args, message",
    [
        (["no_table"], "unknown table"),
        (["offline_image", "--methods", "metasaug_focal"], "has no method metasaug_focal"),
        (["offline_image", "--columns", "nope"], "has no column nope"),
        (["offline_image", "--set", "stage2.nope=1"], "unknown config key"),
        (["table5"], "SST-2"),
        (["offline_image", "--tuned", "--dry-run"], "--tuned: no finished sweep matches"),
        (
            ["offline_image", "--set", "stage1.compile=jit"],
            "bad value for stage1.compile: 'jit'; choose from none, default, reduce-overhead",
        ),
    ],
)
def test_reproduce_bad_input_is_one_line_exit_2(tmp_path, in_process, args, message):
    status, err = in_process("reproduce", *args, "--storage", str(tmp_path))
    assert status == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert message in lines[-1] and "Traceback" not in err
    assert not (tmp_path / "mlflow.db").exists()


def test_reproduce_dry_run_needs_no_data(tmp_path, repo):
    cmd = [sys.executable, "-m", "orchestrator.reproduce", "table5", "--dry-run"]
    res = subprocess.run(
        [*cmd, "--storage", str(tmp_path)], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    # 7 columns x 8 rows (7 + the OT row's +no_ot control) x 10 seeds
    assert "cells: 56, runs: 560 (560 to run, 0 finished before); 14 +la cells" in res.stdout
    assert "wall clock" not in res.stdout  # nothing of it is measured: no wall clock to give
    assert "warning: SST-2" in res.stderr and not (tmp_path / "mlflow.db").exists()


def test_the_ranking_breaks_equal_scores_by_the_setting_not_by_the_random_trial_id(tmp_path):
    """Tune's trial ids are random, so two runs of the same sweep give the same settings other
    ids: equal validation scores are ordered by the settings' params instead."""
    import mlflow

    from orchestrator import names
    from orchestrator.sweep_results import ranking as _ranking

    c = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = c.create_experiment("ranking")
    parent = c.create_run(exp).info.run_id
    # (trial id, stage2.lr, score): the ids sort against the params among the equal scores
    for tid, lr, score in [("ff01", "0.3", 80.0), ("aa02", "0.5", 80.0), ("cc03", "0.1", 82.0),
                           ("bb04", "0.2", 80.0), ("dd05", "0.9", 81.0)]:  # fmt: skip
        run = c.create_run(exp, tags={names.PARENT: parent, names.KIND: "trial",
                                      "ray.trial_id": tid})  # fmt: skip
        c.log_param(run.info.run_id, "stage2.lr", lr)
        c.log_metric(run.info.run_id, names.SELECT_METRIC, score)
        c.set_terminated(run.info.run_id)
    order = [r.data.tags["ray.trial_id"] for r in _ranking(c, exp, parent)]
    assert order == ["cc03", "dd05", "bb04", "ff01", "aa02"]


def test_trial_order_is_the_default_and_single_trials_compare_at_a_lag():
    from orchestrator.sweep import _parser
    from orchestrator.sweep_setup import rung_lag

    assert _parser().parse_args(["image_mnist_lt"]).order == "trial"
    assert _parser().parse_args(["image_mnist_lt", "--order", "arrival"]).order == "arrival"
    # populations: every earlier trial (Tune's ASHA run one trial after another)
    assert rung_lag(16, 2) == 1 and rung_lag(2, 8) == 1
    # single trials: twice the concurrency back
    assert rung_lag(1, 2) == 4 and rung_lag(1, 8) == 16


def _interrupted(storage, **args) -> None:
    rec = {"sweep_id": "sweep-1", "status": "running", "parent_run_id": "p",
           "args": {"trials": 4, "seed": 0, "overrides": ["stage2.eps=0.05"], "preset": None,
                    "smoke": True, "cpus_per_trial": 1.0, "gpus_per_trial": 0.0,
                    "max_failures": 2, "workers_per_trial": 0, "space": None,
                    "population": 2, "order": "trial", **args}}  # fmt: skip
    folder = storage / "image_mnist_lt" / "sweep-1"
    folder.mkdir(parents=True)
    (folder / "ot_sweep.json").write_text(json.dumps(rec))


@pytest.mark.parametrize(
    "line, message",
    [
        (["--trials", "5"], "--trials 5 differs from the interrupted sweep's 4"),
        (["--set", "stage2.eps=0.1"], "--set stage2.eps=0.1 differs from the interrupted "
         "sweep's stage2.eps=0.05"),
        (["--seed", "3"], "--seed 3 differs from the interrupted sweep's 0"),
        (["--population", "1"], "--population 1 differs from the interrupted sweep's 2"),
        (["--order", "arrival"], "--order arrival differs from the interrupted sweep's trial"),
    ],
)  # fmt: skip
def test_resume_refuses_a_command_line_value_that_differs_from_the_record(
    tmp_path, capsys, line, message
):
    import ray

    from orchestrator.sweep import main

    _interrupted(tmp_path)
    code = main(["image_mnist_lt", "--smoke", "--resume", "--storage", str(tmp_path), *line])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --resume: "), err
    assert message in err[0]
    assert not ray.is_initialized() and not (tmp_path / "mlflow.db").exists()


def test_resume_takes_the_record_where_the_line_repeats_it_or_says_nothing(tmp_path):
    from orchestrator.storage import Storage
    from orchestrator.sweep import _parser
    from orchestrator.sweep_record import given_options
    from orchestrator.sweep_record import resume_args as _resume

    _interrupted(tmp_path)
    for line in ([], ["--trials", "4", "--set", "stage2.eps=0.05", "--population", "2"]):
        argv = ["image_mnist_lt", "--resume", *line]
        args = _parser().parse_args(argv)
        args.given = given_options(_parser(), argv)
        assert _resume(Storage(str(tmp_path)), args)[0] == "sweep-1"
        assert (args.trials, args.overrides, args.smoke, args.population) == (
            4, ["stage2.eps=0.05"], True, 2,
        )  # fmt: skip


def test_a_set_on_a_searched_key_pins_it_and_pinning_all_leaves_one_setting(capsys):
    from orchestrator.sweep_setup import Search
    from search_spaces import SEARCH_SPACES, resolve

    offline = SEARCH_SPACES["offline"]

    sets = ["stage2.eps=0.05", "stage2.epochs=3", "stage2.max_iter=120"]
    cfg = resolve("image_mnist_lt", smoke=True, overrides=sets)
    search = Search.of(offline, cfg, sets)
    assert search.pinned == {"stage2.eps": 0.05, "stage2.max_iter": 120}  # epochs: not searched
    assert set(search.searched) == set(offline.best(cfg)) - {"stage2.eps", "stage2.max_iter"}
    search.announce()
    assert capsys.readouterr().out.splitlines() == [
        "stage2.eps fixed at 0.05: no longer searched",
        "stage2.max_iter fixed at 120: no longer searched",
    ]
    every = [f"{k}={v}" for k, v in offline.best(cfg).items()]
    everything = Search.of(offline, resolve("image_mnist_lt", overrides=every), every)
    assert everything.searched == [] and everything.first == {}
    everything.announce()
    assert capsys.readouterr().out.splitlines()[-1] == (
        "every searched key is fixed: one setting, run once"
    )


def test_a_default_sweep_says_what_stops_populations(capsys):
    """Without --population, a sweep that cannot train populations says why in one line (the
    searched key, or the stage 2), and one that can says nothing and fills the slots."""
    from orchestrator.sweep import _parser
    from orchestrator.sweep_setup import Search, population_size
    from search_spaces import SEARCH_SPACES, resolve

    cfg = resolve("image_mnist_lt", smoke=True)
    args = _parser().parse_args(["image_mnist_lt", "--trials", "32"])
    assert population_size(args, cfg, Search.of(SEARCH_SPACES["offline"], cfg, []), 2) == 16
    assert capsys.readouterr().out == ""
    mwn = resolve("image_mnist_lt", smoke=True, overrides=["stage1.reweight=mwn"])
    meta = Search.of(SEARCH_SPACES["meta_reweight"], mwn, [])
    assert population_size(args, mwn, meta, 2) == 1
    assert capsys.readouterr().out.splitlines() == [
        "one setting per trial (no populations): the space searches stage1.meta_lr, "
        "which members cannot set for themselves"
    ]
    f1 = resolve("image_mnist_lt", smoke=True, overrides=["stage2.train=all"])
    assert population_size(args, f1, Search.of(SEARCH_SPACES["offline"], f1, []), 2) == 1
    assert "f1 trains in stage 2" in capsys.readouterr().out


def test_a_searched_key_the_config_does_not_read_is_not_searched(capsys):
    """Under the released-code preset the cost mixing ignores stage2.feature_weight: the sweep
    holds it at the config's value and says so, instead of searching a dimension that changes
    nothing (the same space under the paper preset searches it)."""
    from orchestrator.sweep_setup import Search
    from search_spaces import SEARCH_SPACES, resolve
    from trainables.config import unused_fields

    offline = SEARCH_SPACES["offline"]
    cfg = resolve("image_mnist_lt", smoke=True, preset="released_code")
    assert "stage2.feature_weight" in unused_fields(cfg)
    search = Search.of(offline, cfg, [])
    assert search.unread == {"stage2.feature_weight": cfg.stage2.feature_weight}
    assert "stage2.feature_weight" not in search.searched and search.pinned == {}
    assert set(search.searched) == set(offline.best(cfg)) - {"stage2.feature_weight"}
    search.announce()
    assert capsys.readouterr().out.splitlines() == [
        "stage2.feature_weight is not read by this configuration: not searched"
    ]
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    trial = study.ask()
    constants = search.space()(trial)
    assert "stage2.feature_weight" not in trial.params  # the study never samples it
    assert constants == {"stage2.feature_weight": cfg.stage2.feature_weight}
    paper = Search.of(offline, resolve("image_mnist_lt", smoke=True), [])
    assert paper.unread == {} and "stage2.feature_weight" in paper.searched


@pytest.mark.parametrize(
    "module, args",
    [
        ("sweep", ["image_mnist"]),
        ("sweep", ["image_mnist_lt", "--set", "stage2.eps=abc"]),
        ("run", ["image_mnist"]),
        ("run", ["image_mnist_lt", "--set", "stage2.nope=1"]),
    ],
)
def test_a_bad_name_or_override_is_said_before_torch_ray_or_mlflow_load(repo, module, args):
    """A typo costs well under a second, not the seconds of importing the heavy libraries."""
    code = (
        f"import sys; from orchestrator import {module}; status = {module}.main({args!r}); "
        "print(status, *[m for m in ('torch', 'ray', 'mlflow') if m in sys.modules])"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert res.stdout.split() == ["2"], res.stdout + res.stderr
    assert res.stderr.startswith("error: "), res.stderr
