"""The documentation users get stands alone: every relative link in README.md and docs/ resolves to a file inside
the repository (a clone has no ../shared/ beside it)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_relative_link_resolves_inside_the_repository():
    documents = [REPO / "README.md", REPO / "manifests" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    assert len(documents) >= 8
    for document in documents:
        text = document.read_text()
        assert "shared/" not in text, f"{document.name} points at ../shared/, which users do not have"
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or not re.search(r"[./]", target):  # "[CLS](x)" is notation, not a link
                continue
            resolved = (document.parent / target).resolve()
            assert resolved.is_relative_to(REPO), f"{document.name}: {target} leaves the repository"
            assert resolved.exists(), f"{document.name}: {target} does not exist"
