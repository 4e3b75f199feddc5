"""MkDocs hook: one API reference page per public module of xpcnn, generated at build time.

Every module under ``xpcnn/`` whose dotted name has no part starting with ``_`` gets
``api/<dotted name>.md``, which mkdocstrings fills from its docstrings; ``api/index.md``
lists them by package, and the navigation's "API reference" entry becomes a section with
all of them. A module added to xpcnn appears here without anyone editing the docs.
Nothing is imported: the files are found on disk and griffe reads the source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

PACKAGE = Path(__file__).resolve().parents[2] / "xpcnn"


def public_modules(package: Path = PACKAGE) -> list[str]:
    """Dotted names of xpcnn's public modules (packages included), sorted."""
    names = []
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(p.startswith("_") for p in parts):
            names.append(".".join(parts))
    return sorted(names)


def _index(modules: list[str]) -> str:
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings of every public module (names without a leading",
        "underscore). Shapes are `(N, C, H, W)` unless a docstring says otherwise; arrays are",
        "of any supported library unless it says NumPy.",
        "",
    ]
    for name in modules:
        depth = name.count(".")
        indent = "    " * max(depth - 1, 0)
        bullet = "" if depth == 0 else f"{indent}- "
        lines.append(f"{bullet}[`{name}`]({name}.md)" + ("" if depth else "\n"))
    return "\n".join(lines) + "\n"


def on_config(config: Any) -> Any:
    """Expand the nav entry ``API reference: api/index.md`` into every module's page."""
    for i, entry in enumerate(config["nav"] or []):
        if isinstance(entry, dict) and entry.get("API reference") == "api/index.md":
            pages = [{"Index": "api/index.md"}]
            pages += [{name: f"api/{name}.md"} for name in public_modules()]
            config["nav"][i] = {"API reference": pages}
    return config


def on_files(files: Files, config: Any) -> Files:
    modules = public_modules()
    files.append(File.generated(config, "api/index.md", content=_index(modules)))
    for name in modules:
        page = f"# `{name}`\n\n::: {name}\n"
        files.append(File.generated(config, f"api/{name}.md", content=page))
    return files
