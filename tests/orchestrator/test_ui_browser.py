"""The MLflow UI as a user sees it: a real headless Chromium renders the sweep's view.

``scripts/setup.sh`` installs Debian's ``chromium`` package where it can (root and apt); the
test needs that browser and says so when it is absent. No screenshot is compared: the rendered
page's text is read (``--dump-dom`` after the page's requests have settled).
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys

import pytest

from .._serving import wait_healthy

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        pytest.skip(
            "no headless browser: install Debian's chromium (scripts/setup.sh does, as root "
            "with apt) to run the real-browser UI test"
        )
    return found


def _page_text(browser: str, url: str) -> str:
    """The visible text of ``url`` once its scripts have run (virtual time lets the page's
    fetches finish before the DOM is dumped)."""
    dom = subprocess.run(
        [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--virtual-time-budget=20000", "--window-size=1600,1600", "--dump-dom", url,
        ],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def _rendered(browser: str, url: str, expected: list[str]) -> str:
    """The page text, read again (up to 3 times) until every expected string is in it."""
    for _ in range(3):
        text = _page_text(browser, url)
        if all(e in text for e in expected):
            break
    return text


def test_the_sweeps_view_lists_its_trials_ranked_in_a_real_browser(
    tmp_path, repo, smoke, free_port
):
    from mlflow.tracking import MlflowClient

    browser = _browser()
    done = smoke(tmp_path, "--trials", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    (url_line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("the trials, ranked:")]
    printed = url_line.split(": ", 1)[1]
    assert printed.startswith("http://127.0.0.1:5000/#/experiments/")

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = c.get_experiment_by_name("image_mnist_lt")
    trials = c.search_runs([exp.experiment_id], filter_string="tags.`ot.kind` = 'trial'")
    assert len(trials) == 3
    ranked = sorted(trials, key=lambda r: -r.data.metrics["selected_val_balanced_acc"])
    names = [r.info.run_name for r in ranked]

    port = free_port
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.ui", "--storage", str(tmp_path), "--port", str(port)],
        cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, what="the UI", timeout_s=90)
        url = printed.replace("http://127.0.0.1:5000", base)
        text = _rendered(browser, url, names)
        # the runs table: every trial, flat (not folded under the sweep's parent), best first
        assert "3 matching runs" in text, text[:3000]
        positions = [text.index(n) for n in names]
        best = ranked[0].data.metrics["selected_val_balanced_acc"]
        if best > ranked[1].data.metrics["selected_val_balanced_acc"]:
            assert positions[0] == min(positions), text[:3000]
        # the selection metric and the test number at its epoch are columns, with their values
        header = text[text.index("Run Name") : positions[0]]
        for column in ("selected_val_balanced_acc", "selected_test_balanced_acc", "stage2.lr"):
            assert column in header, header
        assert f" {best:g} " in text[positions[-1] :], text[:3000]
        assert "sweep-" not in text[text.index("Run Name") :]  # parents are not trials

        # the chart view opens on the selection, then the per-epoch curves, then the summaries
        charts = _rendered(browser, url + "&compareRunsMode=CHART", ["Per-epoch curves"])
        order = [charts.find(s) for s in ("Selection (validation)", "Per-epoch curves")]
        assert -1 < order[0] < order[1], charts[:3000]
        later = [charts.find(s) for s in ("last_epoch", "best_test_epoch")]
        assert all(p > order[1] for p in later), charts[:3000]
        assert "stage1_" not in charts  # stage 1's numbers are on the stage-1 run only
    finally:
        proc.terminate()
        proc.wait(timeout=30)
