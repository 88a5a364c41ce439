"""The docs folder holds together: every page is listed in docs/README.md, every relative link in the
docs and the README resolves, and the generated parts (configuration reference, module map) are current."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.glob("*.md") if p.name != "README.md")


def test_every_page_is_in_the_index() -> None:
    index = (DOCS / "README.md").read_text()
    linked = set(re.findall(r"\]\(([a-z0-9-]+\.md)\)", index))
    assert linked == {p.name for p in PAGES}, {"missing": {p.name for p in PAGES} - linked, "dangling": linked}


@pytest.mark.parametrize("page", [*PAGES, DOCS / "README.md", ROOT / "README.md"], ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    for target in re.findall(r"\]\((?!https?:|mailto:|#)([^)\s]+)\)", page.read_text()):
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name}: link to {target} points nowhere"


def test_generated_docs_are_current() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr


def test_the_module_map_shows_both_sdks_standing_alone() -> None:
    """Read from the code: the relying party's and the workload's SDKs import nothing of the server."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_docs
    finally:
        sys.path.pop(0)
    current = (DOCS / "architecture.md").read_text()
    generated = gen_docs.module_map()
    assert generated in current
    assert "| `verify/` | — |" in generated and "| `client/` | — |" in generated
