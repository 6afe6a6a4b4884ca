"""Helpers shared by the hub test clients (run as scripts in subprocesses; never imports hf_deq)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable
from pathlib import Path


class Report:
    """Collects ``{check: value}`` and writes them as JSON, also when the client fails half-way."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.data: dict = {"python": sys.version.split()[0]}
        self.started = time.monotonic()

    def __setitem__(self, key: str, value) -> None:
        self.data[key] = value
        self.flush()

    def mark(self, stage: str) -> None:
        """Record the elapsed seconds at the end of a stage (for keeping the hub tests fast)."""
        self.data.setdefault("stage_seconds", {})[stage] = round(time.monotonic() - self.started, 2)
        self.flush()

    def flush(self) -> None:
        self.data["seconds"] = round(time.monotonic() - self.started, 2)
        self.path.write_text(json.dumps(self.data, indent=2, default=str))

    def run(self, main: Callable[[Report], None]) -> int:
        try:
            main(self)
            self.data["completed"] = True
            return 0
        except BaseException:
            self.data["error"] = traceback.format_exc()
            return 1
        finally:
            self.flush()

    def expect_error(self, name: str, fn: Callable[[], object], *types: type[BaseException]) -> None:
        """Run ``fn``; record ``{"raised": type name, "message": str}`` (or that nothing was raised)."""
        try:
            fn()
        except types as err:
            self[name] = {
                "raised": type(err).__name__,
                "message": str(err),
                "mro": [c.__name__ for c in type(err).__mro__],
            }
        else:
            self[name] = {"raised": None, "message": ""}


def snapshot(folder: str | os.PathLike) -> dict[str, list]:
    """Every file and folder under ``folder`` with its content hash, size and mtime."""
    root = Path(folder)
    out: dict[str, list] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir():
            out[rel + "/"] = ["dir"]
        else:
            stat = path.stat()
            out[rel] = [hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_size, stat.st_mtime_ns]
    return out


def fake_control(action: str, payload: dict | None = None):
    """Steer the fake Hub (``POST /__fake__/fail`` / ``reset``, ``GET /__fake__/log``)."""
    url = f"{os.environ['HF_ENDPOINT']}/__fake__/{action}"
    data = None if payload is None else json.dumps(payload).encode()
    method = "GET" if action == "log" else "POST"
    request = urllib.request.Request(url, data=data if method == "POST" else None, method=method)
    if method == "POST":
        request.add_header("Content-Type", "application/json")
        if data is None:
            request.data = b"{}"
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())
