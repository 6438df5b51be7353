"""The app ``orchestrator.ui`` serves: MLflow's own server, with a new browser's defaults set.

MLflow 3's web UI keeps two choices in the browser's localStorage, which a browser that never
opened this UI does not hold yet:

- the side of the UI, GenAI or "Model training": GenAI by default, whatever the experiment's
  ``mlflow.experimentKind`` says (mlflow#24498; still so in 3.18). A sweep's link, an experiment
  or a run opened there lands on the traces overview, its "Detect issues" pop-up and the GenAI
  sidebar, not on the training runs;
- whether the Assistant panel has opened itself once: on a server at 127.0.0.1 it opens on the
  first page load, over a third of the page.

Every address of the UI loads the page at ``/`` (the rest of the address follows ``#``), so
that page sets both, model training and the Assistant's first opening done, before MLflow's
script reads them; only where the browser holds no value: a user's own choice stays. The
Assistant's button stays. The rest is MLflow's server, unchanged.

MLflow serves this module as an app plugin: ``pyproject.toml`` names :func:`create_app` in the
``mlflow.app`` entry points, as ``ot-reweight``.
"""

from __future__ import annotations

import json

__all__ = ["APP_NAME", "BROWSER_DEFAULTS", "FirstVisitDefaults", "create_app"]

APP_NAME = "ot-reweight"

# MLflow's UI stores a setting as JSON under "<key>_v<version>" (its useLocalStorage hook);
# these are its keys in MLflow 3.17-3.18 (tests/orchestrator/test_ui_browser.py checks that a
# fresh browser lands on the training runs).
BROWSER_DEFAULTS = {
    "mlflow.workflowType_v1": "machine_learning",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True,
}

_SCRIPT = (
    "<script>(function(){var d="
    + json.dumps({k: json.dumps(v) for k, v in BROWSER_DEFAULTS.items()})
    + ";try{for(var k in d){if(localStorage.getItem(k)===null)localStorage.setItem(k,d[k]);}}"
    + "catch(e){}})();</script>"
).encode()

# Dropped from a request for "/", so MLflow answers with the whole page, uncompressed.
_CONDITIONAL = {b"if-none-match", b"if-modified-since", b"if-range", b"range", b"accept-encoding"}
# Dropped from the answer: they describe MLflow's file, not the page sent.
_FILE_HEADERS = {b"content-length", b"etag", b"last-modified"}


class FirstVisitDefaults:
    """ASGI middleware: the page at ``/`` carries :data:`BROWSER_DEFAULTS` in its head; every
    other request, and any answer that is not a whole HTML page, passes through untouched."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != "/":
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _CONDITIONAL]
        sent: list[dict] = []

        async def keep(message: dict) -> None:
            sent.append(message)

        await self.app({**scope, "headers": headers}, receive, keep)
        for message in _with_defaults(sent):
            await send(message)


def _with_defaults(sent: list[dict]) -> list[dict]:
    """The answer with the defaults' script first in the page's head, or as it was."""
    kinds = [m["type"] for m in sent]
    if not kinds or kinds[0] != "http.response.start" or set(kinds[1:]) != {"http.response.body"}:
        return sent
    start = sent[0]
    headers = dict(start.get("headers", []))
    body = b"".join(m.get("body", b"") for m in sent[1:])
    html = headers.get(b"content-type", b"").startswith(b"text/html")
    if start["status"] != 200 or not html or b"<head>" not in body:
        return sent
    body = body.replace(b"<head>", b"<head>" + _SCRIPT, 1)
    kept = [(k, v) for k, v in start.get("headers", []) if k.lower() not in _FILE_HEADERS]
    kept.append((b"content-length", str(len(body)).encode()))
    return [{**start, "headers": kept}, {"type": "http.response.body", "body": body}]


def create_app():
    """MLflow's app plugin factory (``mlflow ui --app-name ot-reweight``): MLflow's own
    server app, configured by ``mlflow ui`` as without a plugin, behind the middleware."""
    from mlflow.server.fastapi_app import app

    return FirstVisitDefaults(app)
