"""A sweep beside other work on the machine: the local Ray's worker priority. Not a test.

    .venv/bin/python bench/under_load.py [--busy 2] [--trials 2] [--timeout 900]
        [--out bench/results/under_load_image_mnist_lt.json]

Runs ``python -m orchestrator.sweep image_mnist_lt --smoke --quiet --trials N`` on a run
storage whose stage 1 was built first (untimed), timed from the command's start to its exit,
four ways: alone and beside ``--busy`` busy loops (plain Python processes at the default
priority, as any other program a user runs), each with the workers at Ray's own niceness
(``RAY_worker_niceness=15``) and at the project's (0, what the commands set for a local
Ray). The ratio is each loaded time over the same niceness alone, measured in this run.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import save_cpu_result

ROOT = Path(__file__).resolve().parents[1]
BUSY = "while True: pass"


def sweep(storage: Path, trials: int, niceness: str | None, timeout: float) -> float | None:
    """Seconds the smoke sweep took (None: still running at ``timeout``, then stopped)."""
    cmd = [str(ROOT / ".venv/bin/python"), "-m", "orchestrator.sweep", "image_mnist_lt",
           "--smoke", "--quiet", "--storage", str(storage), "--trials", str(trials)]  # fmt: skip
    env = dict(os.environ)
    env.pop("RAY_worker_niceness", None)
    if niceness is not None:
        env["RAY_worker_niceness"] = niceness
    start = time.time()
    # its own session, so a cut run is stopped with the local Ray it started, and only that
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None
    if proc.returncode:
        sys.exit(f"sweep failed: {err.strip().splitlines()[-1]}")
    return round(time.time() - start, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busy", type=int, default=2, help="busy loops beside the loaded runs")
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before a run is cut")
    p.add_argument(
        "--out", type=Path, default=ROOT / "bench/results/under_load_image_mnist_lt.json"
    )
    args = p.parse_args()
    begin = time.time()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp)
        sweep(storage, 1, None, args.timeout)  # builds and caches stage 1: not timed
        for label, niceness in (("ray_default_15", "15"), ("project_0", None)):
            alone = sweep(storage, args.trials, niceness, args.timeout)
            busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
            try:
                loaded = sweep(storage, args.trials, niceness, args.timeout)
            finally:
                for b in busy:
                    b.kill()
                    b.wait()
            ratio = None if loaded is None or alone is None else round(loaded / alone, 2)
            rows[label] = {"alone_s": alone, "loaded_s": loaded, "loaded_over_alone": ratio}
            print(f"workers at {label}: alone {alone} s, beside {args.busy} busy loops "
                  f"{loaded if loaded is not None else f'> {args.timeout:g}'} s "
                  f"({ratio}x)", flush=True)  # fmt: skip
    payload = {
        "command": f"orchestrator.sweep image_mnist_lt --smoke --quiet --trials {args.trials}",
        "busy_loops": args.busy,
        "cpus": os.cpu_count(),
        "timeout_s": args.timeout,
        "rows": rows,
    }
    save_cpu_result(args.out, payload, begin)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
