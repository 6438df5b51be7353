"""The MLflow UI as a user sees it: a real headless Chromium renders the sweep's view.

``scripts/setup.sh`` installs Debian's ``chromium`` package where it can (root and apt); the
test needs that browser and says so when it is absent. No screenshot is compared: the rendered
page's text is read (``--dump-dom`` after the page's requests have settled). Every page is
opened in a browser profile of its own, new, as by a user who never opened this UI: MLflow
keeps the side of the UI (GenAI or model training) and the Assistant panel's first opening in
the profile.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from orchestrator import names, tracking, ui, views

from .._serving import wait_healthy

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# What the GenAI side of MLflow 3 shows: its sidebar, the runs page's heading there, the
# traces overview's pop-up, and the Assistant panel opened by itself on a first visit
GENAI = (
    "Observability",
    "Agent versions",
    "Training runs",
    "Detect Issues",
    "Ask questions about your experiments",
)


def _browser() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        pytest.skip(
            "no headless browser: install Debian's chromium (scripts/setup.sh does, as root "
            "with apt) to run the real-browser UI test"
        )
    return found


def _page_dom(browser: str, url: str, profiles: Path) -> str:
    """The DOM of ``url`` once its scripts have run (virtual time lets the page's fetches
    finish before the DOM is dumped), in a new browser profile."""
    profiles.mkdir(exist_ok=True)
    profile = tempfile.mkdtemp(dir=profiles)
    return subprocess.run(
        [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={profile}", "--virtual-time-budget=20000",
            "--window-size=1600,1600", "--dump-dom", url,
        ],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip


def _text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def _rendered(browser: str, url: str, expected: list[str], profiles: Path) -> str:
    """The page text, read again (up to 3 times) until every expected string is in it."""
    for _ in range(3):
        text = _text(_page_dom(browser, url, profiles))
        if all(e in text for e in expected):
            break
    return text


def _on_the_training_side(text: str) -> None:
    """The page shows MLflow's model-training side, without the GenAI side's pages or the
    Assistant panel over the page."""
    assert "Model registry" in text, text[:3000]  # the training side's sidebar
    shown = [g for g in GENAI if g in text]
    assert not shown, (shown, text[:3000])


def test_the_sweeps_view_lists_its_trials_ranked_in_a_real_browser(
    tmp_path, repo, smoke, free_port
):
    from mlflow.tracking import MlflowClient

    browser = _browser()
    profiles = tmp_path / "profiles"
    store = tmp_path / "store"
    done = smoke(store, "--trials", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    (url_line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("the trials, ranked:")]
    printed = url_line.split(": ", 1)[1]

    c = MlflowClient(tracking.default_tracking_uri(store))
    exp = c.get_experiment_by_name("image_mnist_lt")
    # the link opens ui's own port: what ui serves on without --port
    base_printed = ui.base_url(tracking.default_tracking_uri(store))
    assert base_printed == f"http://127.0.0.1:{ui.DEFAULT_PORT}"
    assert printed == views.view_url(base_printed, exp.experiment_id)
    trials = c.search_runs([exp.experiment_id], filter_string="tags.`ot.kind` = 'trial'")
    assert len(trials) == 3
    ranked = sorted(trials, key=lambda r: -r.data.metrics["selected_val_balanced_acc"])
    run_names = [r.info.run_name for r in ranked]

    port = free_port
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.ui", "--storage", str(store), "--port", str(port)],
        cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, what="the UI", timeout_s=90)
        url = printed.replace(base_printed, base)
        text = _rendered(browser, url, run_names, profiles)
        # a new browser following the link lands on the training runs, not on GenAI
        _on_the_training_side(text)
        # the runs table: every trial, flat (not folded under the sweep's parent), best first
        assert "3 matching runs" in text, text[:3000]
        positions = [text.index(n) for n in run_names]
        best = ranked[0].data.metrics["selected_val_balanced_acc"]
        if best > ranked[1].data.metrics["selected_val_balanced_acc"]:
            assert positions[0] == min(positions), text[:3000]
        # the selection metric and the test number at its epoch are columns, with their values
        header = text[text.index("Run Name") : positions[0]]
        for column in ("selected_val_balanced_acc", "selected_test_balanced_acc", "stage2.lr"):
            assert column in header, header
        assert f" {best:g} " in text[positions[-1] :], text[:3000]
        assert "sweep-" not in text[text.index("Run Name") :]  # parents are not trials

        # the experiment itself, opened in a new browser: its runs, on the training side
        experiment = _rendered(
            browser, f"{base}/#/experiments/{exp.experiment_id}", ["matching runs"], profiles
        )
        _on_the_training_side(experiment)
        assert "matching runs" in experiment, experiment[:3000]

        # the chart view opens on the selection, then the per-epoch curves, then the summaries
        # (validation-selected first, the numbers selected on test last)
        charts = _rendered(browser, url + "&compareRunsMode=CHART", ["Per-epoch curves"], profiles)
        order = [charts.find(s) for s in ("Selection (validation)", "Per-epoch curves")]
        assert -1 < order[0] < order[1], charts[:3000]
        groups = [names.summary_group(s).rstrip("/") for s in names.SUMMARY_GROUPS]
        later = [charts.find(g) for g in groups]
        assert order[1] < later[0] < later[1] < later[2], (groups, charts[:3000])
        assert "stage1_" not in charts  # stage 1's numbers are on the stage-1 run only

        _the_best_members_page(browser, base, exp.experiment_id, ranked[0], profiles)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _the_best_members_page(browser, base, exp_id, run, profiles) -> None:
    """A trial's page: its description first, with the per-class test accuracy and learned
    weights of its validation-selected epoch and its figures; the validation-selected numbers
    before the test-selected ones in its metric sections."""
    page = f"{base}/#/experiments/{exp_id}/runs/{run.info.run_id}"
    dom = _page_dom(browser, page, profiles)
    text = _text(dom)
    _on_the_training_side(text)
    epoch = int(run.data.metrics[names.SELECTED_EPOCH])
    assert f"Validation-selected model, stage-2 epoch {epoch}" in text, text[:3000]
    for column in ("test acc (%)", "mass at start", "learned mass", "learned / start"):
        assert column in text, text[:3000]
    for figure in ("learned_weights.png", "confusion_matrix.png"):
        assert f'src="get-artifact?path={figure}&amp;run_uuid={run.info.run_id}"' in dom
    assert text.index("Validation-selected model") < text.index("Parameters")

    sections = _rendered(browser, page + "/model-metrics", ["last_epoch"], profiles)
    _on_the_training_side(sections)
    groups = [names.summary_group(s).rstrip("/") for s in names.SUMMARY_GROUPS]
    at = [sections.find(f"{g} (") for g in groups]  # a section's heading: "<name> (<count>)"
    assert -1 < at[0] < at[1] < at[2], (groups, sections[:3000])
