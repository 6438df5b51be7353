"""``python -m orchestrator.ui [--port P] [--storage DIR]``: the MLflow UI over the local store.

Binds 127.0.0.1 only, one worker, background job execution off (MLflow's default server starts
15 processes and about 3 GB here; this one 2 processes and about 0.5 GB, and this command's own
process, about 70 MB, waits for them).

The server is MLflow's own, served as the app plugin ``ot-reweight`` (``orchestrator/ui_app.py``):
a browser that never opened this UI lands on its "Model training" side, where the runs are, not
on MLflow 3's GenAI side, and without the Assistant panel opened over a third of the page.

MLflow runs as a child process: ``mlflow ui`` exits with status 0 when its server cannot bind
(its uvicorn's failure is not passed on), so a port already in use is refused here, before
MLflow starts, and a server that stops without being asked to is reported with status 1.
"""

from __future__ import annotations

import errno
import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from .cli import Parser, exit_with
from .tracking import default_tracking_uri
from .ui_app import APP_NAME

__all__ = ["DEFAULT_PORT", "HOST", "base_url", "main", "port_problem", "ui_command"]

HOST = "127.0.0.1"
DEFAULT_PORT = 5000


def base_url(tracking_uri: str) -> str:
    """Where the UI of a store listens: a server is its own UI; a local store is opened by this
    command on its default port (the port the links a sweep prints point at)."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri
    return f"http://{HOST}:{DEFAULT_PORT}"


def ui_command(tracking_uri: str, port: int, artifact_root: Path | None) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--app-name",
        APP_NAME,
    ]
    if artifact_root is not None:
        cmd += ["--default-artifact-root", artifact_root.as_uri()]
    return cmd


def port_problem(port: int) -> str | None:
    """Why the UI's server could not listen on ``port`` of 127.0.0.1, or None when it can.

    The socket is bound as uvicorn binds it (SO_REUSEADDR), so a port left in TIME_WAIT by a
    server that just stopped counts as free, as it is for the server."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                other = port + 1 if port < 65535 else port - 1
                return f"port {port} on {HOST} is in use (--port {other} picks another)"
            return f"cannot listen on port {port} of {HOST}: {err.strerror}"
    return None


def _parser() -> Parser:
    p = Parser(prog="python -m orchestrator.ui", description=__doc__)
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT,
        help=f"port on {HOST} (default {DEFAULT_PORT}, where the links a sweep prints point)",
    )  # fmt: skip
    p.add_argument("--storage", default="runs", help="the sweeps' run storage (default ./runs)")
    p.add_argument("--tracking-uri", default=None, help="a sqlite:/// URI instead of --storage")
    return p


def _plugin_problem() -> str | None:
    """A checkout whose package was installed before the plugin existed lacks its entry point
    (MLflow would then fail with a traceback naming the apps it has)."""
    if any(e.name == APP_NAME for e in importlib.metadata.entry_points(group="mlflow.app")):
        return None
    return (
        f"MLflow's app plugin {APP_NAME!r} is not installed: run ./scripts/setup.sh (or "
        ".venv/bin/pip install --no-deps -e .) in the checkout"
    )


def _store_problem(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.exists():
            return (
                f"no MLflow store at {db}; run python -m orchestrator.sweep first "
                "(or pass --storage DIR)"
            )
    elif "://" in uri:
        return f"{uri} is a server already: open it in a browser"
    return None


def _serve(cmd: list[str], env: dict[str, str]) -> int:
    """Run the server until it is asked to stop (Ctrl-C, SIGTERM, SIGHUP: 0) or stops by itself
    (1). It runs in its own session, so a Ctrl-C reaches it once, as one SIGTERM from here: the
    terminal's SIGINT to the whole group, forwarded again by ``mlflow ui``, made its uvicorn
    give up its graceful shutdown with a traceback."""
    procs: list[subprocess.Popen] = []
    asked: list[int] = []

    def stop(signum: int, _frame) -> None:
        asked.append(signum)
        if procs and procs[0].poll() is None:
            procs[0].terminate()

    signums = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {signum: signal.signal(signum, stop) for signum in signums}  # before the start:
    try:  # a signal in between would leave the server running, in a session of its own
        procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))
        if asked:
            procs[0].terminate()
        code = procs[0].wait()
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    if asked:
        return 0
    print(
        f"error: the MLflow UI stopped by itself (status {code}); its lines above say why",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 1 <= args.port <= 65535:
        print(f"error: --port {args.port} is not a TCP port (1-65535)", file=sys.stderr)
        return 2
    root = Path(args.storage).expanduser().resolve()
    uri = args.tracking_uri or default_tracking_uri(root)
    problem = _store_problem(uri) or _plugin_problem() or port_problem(args.port)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = ui_command(uri, args.port, None if args.tracking_uri else root / "mlartifacts")
    print(f"MLflow UI on http://{HOST}:{args.port}  (store {uri}; Ctrl-C stops it)", flush=True)
    return _serve(cmd, env)


if __name__ == "__main__":
    exit_with(main())
