"""User-supplied text in a model card (class names, dataset and configuration names, folder names, config values,
recipe flags): one escaping rule for every insertion, so that such text shows as itself and never becomes
Markdown or HTML (a link, a heading, a table cell, a ``<script>``) or breaks the YAML metadata.

The card's Jinja environment passes every ``{{ ... }}`` value through ``card_value``: text the card builds
itself (the YAML block, a link to a Hub dataset, a code span) is marked ``Markup`` from already escaped parts;
anything else is escaped with ``escape_card_text``. The YAML metadata gets the same helper with
``markdown=False`` (one line, no control characters; the YAML writer quotes the rest).
"""

from __future__ import annotations

import re
from typing import Any

from markupsafe import Markup

#: line breaks, tabs and other control characters: user text stays on one line (no new heading, list or block)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
#: HTML's special characters, as entities
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}
#: Markdown's inline punctuation: escapes, code, emphasis, links and images, headings, table cells, strikethrough
_MARKDOWN = re.compile(r"[\\`*\[\]#|~]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")


def escape_card_text(value: Any, *, markdown: bool = True) -> str:
    """``value`` as literal card text: on one line (control characters become a space); with ``markdown``, HTML's
    ``& < > "`` as entities and Markdown's punctuation backslash-escaped (an intraword ``_``, as in
    ``hidden_size``, is left: it emphasises nothing)."""
    text = _CONTROL.sub(" ", str(value))
    if not markdown:
        return text
    text = _MARKDOWN.sub(lambda m: "\\" + m.group(0), text)
    return "".join(_HTML.get(ch, ch) for ch in text)


def card_value(value: Any) -> str:
    """The ``finalize`` of the card templates: ``Markup`` (text the card built) as is, anything else escaped."""
    if isinstance(value, Markup):
        return str(value)
    return escape_card_text(value)


def code_span(value: Any) -> Markup:
    """``value`` as a Markdown code span (shown verbatim): on one line, delimited by more backticks than any
    run of backticks it holds."""
    text = _CONTROL.sub(" ", str(value))
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return Markup(f"{fence}{pad}{text}{pad}{fence}")


def markdown(template: str, *args: Any) -> Markup:
    """``template.format(*args)`` as card Markdown: ``Markup`` arguments as they are, others escaped."""
    return Markup(template.format(*(card_value(a) for a in args)))


__all__ = ["Markup", "card_value", "code_span", "escape_card_text", "markdown"]
