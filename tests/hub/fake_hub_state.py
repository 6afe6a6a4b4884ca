"""The state of the fake Hub (``fake_hub_server.py``): repos, their files and commits, failure rules, the
errors it answers with, and the subset of the Hub's model-card metadata checks it applies. For tests only."""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field

try:  # PyYAML ships with the HF stack; without it validate-yaml only checks the front-matter fences.
    import yaml
except ImportError:  # pragma: no cover
    yaml = None

LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".onnx",
    ".npz",
    ".npy",
    ".pkl",
    ".zip",
    ".gz",
    ".tar",
    ".parquet",
    ".arrow",
)
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
PIPELINE_TAGS = {
    "text-generation",
    "image-classification",
    "fill-mask",
    "text-classification",
    "feature-extraction",
    "token-classification",
    "question-answering",
    "summarization",
    "translation",
    "image-feature-extraction",
    "text2text-generation",
    "zero-shot-classification",
    "object-detection",
    "image-segmentation",
}
GITATTRIBUTES = (
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@dataclass
class StoredFile:
    data: bytes
    lfs_sha256: str | None = None  # set for files stored through LFS

    @property
    def blob_id(self) -> str:
        if self.lfs_sha256 is None:
            return git_blob_sha1(self.data)
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.lfs_sha256}\nsize {len(self.data)}\n"
        return git_blob_sha1(pointer.encode())

    @property
    def etag(self) -> str:
        return self.lfs_sha256 or self.blob_id


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, StoredFile]
    date: str = field(default_factory=_now)


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)
    created_at: str = field(default_factory=_now)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def at(self, revision: str) -> Commit | None:
        if revision == "main":
            return self.head
        for commit in self.commits:
            if len(revision) >= 7 and commit.oid.startswith(revision):
                return commit
        return None


@dataclass
class FailureRule:
    status: int
    path: re.Pattern
    method: str | None = None
    times: int | None = None  # None: every time
    message: str = "refused by the fake Hub"


class HubError(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def front_matter(content: str) -> dict | None:
    """The YAML metadata block of a card (``---`` fenced at the top), or ``None``."""
    match = re.match(r"^\s*---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.DOTALL)
    if not match or yaml is None:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def validate_card_metadata(content: str) -> tuple[list[str], list[str]]:
    """A subset of the Hub's model-card metadata checks: ``(errors, warnings)``."""
    errors: list[str] = []
    match = re.match(r"^\s*---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.DOTALL)
    if not match:
        return [], ["empty or missing yaml metadata in repo card"]
    if yaml is None:  # pragma: no cover
        return [], []
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        return [f"YAML parse error: {err}"], []
    if not isinstance(data, dict):
        return ["metadata must be a YAML mapping"], []

    def str_or_list(key: str) -> None:
        value = data.get(key)
        if value is not None and not (
            isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        ):
            errors.append(f'"{key}" must be a string or an array of strings')

    for key in ("tags", "datasets", "metrics", "language", "base_model"):
        str_or_list(key)
    for key in ("library_name", "license", "pipeline_tag"):
        if key in data and not isinstance(data[key], str):
            errors.append(f'"{key}" must be a string')
    if isinstance(data.get("pipeline_tag"), str) and data["pipeline_tag"] not in PIPELINE_TAGS:
        errors.append(f'"pipeline_tag" must be a known task, got {data["pipeline_tag"]!r}')
    index = data.get("model-index")
    if index is not None:
        if not isinstance(index, list):
            errors.append('"model-index" must be an array')
        for model in index if isinstance(index, list) else []:
            if not isinstance(model, dict) or not isinstance(model.get("name"), str):
                errors.append('"model-index[].name" must be a string')
                continue
            for result in model.get("results") or []:
                task, dataset = result.get("task") or {}, result.get("dataset") or {}
                if not isinstance(task.get("type"), str):
                    errors.append('"model-index[].results[].task.type" is required')
                if not (isinstance(dataset.get("type"), str) and isinstance(dataset.get("name"), str)):
                    errors.append('"model-index[].results[].dataset" needs "type" and "name"')
                metrics = result.get("metrics")
                if not isinstance(metrics, list) or not metrics:
                    errors.append('"model-index[].results[].metrics" must be a non-empty array')
                for metric in metrics if isinstance(metrics, list) else []:
                    if not isinstance(metric.get("type"), str) or "value" not in metric:
                        errors.append('"model-index[].results[].metrics[]" needs "type" and "value"')
    return errors, []
