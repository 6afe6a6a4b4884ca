"""The one exception of the data pipelines (and of the tasks built on them): an input a run cannot use."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


class InputError(ValueError):
    """An input a run cannot use (a file, folder, column, dataset or a value that does not fit the data).
    ``argument`` is the parameter (and flag, ``--<argument>``) that gave it, ``value`` its value; the message says
    what is wrong and what is expected. The training scripts answer it with one ``error:`` line."""

    def __init__(self, argument: str, value: Any, problem: str) -> None:
        self.argument, self.value, self.problem = argument, value, problem
        super().__init__(problem)

    @property
    def flag(self) -> str:
        return f"--{self.argument}"


def shown_path(path: str | os.PathLike) -> str:
    """``path`` as an error shows it: as given, or quoted where the bare text would be invisible or ambiguous
    (empty, or blank at either end: ``--train_file ''`` is shown as ``''``, not as nothing)."""
    text = os.fspath(path)
    return text if text and text == text.strip() else repr(text)


@contextlib.contextmanager
def loading_dataset(argument: str, value: Any) -> Iterator[None]:
    """Around ``datasets.load_dataset``: an unknown dataset or configuration, missing files or no network
    (``FileNotFoundError``, ``ValueError``, ``ConnectionError``) become an ``InputError`` of ``argument``."""
    try:
        yield
    except (FileNotFoundError, ValueError, ConnectionError) as err:
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(argument, value, f"cannot load {value!r}: {cause}") from err


__all__ = ["InputError", "loading_dataset", "shown_path"]
