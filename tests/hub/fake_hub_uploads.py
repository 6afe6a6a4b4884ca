"""The write side of the fake Hub's HTTP API (``fake_hub_server.py``): repo creation, card metadata validation,
pre-upload, the LFS batch API and upload URL, and the ndjson commit endpoint. A mixin of its request handler,
which brings the body, auth and repo helpers (``_json_body``, ``_send_json``, ``_repo``, ...). For tests only."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from fake_hub_state import (
    LFS_SIZE_THRESHOLD,
    LFS_SUFFIXES,
    NAME_RE,
    HubError,
    StoredFile,
    validate_card_metadata,
)


class UploadEndpoints:
    """Endpoints that change the fake Hub's state."""

    def _create_repo(self) -> None:
        self._require_write()
        body = self._json_body()
        if body.get("type") not in (None, "model"):
            raise HubError(400, "the fake Hub only hosts model repos")
        name, namespace = body.get("name") or "", body.get("organization") or self.hub.username
        if not NAME_RE.match(name) or "--" in name or ".." in name or not NAME_RE.match(namespace):
            raise HubError(400, f"Invalid repo name: {namespace}/{name}")
        repo_id = f"{namespace}/{name}"
        with self.hub.lock:
            if repo_id in self.hub.repos:
                return self._send_json(
                    409,
                    {"error": "You already created this model repo", "url": f"{self.hub.endpoint}/{repo_id}"},
                )
            private = body.get("visibility") == "private" or bool(body.get("private"))
            self.hub.create_repo(repo_id, private=private)
        self._send_json(200, {"url": f"{self.hub.endpoint}/{repo_id}", "name": repo_id, "id": repo_id})

    def _validate_yaml(self) -> None:
        body = self._json_body()
        errors, warnings = validate_card_metadata(body.get("content", ""))
        self._send_json(
            400 if errors else 200,
            {"errors": [{"message": e} for e in errors], "warnings": [{"message": w} for w in warnings]},
        )

    def _preupload(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id, write=True)
        commit = self._commit(repo, revision)
        files = []
        for spec in self._json_body().get("files", []):
            sample = base64.b64decode(spec.get("sample", ""))
            path, size = spec["path"], int(spec.get("size", 0))
            lfs = path.endswith(LFS_SUFFIXES) or size > LFS_SIZE_THRESHOLD or b"\0" in sample
            existing = commit.files.get(path)
            oid = None if existing is None else (existing.lfs_sha256 if lfs else existing.blob_id)
            files.append(
                {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._send_json(200, {"files": files, "commitOid": commit.oid})

    def _lfs_batch(self, repo_id: str) -> None:
        self._repo(repo_id, write=True)
        body = self._json_body()
        if body.get("operation") != "upload":
            raise HubError(400, "the fake Hub's LFS batch API only uploads")
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.hub.lfs_objects:
                entry["actions"] = {
                    "upload": {
                        "href": f"{self.hub.endpoint}/__lfs_upload__/{oid}?size={size}",
                        "expires_in": 3600,
                    }
                }
            objects.append(entry)
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects}).encode(),
            content_type="application/vnd.git-lfs+json",
        )

    def _lfs_put(self, oid: str) -> None:
        data = self._read_body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, "uploaded content does not match its sha256 oid")
        with self.hub.lock:
            self.hub.lfs_objects[oid] = data
        self._send(200, b"", content_type="text/plain")

    def _commit_endpoint(self, repo_id: str, revision: str, query: dict[str, list[str]]) -> None:
        repo = self._repo(repo_id, write=True)
        if query.get("create_pr", ["0"])[0] == "1":
            raise HubError(400, "the fake Hub does not support pull requests")
        lines = [json.loads(line) for line in self._read_body().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        with self.hub.lock:
            parent = self._commit(repo, revision)
            if revision != "main":
                raise HubError(400, "the fake Hub only commits to main")
            if header.get("parentCommit") and not parent.oid.startswith(header["parentCommit"]):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(parent.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = value.get("path", "")
                if not path or path.startswith("/") or ".." in path.split("/"):
                    raise HubError(400, f"invalid path in commit: {path!r}")
                if key == "file":
                    files[path] = StoredFile(base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    data = self.hub.lfs_objects.get(value["oid"])
                    if data is None:
                        raise HubError(400, f"LFS object {value['oid']} was never uploaded")
                    files[path] = StoredFile(data, lfs_sha256=value["oid"])
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    for p in [p for p in files if p.startswith(path.rstrip("/") + "/")]:
                        del files[p]
                else:
                    raise HubError(400, f"unknown commit operation {key!r}")
            commit = self.hub._new_commit(repo_id, header.get("summary", ""), files)
            repo.commits.append(commit)
        self._send_json(
            200,
            {
                "success": True,
                "commitOid": commit.oid,
                "pullRequestUrl": None,
                "commitUrl": f"{self.hub.endpoint}/{repo_id}/commit/{commit.oid}",
            },
        )
