"""``python -m orchestrator.ui [--port P] [--storage DIR]``: the MLflow UI over the local store.

Binds 127.0.0.1 only, one worker, background job execution off (MLflow's default server starts
15 processes and about 3 GB here; this one 2 processes and about 0.5 GB).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .cli import Parser
from .tracking import default_tracking_uri

__all__ = ["main", "ui_command"]


def ui_command(tracking_uri: str, port: int, artifact_root: Path | None) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if artifact_root is not None:
        cmd += ["--default-artifact-root", artifact_root.as_uri()]
    return cmd


def _parser() -> Parser:
    p = Parser(prog="python -m orchestrator.ui", description=__doc__)
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    p.add_argument("--storage", default="runs", help="the sweeps' run storage (default ./runs)")
    p.add_argument("--tracking-uri", default=None, help="a sqlite:/// URI instead of --storage")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    root = Path(args.storage).expanduser().resolve()
    uri = args.tracking_uri or default_tracking_uri(root)
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.exists():
            print(
                f"error: no MLflow store at {db}; run python -m orchestrator.sweep first "
                "(or pass --storage DIR)",
                file=sys.stderr,
            )
            return 2
    elif "://" in uri:
        print(f"error: {uri} is a server already: open it in a browser", file=sys.stderr)
        return 2
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = ui_command(uri, args.port, None if args.tracking_uri else root / "mlartifacts")
    print(f"MLflow UI on http://127.0.0.1:{args.port}  (store {uri}; Ctrl-C stops it)", flush=True)
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
