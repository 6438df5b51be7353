"""The MLflow UI view a sweep's experiment opens with: the trials ranked by the selection metric.

MLflow keeps a shareable view of an experiment's runs page (sort order, columns, chart
sections) as an experiment tag ``mlflow.sharedViewState.<key>``, opened by the URL parameter
``viewStateShareKey=<key>``. Without it the page lists only the sweeps' parent runs (the trials
are folded under them), shows no metric column, and its chart view puts every metric group with
a ``/`` in its name (the summary groups) before the per-epoch curves. The view published here
lists the trials flat, best first by the validation selection metric, with the test number at
that epoch and the searched parameters as columns; its chart view opens on the selection (a
parallel-coordinates plot of the searched parameters against the selection metric), then the
per-epoch curves, then the trials' summaries: the validation-selected epoch's, the last
epoch's, and last those of the epoch selected on the test set. The experiment's other metrics
follow in MLflow's own sections. (MLflow appends a section for a metric group the view does not
name in the order it meets the groups, so the summaries' sections are named here, empty: MLflow
puts each group's charts into the section of its name.)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

from . import names

__all__ = ["VIEW_KEY", "VIEW_TAG", "publish", "trials_view", "view_url"]

VIEW_KEY = "ot-trials"
VIEW_TAG = "mlflow.sharedViewState." + VIEW_KEY

# Per-epoch curves every stage 2 logs (ot_loss only where the OT step runs; MLflow hides a
# chart with no data).
CURVES = ("val_balanced_acc", "test_balanced_acc", "train_loss", "ot_loss")


def _id(*parts: str) -> str:
    """A stable id: the same view is published byte for byte by every sweep."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "ot-reweight/" + "/".join(parts)))


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"


def _section(name: str) -> dict:
    return dict(
        uuid=_id("section", name),
        name=name,
        display=True,
        isReordered=False,
        deleted=False,
        isGenerated=False,
    )


def _chart(kind: str, section: dict, title: str, **fields) -> dict:
    return dict(
        uuid=_id("chart", section["name"], title),
        type=kind,
        isGenerated=False,
        deleted=False,
        metricSectionId=section["uuid"],
        displayName=title,
        **fields,
    )


def _line(section: dict, metric: str) -> dict:
    return _chart(
        "LINE",
        section,
        metric,
        metricKey=metric,
        selectedMetricKeys=[metric],
        xAxisKey="step",
        scaleType="linear",
        lineSmoothness=0,
    )


def trials_view(searched: Sequence[str]) -> dict:
    """The view's state, in the JSON MLflow's runs page reads from ``mlflow.sharedViewState.*``.

    ``searched``: the dotted config keys the sweep's space samples (its params)."""
    selection = _section("Selection (validation)")
    curves = _section("Per-epoch curves")
    charts = [
        _chart(
            "PARALLEL",
            selection,
            "searched settings",
            selectedParams=list(searched),
            selectedMetrics=[names.SELECT_METRIC],
            showAllRuns=False,
        ),
        _line(selection, names.SELECT_METRIC),
        _chart("BAR", selection, names.SELECTED_TEST, metricKey=names.SELECTED_TEST),
        *(_line(curves, m) for m in CURVES),
    ]
    summaries = [_section(names.summary_group(s).rstrip("/")) for s in names.SUMMARY_GROUPS]
    metrics = (names.SELECT_METRIC, names.SELECTED_TEST, names.SELECTED_EPOCH, names.TIME_ATTR)
    return {
        "searchFilter": f"tags.`{names.KIND}` = 'trial'",
        "orderByKey": _column("metrics", names.SELECT_METRIC),
        "orderByAsc": False,
        "selectedColumns": [_column("metrics", m) for m in metrics]
        + [_column("params", p) for p in searched],
        "compareRunCharts": charts,
        "compareRunSections": [selection, curves, *summaries],
        "isAccordionReordered": True,
    }


def publish(client, experiment_id: str, searched: Sequence[str]) -> None:
    """Store the view on the experiment (a later sweep with another space replaces it)."""
    client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(trials_view(searched)))


def view_url(base: str, experiment_id: str, charts: bool = False) -> str:
    """The address of the view on a UI at ``base`` (e.g. http://127.0.0.1:5000)."""
    mode = "&compareRunsMode=CHART" if charts else ""
    return (
        f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}{mode}"
    )
