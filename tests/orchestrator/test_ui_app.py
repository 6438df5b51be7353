"""The app ``orchestrator.ui`` serves: MLflow's own, its page at ``/`` carrying the browser
defaults (tests/orchestrator/test_ui_browser.py shows what a fresh browser then sees)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import re

from orchestrator import ui_app

PAGE = b"<!doctype html><html><head><title>MLflow</title></head><body></body></html>"


def _inner(body: bytes = PAGE, content_type: bytes = b"text/html; charset=utf-8", status=200):
    """An app answering every request with ``body``; it records the requests it saw."""
    seen: list[dict] = []

    async def app(scope, receive, send):
        seen.append(scope)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                    (b"etag", b'"abc"'),
                    (b"x-frame-options", b"SAMEORIGIN"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body[:10], "more_body": True})
        await send({"type": "http.response.body", "body": body[10:]})

    return app, seen


def _get(app, path: str = "/", method: str = "GET", headers=()) -> tuple[dict, bytes]:
    scope = {"type": "http", "method": method, "path": path, "headers": list(headers)}
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    headers = dict(sent[0]["headers"])
    return headers, b"".join(m.get("body", b"") for m in sent[1:])


def test_the_page_sets_the_defaults_first_in_its_head():
    inner, seen = _inner()
    headers, body = _get(
        ui_app.FirstVisitDefaults(inner),
        headers=[(b"if-none-match", b'"abc"'), (b"accept-encoding", b"gzip"), (b"host", b"h")],
    )
    script = re.search(rb"<head><script>(.*?)</script><title>", body)
    assert script, body  # before anything of MLflow's
    for key, value in ui_app.BROWSER_DEFAULTS.items():
        # stored as MLflow stores it (JSON), and only where the browser has no value yet
        assert json.dumps(json.dumps(value)).encode() in script.group(1)
        assert key.encode() in script.group(1)
    assert b"localStorage.getItem(k)===null" in script.group(1)
    assert body.replace(b"<script>" + script.group(1) + b"</script>", b"") == PAGE
    assert headers[b"content-length"] == str(len(body)).encode()
    assert b"etag" not in headers  # MLflow's file's tag, not this page's
    assert headers[b"x-frame-options"] == b"SAMEORIGIN"  # MLflow's other headers stay
    # MLflow was asked for the whole page, uncompressed: a cached or gzipped copy has no script
    assert [k for k, _ in seen[0]["headers"]] == [b"host"]


def test_everything_else_passes_untouched():
    inner, _ = _inner()
    app = ui_app.FirstVisitDefaults(inner)
    for path, method in (("/static-files/x.js", "GET"), ("/health", "GET"), ("/", "HEAD")):
        headers, body = _get(app, path, method)
        assert body == PAGE and headers[b"etag"] == b'"abc"', (path, method)
    inner, _ = _inner(b'{"head": "<head>"}', content_type=b"application/json")
    assert _get(ui_app.FirstVisitDefaults(inner))[1] == b'{"head": "<head>"}'
    inner, _ = _inner(status=404)
    assert _get(ui_app.FirstVisitDefaults(inner))[1] == PAGE


def test_mlflow_finds_the_plugin_ui_starts():
    # `mlflow ui --app-name ot-reweight` (orchestrator/ui.py) finds its factory by this name
    (entry,) = [
        e for e in importlib.metadata.entry_points(group="mlflow.app") if e.name == ui_app.APP_NAME
    ]
    assert entry.load() is ui_app.create_app
