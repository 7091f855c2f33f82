"""docs/benchmarks.md: each benchmark script owns one section between its markers."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(name: str, content: str, heading: str) -> None:
    """Replace what stands between ``<!-- name:start -->`` and ``<!-- name:end -->`` with
    ``content``; if the markers are missing, append them under ``heading``."""
    text = DOC.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{content}{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text += f"\n## {heading}\n\n{block}\n"
    DOC.write_text(text)
