"""The ``python scripts/X.py ...`` commands that README.md and docs/*.md show, and the flags each script has."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from doc_examples import REPO, code_blocks, doc_pages

SCRIPT = re.compile(r"^scripts/(?P<name>\w+)\.py$")
INLINE = re.compile(r"`([^`]*\bscripts/\w+\.py[^`]*)`")
FLAG = re.compile(r"--[A-Za-z][\w-]*")


@dataclass(frozen=True)
class Command:
    """A script command shown in a page: where, which script, the flags given to the script itself."""

    where: str
    script: str
    flags: tuple[str, ...]


def _commands_in(text: str, where: str) -> list[Command]:
    """Each script invocation of a shell text; flags after a bare ``--`` belong to another script (the
    training script of ``evaluate_deq.py`` / ``compare_estimators.py``) and are not collected."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        for i, token in enumerate(tokens):
            match = SCRIPT.match(token)
            if not match:
                continue
            flags = []
            for arg in tokens[i + 1 :]:
                if arg in ("--", "&&", "||", "|", ";"):
                    break
                if arg.startswith("--"):
                    flags.append(arg.split("=", 1)[0])
            found.append(Command(where, match["name"], tuple(flags)))
    return found


def _prose(text: str) -> str:
    """``text`` with the lines of its fenced code blocks blanked (line numbers kept): inline code only."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return "\n".join(lines)


def documented_commands() -> list[Command]:
    """Every script command of the shell blocks and inline code of README.md and docs/*.md."""
    commands = []
    for page in doc_pages():
        relative = page.relative_to(REPO)
        for block in code_blocks(page):
            if block.lang in ("bash", "sh", "shell", "console"):
                commands += _commands_in(block.code, f"{relative}:{block.line}")
        text = _prose(page.read_text(encoding="utf-8"))
        for match in INLINE.finditer(text):
            line = text[: match.start()].count("\n") + 1
            commands += _commands_in(" ".join(match[1].split()), f"{relative}:{line}")
    return commands


def script_flags(name: str) -> set[str]:
    """The flags ``scripts/<name>.py --help`` lists (run in this process: the script's ``main`` with
    ``sys.argv`` set, as ``python scripts/<name>.py --help`` would)."""
    from script_loading import load_script

    module = load_script(name)
    out = io.StringIO()
    argv = sys.argv
    sys.argv = [f"scripts/{name}.py", "--help"]
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            module.main()
    finally:
        sys.argv = argv
    return set(FLAG.findall(out.getvalue()))


def scripts_on_disk() -> set[str]:
    """The names of the scripts in ``scripts/``."""
    return {path.stem for path in Path(REPO, "scripts").glob("*.py")}
