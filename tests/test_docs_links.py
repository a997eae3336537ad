"""Every relative link and image in the docs points at a file of the repository (the README's
screenshots included), so a reader never follows a link to nothing."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    ROOT / "clients" / "python" / "README.md",
    *sorted((ROOT / "docs").rglob("*.md")),
]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_relative_links_and_images_exist() -> None:
    checked = 0
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            assert path.exists(), f"{doc.relative_to(ROOT)} links to a missing {target}"
            checked += 1
    assert checked >= 3  # the README's screenshots at least


def test_the_readme_screenshots_are_real_pictures() -> None:
    for name in ("overview.png", "model.png", "report.png"):
        data = (ROOT / "docs" / "images" / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 50_000, name
