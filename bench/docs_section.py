"""The one place benchmarks write their results: a marked section of docs/benchmarks.md.

Each benchmark owns the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``; a rerun
with ``--update-docs`` replaces only that text. A missing section is appended under
``heading`` (``None``: the text carries its own).
"""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def markers(name):
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def update_section(name, text, heading, path=DOC):
    """Replace benchmark ``name``'s section of ``path`` with ``text``; print what was updated."""
    begin, end = markers(name)
    doc = path.read_text()
    if begin not in doc:
        title = f"{heading}\n\n" if heading else ""
        doc = doc.rstrip("\n") + f"\n\n{title}{begin}\n{end}\n"
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text.strip(chr(10))}\n{end}{tail}")
    print(f"updated {path}")
