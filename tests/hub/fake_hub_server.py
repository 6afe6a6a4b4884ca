"""A fake of the Hugging Face Hub HTTP API, for tests only.

This machine has no internet and no Hub-compatible server exists on the package index, so the hub tests run the
real, unmodified ``huggingface_hub`` / ``transformers`` client code against this loopback server
(``HF_ENDPOINT=http://127.0.0.1:<port>``, set before any HF library is imported, with ``HF_HUB_DISABLE_XET=1``).
It is NOT a Hub implementation: it keeps repos in memory and answers the subset of the API those clients use,
in the shapes they parse (read from ``huggingface_hub``'s ``hf_api.py``, ``_commit_api.py``, ``lfs.py`` and
``file_download.py``):

=====================================================  ==========================================================
``GET  /api/whoami-v2``                                 the token's user (``user``)
``POST /api/repos/create``                              create a model repo (409 if it exists; 400 on a bad name)
``POST /api/validate-yaml``                             model-card metadata check (``{"errors", "warnings"}``)
``GET  /api/models/{repo}[/revision/{rev}]``            model info: sha, siblings, cardData, config, private
``GET  /api/models/{repo}/tree/{rev}[/{path}]``         tree listing (``?recursive=true``), 404 EntryNotFound
``POST /api/models/{repo}/paths-info/{rev}``            info of given paths
``POST /api/models/{repo}/preupload/{rev}``             upload mode (``regular`` / ``lfs``) and remote oid per file
``POST /{repo}.git/info/lfs/objects/batch``             LFS batch API, ``basic`` transfer: a PUT URL per object
``PUT  /__lfs_upload__/{oid}``                          the LFS upload URL (sha256 and size checked)
``POST /api/models/{repo}/commit/{rev}``                ndjson commit (``header``, ``file``, ``lfsFile``, deletions)
``HEAD|GET /{repo}/resolve/{rev}/{path}``               file download with ``X-Repo-Commit``, ``ETag``,
                                                        ``Content-Length``; LFS files answer 302 with
                                                        ``X-Linked-Etag``/``X-Linked-Size`` to a second
                                                        loopback port (the "CDN", another origin, as on the Hub)
=====================================================  ==========================================================

Errors carry the ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) the client
maps onto its exception classes. Only the ``main`` branch and commit shas are revisions.

Test controls (not part of the Hub API): ``require_token`` makes write calls without
``Authorization: Bearer <token>`` answer 401 (and private repos unreadable without it); failure rules make
matching requests answer a given status (``add_failure(status, path_regex, method)``), also settable over HTTP
with ``POST /__fake__/fail`` (JSON ``{"status", "path", "method", "times"}``), ``POST /__fake__/reset`` and
``GET /__fake__/log`` (the request log), so a client in another process can steer it.

Bounded: every connection has a socket timeout, request bodies are size-capped, and the server stops by itself
after ``max_requests`` requests, ``idle_timeout`` seconds without a request, or ``lifetime`` seconds in all.
Run standalone with ``python fake_hub_server.py`` (prints the endpoint, stops on Ctrl-C or by itself).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from fake_hub_state import (
    GITATTRIBUTES,
    Commit,
    FailureRule,
    HubError,
    Repo,
    StoredFile,
    front_matter,
    git_blob_sha1,
)
from fake_hub_uploads import UploadEndpoints

MAX_BODY = 512 * 1024 * 1024


class FakeHubServer:
    """The fake Hub: ``with FakeHubServer() as hub: ... hub.endpoint ...`` (or ``start()`` / ``stop()``)."""

    def __init__(
        self,
        *,
        username: str = "user",
        require_token: str | None = None,
        max_requests: int = 5000,
        idle_timeout: float = 300.0,
        lifetime: float = 900.0,
    ) -> None:
        self.username = username
        self.require_token = require_token
        self.max_requests = max_requests
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.failures: list[FailureRule] = []
        self.log: list[tuple[str, str, int]] = []
        self.lock = threading.RLock()
        self.n_requests = 0
        self.last_request = time.monotonic()
        self._started = 0.0
        self._stopped = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._cdn: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self.stop_reason: str | None = None

    # -- life cycle -------------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def cdn_endpoint(self) -> str:
        """Where LFS downloads redirect: another origin, named ``localhost`` so that clients comparing hosts
        only (huggingface_hub 1.x) and clients comparing origins (2.x) both treat it as a CDN, as on the Hub."""
        assert self._cdn is not None, "server not started"
        return f"http://localhost:{self._cdn.server_address[1]}"

    def start(self) -> FakeHubServer:
        self._httpd = _Server(("127.0.0.1", 0), _Handler, self, is_cdn=False)
        self._cdn = _Server(("127.0.0.1", 0), _Handler, self, is_cdn=True)
        self._started = self.last_request = time.monotonic()
        for httpd in (self._httpd, self._cdn):
            thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self._threads.append(thread)
        watchdog = threading.Thread(target=self._watchdog, daemon=True)
        watchdog.start()
        return self

    def _watchdog(self) -> None:
        while not self._stopped.wait(0.2):
            now = time.monotonic()
            if now - self.last_request > self.idle_timeout:
                self._shutdown(f"idle for {self.idle_timeout:.0f} s")
            elif now - self._started > self.lifetime:
                self._shutdown(f"lifetime of {self.lifetime:.0f} s reached")

    def _shutdown(self, reason: str) -> None:
        if self._stopped.is_set():
            return
        self.stop_reason = reason
        self._stopped.set()
        for httpd in (self._httpd, self._cdn):
            if httpd is not None:
                threading.Thread(target=httpd.shutdown, daemon=True).start()

    def stop(self) -> None:
        self._shutdown("stopped")
        for thread in self._threads:
            thread.join(timeout=5)
        for httpd in (self._httpd, self._cdn):
            if httpd is not None:
                httpd.server_close()

    @property
    def running(self) -> bool:
        return not self._stopped.is_set()

    def __enter__(self) -> FakeHubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- test controls ----------------------------------------------------------------------------------------
    def add_failure(
        self,
        status: int,
        path: str = ".*",
        method: str | None = None,
        times: int | None = None,
        message: str = "refused by the fake Hub",
    ) -> None:
        """Requests whose path matches ``path`` (a regex searched in the URL path), and ``method`` if given,
        answer ``status`` (``times`` times, or always)."""
        with self.lock:
            self.failures.append(
                FailureRule(status, re.compile(path), method and method.upper(), times, message)
            )

    def reset_failures(self) -> None:
        with self.lock:
            self.failures.clear()

    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        with self.lock:
            repo = Repo(repo_id, private)
            repo.commits.append(
                self._new_commit(repo_id, "initial commit", {".gitattributes": StoredFile(GITATTRIBUTES)})
            )
            self.repos[repo_id] = repo
            return repo

    @staticmethod
    def _new_commit(repo_id: str, message: str, files: dict[str, StoredFile]) -> Commit:
        digest = hashlib.sha1(f"{repo_id}\0{message}\0{time.time_ns()}".encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + files[path].etag.encode())
        return Commit(digest.hexdigest(), message, dict(files))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, hub: FakeHubServer, is_cdn: bool) -> None:
        self.hub, self.is_cdn = hub, is_cdn
        super().__init__(address, handler)


class _Handler(UploadEndpoints, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 30  # socket timeout: a stuck client cannot hold a thread forever

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing ---------------------------------------------------------------------------------------------
    @property
    def hub(self) -> FakeHubServer:
        return self.server.hub

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    raise HubError(413, "request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise HubError(413, "request body too large")
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> Any:
        try:
            return json.loads(self._read_body() or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"invalid JSON body: {err}") from err

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
        head: bool = False,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)
        self._status = status

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:] if auth.lower().startswith("bearer ") else None

    def _authorized(self) -> bool:
        return self.hub.require_token is None or self._token() == self.hub.require_token

    def _require_write(self) -> None:
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, repo_id: str, *, write: bool = False) -> Repo:
        if write:
            self._require_write()
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized()):
            raise HubError(404 if repo is None else 401, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.at(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # -- dispatch ---------------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        hub = self.hub
        self._status = 0
        split = urlsplit(self.path)
        raw_path, query = split.path, parse_qs(split.query)
        with hub.lock:
            hub.n_requests += 1
            hub.last_request = time.monotonic()
            over = hub.n_requests > hub.max_requests
        try:
            if over:
                hub._shutdown(f"max_requests={hub.max_requests} reached")
                raise HubError(503, "fake Hub request budget exhausted")
            if not raw_path.startswith("/__fake__/"):
                self._apply_failures(method, raw_path)
            if self.server.is_cdn:
                self._cdn_get(method, raw_path)
            else:
                self._route(method, raw_path, query)
        except HubError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            if method == "HEAD":
                self._send(err.status, b"", headers, head=True)
            else:
                self._send_json(err.status, {"error": err.message}, headers)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as err:  # a bug in the fake: answer 500 rather than hang the client
            self._send_json(500, {"error": f"fake Hub internal error: {type(err).__name__}: {err}"})
        finally:
            with hub.lock:
                hub.log.append((method, self.path, self._status))

    def _apply_failures(self, method: str, path: str) -> None:
        with self.hub.lock:
            for rule in self.hub.failures:
                if rule.times == 0 or (rule.method and rule.method != method) or not rule.path.search(path):
                    continue
                if rule.times is not None:
                    rule.times -= 1
                if method in ("POST", "PUT"):
                    self._read_body()
                code = "RepoNotFound" if rule.status == 404 else None
                message = (
                    "Invalid credentials in Authorization header" if rule.status == 401 else rule.message
                )
                raise HubError(rule.status, message, code)

    def _route(self, method: str, raw_path: str, query: dict[str, list[str]]) -> None:
        parts = [unquote(p) for p in raw_path.strip("/").split("/")]
        if parts[:1] == ["__fake__"]:
            return self._control(method, parts[1:])
        if parts[:1] == ["api"]:
            return self._api(method, parts[1:], query)
        if len(parts) >= 5 and parts[2] in ("resolve",) and method in ("GET", "HEAD"):
            return self._resolve(method, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        if len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(f"{parts[0]}/{parts[1][:-4]}")
        if len(parts) == 2 and parts[0] == "__lfs_upload__" and method == "PUT":
            return self._lfs_put(parts[1])
        raise HubError(404, f"no route for {method} {raw_path} in the fake Hub")

    def _control(self, method: str, parts: list[str]) -> None:
        if method == "POST" and parts == ["fail"]:
            spec = self._json_body()
            self.hub.add_failure(
                int(spec["status"]), spec.get("path", ".*"), spec.get("method"), spec.get("times")
            )
            return self._send_json(200, {"ok": True})
        if method == "POST" and parts == ["reset"]:
            self._read_body()
            self.hub.reset_failures()
            return self._send_json(200, {"ok": True})
        if method == "GET" and parts == ["log"]:
            return self._send_json(200, [list(entry) for entry in self.hub.log])
        raise HubError(404, "unknown control")

    def _api(self, method: str, parts: list[str], query: dict[str, list[str]]) -> None:
        if method == "GET" and parts == ["whoami-v2"]:
            if self._token() is None or not self._authorized():
                raise HubError(401, "Invalid credentials in Authorization header")
            return self._send_json(
                200,
                {
                    "type": "user",
                    "name": self.hub.username,
                    "fullname": "Fake User",
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}},
                },
            )
        if method == "POST" and parts == ["repos", "create"]:
            return self._create_repo()
        if method == "POST" and parts == ["validate-yaml"]:
            return self._validate_yaml()
        if len(parts) >= 3 and parts[0] == "models":
            repo_id, rest = f"{parts[1]}/{parts[2]}", parts[3:]
            if method == "GET" and not rest:
                return self._model_info(repo_id, "main")
            if method == "GET" and len(rest) == 2 and rest[0] == "revision":
                return self._model_info(repo_id, rest[1])
            if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                return self._tree(repo_id, rest[1], "/".join(rest[2:]), query)
            if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
                return self._paths_info(repo_id, rest[1])
            if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                return self._preupload(repo_id, rest[1])
            if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                return self._commit_endpoint(repo_id, rest[1], query)
        raise HubError(404, f"no route for {method} /api/{'/'.join(parts)} in the fake Hub")

    # -- endpoints --------------------------------------------------------------------------------------------
    def _model_info(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id)
        commit = self._commit(repo, revision)
        card_data = None
        if "README.md" in commit.files:
            card_data = front_matter(commit.files["README.md"].data.decode("utf-8", "replace"))
        config = None
        if "config.json" in commit.files:
            try:
                full = json.loads(commit.files["config.json"].data)
                config = {k: full[k] for k in ("architectures", "model_type", "auto_map") if k in full}
            except ValueError:
                config = None
        tags = list((card_data or {}).get("tags") or [])
        if config and config.get("auto_map"):
            tags.append("custom_code")
        self._send_json(
            200,
            {
                "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": tags,
                "library_name": (card_data or {}).get("library_name"),
                "pipeline_tag": (card_data or {}).get("pipeline_tag"),
                "cardData": card_data,
                "config": config,
                "siblings": [{"rfilename": path} for path in sorted(commit.files)],
                "usedStorage": sum(len(f.data) for f in commit.files.values()),
            },
        )

    def _entry(self, path: str, stored: StoredFile | None) -> dict:
        if stored is None:
            return {"type": "directory", "oid": git_blob_sha1(path.encode()), "path": path, "size": 0}
        entry: dict[str, Any] = {
            "type": "file",
            "oid": stored.blob_id,
            "size": len(stored.data),
            "path": path,
        }
        if stored.lfs_sha256:
            entry["lfs"] = {"oid": stored.lfs_sha256, "size": len(stored.data), "pointerSize": 134}
        return entry

    def _tree(self, repo_id: str, revision: str, path: str, query: dict[str, list[str]]) -> None:
        commit = self._commit(self._repo(repo_id), revision)
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        if prefix and prefix[:-1] in commit.files:
            raise HubError(400, f"{path} is a file, not a folder")
        entries: dict[str, dict] = {}
        for file_path, stored in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix) :].split("/")
            for depth in range(1, len(rest)):
                folder = prefix + "/".join(rest[:depth])
                if depth == 1 or recursive:
                    entries.setdefault(folder, self._entry(folder, None))
                if not recursive:
                    break
            if len(rest) == 1 or recursive:
                entries[file_path] = self._entry(file_path, stored)
        if prefix and not entries:
            raise HubError(404, f"{path} does not exist on main", "EntryNotFound")
        self._send_json(200, list(entries.values()))

    def _paths_info(self, repo_id: str, revision: str) -> None:
        commit = self._commit(self._repo(repo_id), revision)
        raw = self._read_body()
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            paths = json.loads(raw or b"{}").get("paths", [])
        else:
            paths = parse_qs(raw.decode()).get("paths", [])
        found = []
        for path in paths if isinstance(paths, list) else [paths]:
            if path in commit.files:
                found.append(self._entry(path, commit.files[path]))
            elif any(p.startswith(path.rstrip("/") + "/") for p in commit.files):
                found.append(self._entry(path, None))
        self._send_json(200, found)

    def _resolve(self, method: str, repo_id: str, revision: str, path: str) -> None:
        commit = self._commit(self._repo(repo_id), revision)
        stored = commit.files.get(path)
        if stored is None:
            # the client caches the absence of the file under this commit (X-Repo-Commit)
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{stored.blob_id}"', "Accept-Ranges": "bytes"}
        if stored.lfs_sha256:
            location = f"{self.hub.cdn_endpoint}/{quote(stored.lfs_sha256)}"
            headers.update(
                {
                    "X-Linked-Etag": f'"{stored.lfs_sha256}"',
                    "X-Linked-Size": str(len(stored.data)),
                    "Location": location,
                }
            )
            return self._send(302, b"", headers, content_type="text/plain", head=method == "HEAD")
        self._send_range(method, stored.data, headers)

    def _send_range(self, method: str, data: bytes, headers: dict[str, str]) -> None:
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and int(match.group(1)) < len(data):
            start = int(match.group(1))
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return self._send(206, data[start:], headers, "application/octet-stream", head=method == "HEAD")
        self._send(200, data, headers, "application/octet-stream", head=method == "HEAD")

    def _cdn_get(self, method: str, raw_path: str) -> None:
        oid = unquote(raw_path.strip("/"))
        if method not in ("GET", "HEAD") or oid not in self.hub.lfs_objects:
            raise HubError(404, "no such object on the fake CDN")
        self._send_range(method, self.hub.lfs_objects[oid], {"ETag": f'"{oid}"'})


if __name__ == "__main__":  # pragma: no cover
    server = FakeHubServer(idle_timeout=600).start()
    print(server.endpoint, flush=True)
    try:
        while server.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    server.stop()
