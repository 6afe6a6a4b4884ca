"""The Hub layer's errors and the repo-id check (made before anything is staged or sent)."""

from __future__ import annotations

import re
from typing import Any


class HubPushError(RuntimeError):
    """Publishing failed; the message says what failed, why, and what to do. Nothing local was modified."""


class InvalidRepoIdError(HubPushError, ValueError):
    """The repo id is not ``name`` or ``namespace/name`` with the Hub's allowed characters."""


class ModelDirError(HubPushError, ValueError):
    """A local model directory is missing or unusable (no ``config.json``, no safetensors weights, not an hf_deq
    model). Raised at once, before the Hub is contacted."""


class BundleError(RuntimeError):
    """The model's modules cannot be turned into a flat remote-code bundle (an import form it cannot rewrite)."""


_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_repo_id(repo_id: Any) -> str:
    """Return ``repo_id`` if it is a valid Hub model id (``name`` or ``namespace/name``), else raise
    ``InvalidRepoIdError`` saying what is wrong. Checked before anything is staged or sent."""
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise InvalidRepoIdError(
            f"invalid Hub repo id {repo_id!r}: expected 'namespace/name' (e.g. 'alice/mdeq-tiny')"
        )
    parts = repo_id.split("/")
    problem = None
    if len(parts) > 2:
        problem = "it has more than one '/'"
    elif any(not p for p in parts):
        problem = "a part is empty"
    elif any(not _REPO_PART.match(p) for p in parts):
        problem = "only letters, digits, '-', '_' and '.' are allowed, and each part must start with a letter or digit"
    elif any("--" in p or ".." in p for p in parts):
        problem = "'--' and '..' are not allowed"
    elif any(len(p) > 96 for p in parts):
        problem = "a part is longer than 96 characters"
    elif parts[-1].endswith((".git", ".ipynb")) or parts[-1].endswith(("-", ".")):
        problem = "the name cannot end with '-', '.', '.git' or '.ipynb'"
    if problem is None:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(repo_id)
        except HFValidationError as err:
            problem = str(err)
    if problem:
        raise InvalidRepoIdError(
            f"invalid Hub repo id {repo_id!r}: {problem}. Expected 'namespace/name' (e.g. 'alice/mdeq-tiny')."
        )
    return repo_id
