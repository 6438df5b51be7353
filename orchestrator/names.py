"""Every name this project writes into MLflow: experiment names, run tags, metric names.

One module owns them so the writers (sweep, reproduce, the trial, the stage cache) and the
readers (report, figures, resume, ``--tuned``) cannot drift apart.
"""

from __future__ import annotations

__all__ = [
    "ALONE_TEST",
    "ALONE_VAL",
    "BEST_TEST",
    "BEST_VAL",
    "CONTROL_TEST",
    "CONTROL_VAL",
    "KIND",
    "PARENT",
    "SELECTED_EPOCH",
    "SELECTED_TEST",
    "SELECT_METRIC",
    "STAGE1_PREFIX",
    "SUMMARY_GROUPS",
    "TIME_ATTR",
    "experiment_name",
    "settings_key",
    "summary_group",
    "summary_metric",
]

# ---- tags
PARENT = "mlflow.parentRunId"  # MLflow's own: nests a run under its parent in the UI
GIT_COMMIT = "mlflow.source.git.commit"
# MLflow's own experiment tag: the experiment's kind, model training (without it MLflow 3's UI
# asks a user which kind an experiment is). The side of the UI a browser shows (GenAI or model
# training) does not follow it (mlflow#24498): orchestrator/ui_app.py sets the browser's.
EXPERIMENT_KIND = "mlflow.experimentKind"
TRAINING_EXPERIMENT = "custom_model_development"
KIND = "ot.kind"  # sweep | trial | stage1_build | reproduce
SWEEP_ID = "ot.sweep_id"
EXPERIMENT = "ot.experiment"
TABLE = "ot.table"
CELL = "ot.cell"
COLUMN = "ot.column"
METHOD = "ot.method"
PRESET = "ot.preset"
PRESET_ASKED = "ot.preset_asked"  # the preset, + "+sweep" when OT rows took a sweep's best
TUNED_FROM = "ot.tuned_from"
# reproduce --tune: the picked setting's validation balanced accuracy (%) in its search
TUNED_VAL = "ot.tuned_val"
SMOKE = "ot.smoke"
FIDELITY = "ot.fidelity"
SEED = "ot.seed"
SEARCH_SPACE = "ot.search_space"
STAGE1_HASH = "ot.stage1_hash"
STAGE1_RUN = "ot.stage1_run"  # the run that built the stage 1 a sweep and its trials use
BEST_TRIAL_RUN = "ot.best_trial_run"  # on a sweep's parent: its best trial's run
NOTE = "mlflow.note.content"  # MLflow's own: a run's description, rendered as Markdown
TRIGGERED_BY = "ot.triggered_by"
WORKERS = "ot.workers"
ATTEMPT = "ot.attempt"
RESUMED = "ot.resumed"
INTERRUPTED = "ot.interrupted"
SUPERSEDED = "ot.superseded"
STOPPED_EARLY = "ot.stopped_early"
DIVERGED = "ot.diverged"
# "pending": the selection's data is up, its PNGs not yet (the driver draws them if the trial's
# process ends first); "drawn": they match the data
FIGURES = "ot.figures"
ERROR = "ot.error"

# ---- metrics
# Validation only, never test: the best-so-far validation balanced accuracy of the trial, which
# is the model the trial selects. ASHA, Optuna and the summary all rank on it.
SELECT_METRIC = "selected_val_balanced_acc"
SELECTED_TEST = "selected_test_balanced_acc"
SELECTED_EPOCH = "selected_epoch"
TIME_ATTR = "stage2_epoch"
BEST_VAL = "best_selected_val_balanced_acc"  # on a sweep's parent run
BEST_TEST = "best_selected_test_balanced_acc"
# on a sweep's parent: the best setting's control (weight learning off), same seed
CONTROL_VAL = "control_selected_val_balanced_acc"
CONTROL_TEST = "control_selected_test_balanced_acc"
# on a sweep's parent, when the best setting was a population member: that setting re-run
# alone (a single trial, same seed), as what the setting gives outside its population
ALONE_VAL = "alone_selected_val_balanced_acc"
ALONE_TEST = "alone_selected_test_balanced_acc"
# A finished run's summary: "<stage prefix><group>/<split>_<metric>", e.g.
# "best_val_epoch/test_top1_error"; a baseline's stage-1 selections carry STAGE1_PREFIX.
STAGE1_PREFIX = "stage1_"
# A summary's group per selection (the summary's own names). MLflow's run page shows a run's
# metrics in sections named by what precedes the "/", in alphabetical order: these names put
# the validation-selected numbers first and those selected on the test set (as the released
# code reports) after the last epoch's.
SUMMARY_GROUPS = {
    "validation_selected": "best_val_epoch",
    "last_epoch": "last_epoch",
    "best_test_epoch": "test_selected_epoch",
}


def summary_group(selection: str, prefix: str = "") -> str:
    """The common start of one selection's summary numbers (``selection``: validation_selected
    | last_epoch | best_test_epoch), e.g. "stage1_last_epoch/" (:data:`SUMMARY_GROUPS`)."""
    return f"{prefix}{SUMMARY_GROUPS[selection]}/"


def summary_metric(selection: str, split: str, metric: str, prefix: str = "") -> str:
    """The name of one summary number (``split``: val | test; or ``split=""`` with
    ``metric="epoch"``): the group, then ``<split>_<metric>`` as the per-epoch names are."""
    return summary_group(selection, prefix) + (f"{split}_{metric}" if split else metric)


def experiment_name(table: str, smoke: bool) -> str:
    """The MLflow experiment of ``reproduce TABLE`` (``-smoke`` for the smoke variant)."""
    return f"reproduce-{table}" + ("-smoke" if smoke else "")


def settings_key(preset: str, tuned: bool, tune: int = 0) -> str:
    """What a run was asked for: the preset, with ``+sweep`` when OT rows took a sweep's best,
    or ``+tuneN`` when every row took the best of its own N-setting search."""
    return preset + ("+sweep" if tuned else "") + (f"+tune{tune}" if tune else "")
