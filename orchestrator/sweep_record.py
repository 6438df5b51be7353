"""A sweep's record (``<storage>/<experiment>/<sweep id>/ot_sweep.json``): the arguments a
``--resume`` takes back from it, and the check that the command line does not change them."""

from __future__ import annotations

import argparse
import json
import time

from .cli import CommandError
from .storage import Storage

__all__ = ["RECORDED_ARGS", "given_options", "record_path", "resume_args", "write_record"]

# What a resumed sweep takes from its record; the command line may repeat them, not change them.
RECORDED_ARGS = (
    "trials",
    "seed",
    "overrides",
    "preset",
    "smoke",
    "cpus_per_trial",
    "gpus_per_trial",
    "max_failures",
    "workers_per_trial",
    "space",
    "population",
    "order",
)


_UNSET = object()


def given_options(p: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The recorded options (``RECORDED_ARGS``) that ``argv`` sets itself, default or not: a
    second parse with every default replaced by a marker (``--set`` appends: given when any)."""
    p.set_defaults(**{k: _UNSET for k in RECORDED_ARGS if k != "overrides"})
    parsed = vars(p.parse_args(argv))
    return {
        k for k in RECORDED_ARGS if (parsed[k] if k == "overrides" else parsed[k] is not _UNSET)
    }


def _shown(value) -> str:
    if isinstance(value, list):
        return " ".join(value) if value else "(none)"
    return "(none)" if value is None else str(value)


def resume_args(storage: Storage, args: argparse.Namespace) -> tuple[str, dict]:
    """(sweep id, record): a new id, or the interrupted sweep's with its recorded arguments
    put back into ``args``. An option the command line gave (``args.given``) with another value
    than the record is refused: the sweep goes on as it started, or not at all."""
    if not args.resume:
        return time.strftime("sweep-%Y%m%d-%H%M%S"), {}
    rec = _latest_unfinished(storage, args.name)
    for key in RECORDED_ARGS:
        recorded, asked = rec["args"].get(key), getattr(args, key)
        if key in args.given and asked != recorded:
            flag = "--set" if key == "overrides" else "--" + key.replace("_", "-")
            raise CommandError(
                f"--resume: {flag} {_shown(asked)} differs from the interrupted sweep's "
                f"{_shown(recorded)} ({rec['sweep_id']}); leave {flag} out to resume it as it "
                "was, or start a new sweep without --resume"
            )
        setattr(args, key, recorded)
    return rec["sweep_id"], rec


def _sweep_dirs(storage: Storage, name: str) -> list[str]:
    return [d for d in storage.list_dirs(name) if d.startswith("sweep-")]


def record_path(storage: Storage, name: str, sweep_id: str) -> str:
    return f"{name}/{sweep_id}/ot_sweep.json"


def _latest_unfinished(storage: Storage, name: str) -> dict:
    for sweep_id in reversed(_sweep_dirs(storage, name)):
        rel = record_path(storage, name, sweep_id)
        if storage.exists(rel):
            rec = json.loads(storage.read_bytes(rel))
            if rec.get("status") != "finished":
                return rec
    raise CommandError(f"no interrupted sweep of {name} under {storage.uri} to resume")


def write_record(storage: Storage, rec: dict) -> None:
    """Write (or rewrite) the sweep's record."""
    path = record_path(storage, rec["name"], rec["sweep_id"])
    storage.write_bytes(path, json.dumps(rec, indent=1).encode())
