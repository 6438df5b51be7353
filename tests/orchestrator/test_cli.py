"""The commands resolve configs the same way: ``--preset`` goes into the builder from run,
sweep and reproduce alike, ``--smoke`` stays smoke-sized, ``--print-config`` touches nothing
and shows the fields the experiment reads (``--print-full-config``: every field)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import reproduce, run, sweep
from search_spaces import resolve
from trainables.config import Stage0Config, Stage2Config, flatten, to_dict


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
    # the OT row comes with its control (the same stage 2, weight learning off)
    assert [g["run"] for g in grid] == [
        "mnist_if100|ot_weight_vector|seed0",
        "mnist_if100|ot_weight_vector+no_ot|seed0",
    ]
    got_reproduce = grid[0]
    control = grid[1]["config"]
    assert control["stage2"]["learn_weights"] is False
    assert {**control["stage2"], "learn_weights": True} == got_reproduce["config"]["stage2"]
    assert grid[1]["stage1_key"] == got_reproduce["stage1_key"]

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
    # the preset's own fields are there too: all of them with --print-full-config
    expected = to_dict(resolve("image_mnist_lt", smoke=True, preset=preset))
    full = _printed(capsys, run.main, ["image_mnist_lt", *common[:-1], "--print-full-config"])
    assert json.loads(json.dumps(expected)) == full["config"]
    assert full["stage1_key"] == got_run["stage1_key"]
    for section, shown in got_run["config"].items():
        if isinstance(shown, dict):
            assert shown == {k: full["config"][section][k] for k in shown}
    if preset == "released_code":
        assert got_run["config"]["stage2"]["meta_ce_coef"] == 10.0
        assert got_run["config"]["stage2"]["loss_weights"] == "raw"
    # --print-config starts nothing and writes nothing
    assert not ray.is_initialized()
    assert not (tmp_path / "runs").exists()


def _sections(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_print_config_shows_what_the_experiment_reads_and_says_what_it_left_out(capsys):
    assert run.main(["image_mnist_lt", "--smoke", "--print-config"]) == 0
    out = capsys.readouterr()
    got = json.loads(out.out)["config"]
    assert "stage0" not in got  # images have no stage 0
    assert not {"image_size", "max_length", "num_points", "root"} & set(got["data"])
    assert {"eps", "max_iter", "tol", "feature_weight"} <= set(got["stage2"])
    assert "test_per_class" in got["data"] and "focal_gamma" not in got["stage1"]
    shown = sum(len(v) if isinstance(v, dict) else 1 for v in got.values())
    left = len(flatten(resolve("image_mnist_lt", smoke=True))) - shown
    assert out.err.strip().splitlines()[-1] == (
        f"{left} fields the experiment does not read left out; "
        "--print-full-config prints every field"
    )
    assert run.main(["text_tweets", "--smoke", "--print-config"]) == 0
    text = json.loads(capsys.readouterr().out)["config"]
    assert set(text["stage0"]) == _sections(Stage0Config)  # stage 0 runs (one epoch)
    assert {"max_length", "minority", "majority"} <= set(text["data"])
    assert {"encoder", "fcn_hidden"} <= set(text["model"])
    assert not {"image_size", "num_points", "augment"} & set(text["data"])


def test_print_full_config_prints_every_field_from_every_command(tmp_path, capsys):
    full = ["--smoke", "--print-full-config"]
    expected = json.loads(json.dumps(to_dict(resolve("image_mnist_lt", smoke=True))))
    for main, argv in (
        (run.main, ["image_mnist_lt", *full]),
        (sweep.main, ["image_mnist_lt", *full, "--storage", str(tmp_path)]),
    ):
        assert main(argv) == 0
        out = capsys.readouterr()
        assert json.loads(out.out)["config"] == expected
        assert "left out" not in out.err
    argv = ["offline_image", *full, "--methods", "ce", "--seeds", "1", "--storage", str(tmp_path)]
    assert reproduce.main(argv) == 0
    (ce,) = json.loads(capsys.readouterr().out)
    assert set(ce["config"]["stage2"]) == _sections(Stage2Config)
    assert reproduce.main([*argv[:1], "--smoke", "--print-config", *argv[3:]]) == 0
    out = capsys.readouterr()
    (ce,) = json.loads(out.out)
    assert set(ce["config"]["stage2"]) == {"method", "train"}  # CE alone: no OT stage
    assert "fields the experiment does not read left out" in out.err.strip().splitlines()[-1]
    assert not (tmp_path / "mlflow.db").exists()


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
    from orchestrator.stage_cache import stage1_hash

    cfg = resolve("image_mnist_lt", smoke=True, seed=3, overrides=["stage2.eps=0.05"])
    assert got["stage1_key"] == stage1_hash(cfg)
    assert got["stage1_key"] != stage1_hash(resolve("image_mnist_lt", smoke=True))


def test_reproduce_first_seed_shifts_the_seeds_of_every_cell(tmp_path, capsys):
    argv = ["offline_image", "--smoke", "--methods", "ce", "--seeds", "2", "--print-config"]
    got = _printed(capsys, reproduce.main, [*argv, "--first-seed", "5"])
    assert [(g["run"].rsplit("|", 1)[1], g["config"]["seed"]) for g in got] == [
        ("seed5", 5),
        ("seed6", 6),
    ]
    plain = _printed(capsys, reproduce.main, argv)
    assert [g["config"]["seed"] for g in plain] == [0, 1]
    assert got[1]["stage1_key"] != plain[1]["stage1_key"]  # seed 6's own stage 1


def _parsers():
    from orchestrator import report, ui

    return {m.__name__: m._parser() for m in (run, sweep, reproduce, report, ui)}


def test_every_option_of_every_command_says_what_it_does():
    parsers = _parsers()
    assert len(parsers) == 5
    for name, p in parsers.items():
        for action in p._actions:
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize(
    "main, argv, message",
    [
        (
            run.main,
            ["image_mnist"],
            "unknown experiment 'image_mnist'; did you mean 'image_mnist_lt'?",
        ),
        (sweep.main, ["text_tweet"], "did you mean 'text_tweets'?"),
        (reproduce.main, ["tabel1"], "unknown table 'tabel1'; did you mean 'table1'?"),
        (reproduce.main, ["offline_image", "--seeds", "0"], "--seeds must be >= 1, got 0"),
        (reproduce.main, ["offline_image", "--first-seed", "-1"], "--first-seed must be >= 0"),
        (run.main, ["image_mnist_lt", "--bogus"], "unrecognized arguments: --bogus"),
        (
            run.main,
            ["image_mnist_lt", "--print-config", "--print-full-config"],
            "argument --print-full-config: not allowed with argument --print-config",
        ),
        (
            sweep.main,
            ["image_mnist_lt", "--trails", "32"],
            "unrecognized arguments: --trails 32; did you mean --trials?",
        ),
        (
            reproduce.main,
            ["offline_image", "--dryrun"],
            "unrecognized arguments: --dryrun; did you mean --dry-run?",
        ),
        # what the run itself refuses, --print-config refuses too (it printed the config)
        (
            run.main,
            ["image_mnist_lt", "--set", "stage2.eps=-1", "--print-config"],
            "bad configuration: eps must be > 0",
        ),
        (
            sweep.main,
            ["image_mnist_lt", "--set", "stage2.eps=-1", "--print-config"],
            "bad configuration: eps must be > 0",
        ),
    ],
)
def test_a_typo_is_one_line_with_a_suggestion(capsys, main, argv, message):
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_experiments_are_created_as_training_experiments(tmp_path):
    from orchestrator import names, tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = tracking.ensure_experiment(uri, "image_mnist_lt", None)
    c = tracking.client(uri)
    assert c.get_experiment(exp_id).tags[names.EXPERIMENT_KIND] == "custom_model_development"
    # an experiment made before the kind was recorded gets it when a command next opens it
    old = c.create_experiment("older")
    assert names.EXPERIMENT_KIND not in c.get_experiment(old).tags
    assert tracking.ensure_experiment(uri, "older", None) == old
    assert c.get_experiment(old).tags[names.EXPERIMENT_KIND] == "custom_model_development"


def test_the_closing_hint_opens_the_store_the_command_used(tmp_path, monkeypatch):
    from orchestrator import cli, tracking
    from orchestrator.storage import Storage

    monkeypatch.chdir(tmp_path)
    ui = cli.command("orchestrator.ui")
    default = Storage("runs")
    root = tmp_path / "runs"
    assert cli.ui_hint(tracking.default_tracking_uri(root), default, root) == ui
    other = Storage(str(tmp_path / "elsewhere"))
    local = tmp_path / "elsewhere"
    assert cli.ui_hint(tracking.default_tracking_uri(local), other, local) == (
        f"{ui} --storage {local}"
    )
    own = f"sqlite:///{tmp_path / 'mine.db'}"
    assert cli.ui_hint(own, other, local) == f"{ui} --tracking-uri {own}"
    server = "http://127.0.0.1:5001"
    assert "open http://127.0.0.1:5001 in a browser" in cli.ui_hint(server, other, local)


def test_a_printed_command_works_as_typed_without_the_venv_on_path(repo, monkeypatch):
    """The hints say ``.venv/bin/python -m ...`` (this interpreter, relative where it can be),
    not a bare ``python``, which outside an active venv is another Python without the
    project's packages."""
    import os
    import subprocess
    import sys

    from orchestrator import cli

    monkeypatch.chdir(repo)
    hint = cli.command("orchestrator.sweep --list")
    python = hint.split(" -m ")[0]
    assert not os.path.isabs(python) or not Path(sys.executable).is_relative_to(repo)
    assert Path(python).resolve() == Path(sys.executable).resolve()
    bare = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    bare["PATH"] = "/usr/bin:/bin"
    res = subprocess.run(hint, shell=True, cwd=repo, env=bare, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert res.returncode == 0 and "image_mnist_lt" in res.stdout, res.stderr[-2000:]


def test_an_unwritable_out_stops_run_before_training(tmp_path, capsys, monkeypatch):
    import trainables.trial

    def train(*a, **k):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(trainables.trial, "run_trial", train)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code = run.main(["image_mnist_lt", "--smoke", "--quiet", "--out", str(blocker / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: --out {blocker / 'out'}: cannot write there")


def test_report_points_at_the_smoke_runs_when_only_those_exist(tmp_path, capsys):
    from orchestrator import names, report, tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.ensure_experiment(uri, names.experiment_name("offline_image", True), None)
    capsys.readouterr()  # MLflow's own lines about creating the store
    code = report.main(["offline_image", "--storage", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "no runs of offline_image" in err[0] and "smoke runs exist" in err[0]
    assert err[0].endswith("report them with --smoke")


@pytest.mark.parametrize("command", ["sweep", "reproduce"])
def test_missing_image_data_stops_before_ray_or_a_run(tmp_path, capsys, command):
    import ray

    missing = tmp_path / "nowhere.npz"
    store = ["--storage", str(tmp_path / "runs")]
    sets = ["--set", f"data.root={missing}"]
    if command == "sweep":
        code = sweep.main(["image_cifar10_lt", "--smoke", *store, *sets])
    else:
        code = reproduce.main(["table1", "--smoke", "--columns", "cifar10_if200", *store, *sets])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: CIFAR-10 (JPEG q75 copy) archive not found at {missing}")
    assert "--set data.root=PATH" in err[0]
    assert not ray.is_initialized() and not (tmp_path / "runs" / "mlflow.db").exists()


def test_tune_interrupted_reads_whether_tune_put_back_the_sigint_handler(monkeypatch):
    """Tune replaces the SIGINT handler for a fit and puts the old one back only when a stop
    signal ended it: the old one back means interrupted (in the main thread, with Tune's
    handler not disabled)."""
    import signal
    import threading

    from orchestrator.cli import tune_interrupted

    before = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, lambda sig, frame: None)  # a fit's handler, left in place
        assert not tune_interrupted(before)
        signal.signal(signal.SIGINT, before)  # put back: the fit was stopped
        assert tune_interrupted(before)
        monkeypatch.setenv("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Tune never replaced it
        assert not tune_interrupted(before)
        monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER")
        seen = []
        worker = threading.Thread(target=lambda: seen.append(tune_interrupted(before)))
        worker.start()
        worker.join()
        assert seen == [False]  # a fit outside the main thread installs no handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_fit_reports_an_interrupt_and_leaves_out_only_tunes_restore_hint(caplog):
    """Tune ends an interrupted fit with "Resume experiment with: Tuner.restore(...)", which is
    not how our commands resume: ``cli.fit`` drops that line (only during the fit) and says
    whether the fit was interrupted."""
    import logging
    import signal

    from orchestrator.cli import fit

    tune_log = logging.getLogger("ray.tune.tune")
    hint = "Experiment has been interrupted, but the most recent state was saved.\nResume ..."

    class _Tuner:
        def __init__(self, interrupt: bool) -> None:
            self.interrupt = interrupt

        def fit(self):
            before = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, lambda sig, frame: None)  # Tune's handler
            tune_log.warning("Total run time: 1.00 seconds")
            if self.interrupt:
                tune_log.warning(hint)
                signal.signal(signal.SIGINT, before)  # put back on a stop signal only
            return "results"

    before = signal.getsignal(signal.SIGINT)
    try:
        with caplog.at_level(logging.WARNING, logger="ray.tune.tune"):
            assert fit(_Tuner(True)) == ("results", True)
            signal.signal(signal.SIGINT, before)
            assert fit(_Tuner(False)) == ("results", False)
            signal.signal(signal.SIGINT, before)
            messages = [r.getMessage() for r in caplog.records]
            assert messages == ["Total run time: 1.00 seconds"] * 2
            tune_log.warning(hint)  # the filter is gone after the fit
            assert caplog.records[-1].getMessage() == hint
    finally:
        signal.signal(signal.SIGINT, before)


def test_mlflow_opens_a_new_store_without_its_info_lines(tmp_path, repo):
    """A command's first lines are its own: MLflow's INFO lines on creating a store's tables
    ("Creating initial MLflow database tables...") stay out unless MLFLOW_LOGGING_LEVEL asks."""
    import os
    import subprocess
    import sys

    code = (
        "from orchestrator import tracking; import sys; "
        "tracking.ensure_experiment(sys.argv[1], 'x', None)"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_LOGGING_LEVEL"}
    got = []
    for level in ({}, {"MLFLOW_LOGGING_LEVEL": "INFO"}):
        uri = f"sqlite:///{tmp_path / f'{len(got)}.db'}"
        res = subprocess.run([sys.executable, "-c", code, uri], cwd=repo, capture_output=True,
                             text=True, env={**env, **level}, timeout=120)  # fmt: skip
        assert res.returncode == 0, res.stderr
        got.append(res.stdout + res.stderr)
    assert "Creating initial MLflow database tables" not in got[0]
    assert "Creating initial MLflow database tables" in got[1]  # the test sees the line


def test_a_command_exits_with_its_status_after_the_atexit_handlers(repo):
    """exit_with freezes the objects before leaving (the collector's passes at exit cost
    seconds), but skips nothing: Ray's shutdown is an atexit handler."""
    code = (
        "import atexit; atexit.register(lambda: print('handler ran', flush=True)); "
        "from orchestrator import cli; cli.exit_with(3)"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert res.returncode == 3, res.stderr
    assert res.stdout == "handler ran\n"
