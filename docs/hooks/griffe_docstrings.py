"""Griffe extension for the API reference: keep the text that xpcnn's docstrings put after
a section, which griffe's parsers would otherwise drop (with a warning).

- NumPy style: a paragraph after a ``Parameters`` (or other) section, past a blank line, is
  prose, not an item; it gets a ``Notes`` heading so that it is shown.
- Google style: an item whose exception names run onto the next line
  (``FileNotFoundError, NotADirectoryError,`` / ``IsADirectoryError: ...``) is joined.
- Sphinx roles (``:class:`~xpcnn.backend.Device```) become code spans (``Device``), as
  Sphinx shows them.

Nothing changes in the source; only the text griffe parses for the site.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# "name", "a, b, c", "name : type ...", "*args : ..." are items; anything else is prose.
ITEM = re.compile(r"\*{0,2}\w+(\s*,\s*\*{0,2}\w+)*(\s*:(\s.*)?)?")
DASHES = re.compile(r"-{3,}")
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj):`(~?)([^`]+)`")


def roles(text: str) -> str:
    return ROLE.sub(lambda m: f"`{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}`", text)


def numpy_notes(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    in_section = False
    for i, line in enumerate(lines):
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if DASHES.fullmatch(following.strip()) and line.strip():
            in_section = line.strip().lower() != "notes"
        elif (
            in_section
            and line
            and not line.startswith(" ")
            and out
            and not out[-1].strip()
            and not DASHES.fullmatch(line.strip())
            and not ITEM.fullmatch(line)
        ):
            out.extend(["Notes", "-----"])
            in_section = False
        out.append(line)
    return "\n".join(out)


def google_joined(text: str) -> str:
    return re.sub(r"(\n\s+)((?:\w+, )*\w+,)\n\s+(\w+:)", r"\1\2 \3", text)


class KeepTrailingText(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            value = roles(obj.docstring.value)
            if re.search(r"\n-{3,}\n", "\n" + value + "\n"):
                obj.docstring.value = numpy_notes(value)
            else:
                obj.docstring.value = google_joined(value)
