"""``mkdocs build --strict`` (``make docs``, run by ``make test``) refuses a broken link or
anchor, naming the page: the site cannot ship one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def build(tmp_path: Path, page: str, text: str) -> subprocess.CompletedProcess[str]:
    """Build a copy of docs/ in which ``page`` ends with ``text``, with this repository's
    mkdocs.yml (its hooks and its links' validation)."""
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    with (docs / page).open("a") as out:
        out.write(text)
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        f"INHERIT: {ROOT / 'mkdocs.yml'}\n"
        f"docs_dir: {docs}\n"
        f"site_dir: {tmp_path / 'site'}\n"
        f"hooks:\n  - {ROOT / 'docs' / 'hooks' / 'reference.py'}\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config)],
        check=False,
        cwd=ROOT,  # the snippets (BENCHMARKS.md, the model card) are read from here
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_a_broken_link_or_anchor_fails_the_build_naming_the_page(tmp_path: Path) -> None:
    # One build for both (a build takes seconds): a page that is not there, and a heading
    # that is not there (MkDocs only reports those at info level unless told otherwise).
    broken = "\n[gone](no-such-page.md) [gone](serving/settings.md#no-such-heading)\n"
    result = build(tmp_path, "index.md", broken)
    assert result.returncode != 0
    assert "'index.md' contains a link 'no-such-page.md'" in result.stderr
    assert "'serving/settings.md#no-such-heading'" in result.stderr
