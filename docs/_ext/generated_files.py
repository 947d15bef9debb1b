"""Writing the pages the docs extensions generate, so unchanged sources stay unchanged.

Sphinx re-reads a source whose modification time moved; rewriting identical text would make
every build a full rebuild.
"""

from __future__ import annotations

from pathlib import Path


def write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` unless it already holds exactly that."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
