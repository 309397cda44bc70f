#!/usr/bin/env python3
"""Rebuild docs/deviations.md from the per-area files in docs/deviations.d/ (sorted).

Each area keeps its own list (written next to the code that deviates); this page is what
users read. `tests/test_docs.py` checks that it is up to date.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = """# Deviations from FORCE

l2ps keeps FORCE's interfaces (parameter file, queue, cube layout, file names, QAI bits) and
follows its method (spec/ beside the project describes FORCE 3.10.01). Where FORCE has a
bug, depends on thread scheduling or on directory order, or where a deliberate improvement
was decided (DESIGN.md), l2ps does something else — listed here, by area, with the spec
section. Generated from `docs/deviations.d/*.md` by `tools/collect_deviations.py`.
"""


def build() -> str:
    parts = [HEADER]
    for f in sorted((ROOT / "docs" / "deviations.d").glob("*.md")):
        text = f.read_text().strip()
        if not text.startswith("#"):
            text = f"## {f.stem}\n\n{text}"
        # every area is a level-2 section
        lines = text.splitlines()
        if lines[0].startswith("# "):
            lines[0] = "#" + lines[0]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    out = ROOT / "docs" / "deviations.md"
    text = build()
    if "--check" in sys.argv:
        sys.exit(0 if out.exists() and out.read_text() == text else 1)
    out.write_text(text)
    print(f"wrote {out}")
