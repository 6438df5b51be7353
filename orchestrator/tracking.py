"""MLflow: where runs go, and the runs a sweep writes (parent, trials, stage-1 builds).

Only the client API is used (explicit run ids, no global active run), so the same code works in
the driver, in Ray tasks and in trial actors, against a local SQLite file or a server.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import names

__all__ = [
    "TrackingError",
    "TrackingSpec",
    "all_runs_with_tags",
    "check_reachable",
    "client",
    "close_running",
    "default_tracking_uri",
    "ensure_experiment",
    "git_commit",
    "log_metrics",
    "log_params",
    "resolve_tracking_uri",
    "trial_runs",
]


# MLflow logs at INFO by default ("Creating initial MLflow database tables...", "Updating
# database tables") at the top of every command; its warnings still show, and a user who wants
# the rest sets MLFLOW_LOGGING_LEVEL=INFO. Set before mlflow's first import, which reads it;
# Ray's workers inherit it.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or written."""


@dataclass(frozen=True)
class TrackingSpec:
    """Everything a remote process needs to log into the sweep's experiment (picklable)."""

    uri: str
    experiment_id: str


def default_tracking_uri(run_dir: Path) -> str:
    # Absolute: Ray runs trials in their own working directories.
    return "sqlite:///" + str((run_dir / "mlflow.db").resolve())


def resolve_tracking_uri(explicit: str | None, storage_uri: str, local_root: Path | None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite file in the run storage
    (only when that storage is a local or shared path)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            path = Path(uri.removeprefix("sqlite:///")).resolve()
            uri = "sqlite:///" + str(path)
        return uri
    if local_root is None:
        raise TrackingError(
            f"storage {storage_uri} is not a local path: pass --tracking-uri (an MLflow server)"
        )
    return default_tracking_uri(local_root)


def client(uri: str):
    from mlflow.tracking import MlflowClient

    # the commands read single small artifacts (sampled.json, figures): no progress bars in
    # their output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return MlflowClient(tracking_uri=uri)


def check_reachable(uri: str, *, timeout_s: float = 5.0) -> None:
    """Fail fast, with one line, when the tracking store is unusable."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingError(f"cannot create the MLflow database {path}: {err}") from None
        return
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
                if resp.status >= 400:
                    raise TrackingError(f"MLflow server {uri} answered HTTP {resp.status}")
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason})") from None
        return
    try:
        client(uri).search_experiments(max_results=1)
    except Exception as err:  # any backend error means: unusable
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TrackingError(f"MLflow tracking URI {uri} is unusable: {first}") from None


def ensure_experiment(uri: str, name: str, artifact_location: str | None) -> str:
    """The experiment's id, created (or restored) as a model-training experiment."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        kind = {names.EXPERIMENT_KIND: names.TRAINING_EXPERIMENT}
        return c.create_experiment(name, artifact_location=artifact_location, tags=kind)
    if exp.lifecycle_stage == "deleted":
        c.restore_experiment(exp.experiment_id)
    if names.EXPERIMENT_KIND not in exp.tags:  # made before the kind was recorded
        c.set_experiment_tag(exp.experiment_id, names.EXPERIMENT_KIND, names.TRAINING_EXPERIMENT)
    return exp.experiment_id


def git_commit(repo: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def log_params(c, run_id: str, params: Mapping[str, object]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow's per-batch limit
        c.log_batch(run_id, params=items[i : i + 100])


def metric_items(metrics: Mapping[str, object], step: int) -> list:
    """MLflow metrics of ``metrics`` at ``step``, stamped now: finite scalars only (None and
    NaN are 'not measured', not zero)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [
        Metric(k, float(v), now, step)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ]


def log_metric_items(c, run_id: str, items: list, tags: Mapping[str, str] | None = None) -> None:
    """``items`` (:func:`metric_items`) and ``tags`` in as few batches as MLflow allows."""
    from mlflow.entities import RunTag

    run_tags = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    if not items and not run_tags:
        return
    for i in range(0, max(len(items), 1), 900):  # MLflow's limit: 1000 entities per batch
        c.log_batch(run_id, metrics=items[i : i + 900], tags=run_tags if i == 0 else [])


def log_metrics(c, run_id: str, metrics: Mapping[str, object], step: int) -> None:
    """Finite scalars only (None and NaN are 'not measured', not zero)."""
    log_metric_items(c, run_id, metric_items(metrics, step))


def runs_with_tags(c, experiment_id: str, tags: Mapping[str, str]) -> Iterable:
    filt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return c.search_runs([experiment_id], filter_string=filt, max_results=1000)


def all_runs_with_tags(c, experiment_id: str, tags: Mapping[str, str]) -> list:
    """Every run with these tags, page by page (a table can hold more than one page)."""
    filt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    out, token = [], None
    while True:
        page = c.search_runs(
            [experiment_id], filter_string=filt, max_results=1000, page_token=token
        )
        out.extend(page)
        token = page.token
        if not token:
            return out


def close_running(c, runs: Iterable, *, tag: str, status: str) -> None:
    """Close the runs still RUNNING (their process is gone) with ``status``, marked by ``tag``."""
    for run in runs:
        if run.info.status == "RUNNING":
            c.set_tag(run.info.run_id, tag, "true")
            c.set_terminated(run.info.run_id, status=status)


def stage1_build_run(c, experiment_id: str, key: str) -> str | None:
    """The latest finished run in the experiment that built stage 1 ``key`` (None when it was
    built elsewhere, e.g. by a reproduce run in another experiment)."""
    builds = runs_with_tags(c, experiment_id, {names.KIND: "stage1_build", names.STAGE1_HASH: key})
    done = [r for r in builds if r.info.status == "FINISHED"]
    return max(done, key=lambda r: r.info.start_time or 0).info.run_id if done else None


def run_link(experiment_id: str, run_id: str, text: str) -> str:
    """A Markdown link to a run that the MLflow UI follows (in a run's description)."""
    return f"[{text}](#/experiments/{experiment_id}/runs/{run_id})"


def trial_runs(c, experiment_id: str, parent_run_id: str, trial_id: str) -> list:
    """Every MLflow run (attempt) of one Tune trial of one sweep."""
    tags = {names.PARENT: parent_run_id, "ray.trial_id": trial_id}
    return list(runs_with_tags(c, experiment_id, tags))
