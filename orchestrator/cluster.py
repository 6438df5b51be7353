"""Where a command's Ray runs: a local Ray that only this machine can reach, or a running
cluster whose address is checked to answer before Ray is given it.

Ray 2.60 keeps trying a GCS that does not answer for many minutes (20 tries of about 40 s, a
warning each), so an address is first tried here with a few seconds' limit. Nothing here
imports Ray: the local start's setting has to be in place before Ray is first imported.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

__all__ = [
    "TIMEOUT_S",
    "UnreachableRay",
    "before_ray_import",
    "check_reachable",
    "endpoint",
    "local_on_loopback",
]

TIMEOUT_S = 5.0  # for the TCP connect, then again for the answer

# A gRPC server (Ray's GCS, and Ray Client's server behind ray://) answers the HTTP/2 client
# preface with a SETTINGS frame of its own (RFC 9113, section 3.4); a port that says nothing,
# or something else, is not a Ray cluster. An empty SETTINGS frame follows the magic.
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_FRAME_HEADER = 9
_SETTINGS = 4

# Ray's servers listen on 127.0.0.1 alone when the node's address is 127.0.0.1; on Linux, Ray
# replaces 127.0.0.1 (an explicit `_node_ip_address` too) by the address of the interface that
# routes outwards unless multi-node clusters are switched off, as they are on Windows and macOS.
# Ray reads this switch once, when it is imported; the local cluster's processes inherit it.
_SINGLE_NODE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class UnreachableRay(ConnectionError):
    """No Ray cluster answers at the address (the message says why, in a few words)."""


def local_on_loopback() -> None:
    """Make the local Ray that ``ray.init`` is about to start listen on loopback only. Call it
    before Ray is imported in this process."""
    if "ray" in sys.modules and os.environ.get(_SINGLE_NODE) != "0":
        raise RuntimeError(
            "Ray was imported before its local start was set to loopback: call "
            "cluster.before_ray_import before importing the modules that import Ray"
        )
    os.environ[_SINGLE_NODE] = "0"


def before_ray_import(address: str | None) -> None:
    """What a command calls before it imports the modules that import Ray: where it will start
    a local Ray (``address`` and ``RAY_ADDRESS`` unset, or "local"), the loopback switch that
    Ray reads at import. Once Ray is imported it does nothing: :func:`local_on_loopback`, at
    the start, refuses a local Ray imported without it."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "local") and "ray" not in sys.modules:
        os.environ[_SINGLE_NODE] = "0"


def endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) that ``ray.init(address)`` will talk to first: HOST:PORT, ray://HOST:PORT, or
    for ``auto`` the address ``ray start`` last recorded on this machine. None for ``auto`` with
    no record (Ray then says at once that it finds no cluster)."""
    if address == "auto":
        address = _recorded_address()
        if address is None:
            return None
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UnreachableRay("expected HOST:PORT, ray://HOST:PORT or auto")
    return host.strip("[]"), int(port)


def _recorded_address() -> str | None:
    """What Ray's ``auto`` reads: the file ``ray start`` writes in Ray's temp directory."""
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    path = Path(base) / "ray" / "ray_current_cluster"
    if not path.is_file():
        return None
    return path.read_text().strip() or None


def check_reachable(address: str) -> None:
    """Raise :class:`UnreachableRay` unless a gRPC server answers at ``address`` within
    :data:`TIMEOUT_S` (twice: the connect, then its answer)."""
    where = endpoint(address)
    if where is None:
        return
    try:
        with socket.create_connection(where, timeout=TIMEOUT_S) as sock:
            if _tls():
                return  # a TLS server does not answer a plain preface; the connect will do
            sock.sendall(_PREFACE)
            head = _read(sock, _FRAME_HEADER)
    except TimeoutError:
        raise UnreachableRay(f"no answer within {TIMEOUT_S:g} s") from None
    except OSError as err:
        raise UnreachableRay(err.strerror or str(err)) from None
    if len(head) < _FRAME_HEADER or head[3] != _SETTINGS:
        raise UnreachableRay("something answers there, but not a Ray cluster (no gRPC)")


def _read(sock: socket.socket, n: int) -> bytes:
    """Up to ``n`` bytes: fewer only when the peer closes first."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _tls() -> bool:
    return os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")
