"""README.md is the front door: short, the way from `make serve` to `fcn` and to training
(CPU-only torch included), and figures that agree with the code and the demo's record."""

from __future__ import annotations

import json
import re
from pathlib import Path

from model.nets.fcn import FCN8s

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", ROOT / "models/demo/MODEL_CARD.md", *sorted(ROOT.glob("docs/**/*.md"))]


def test_the_readme_is_a_front_page_not_the_manual() -> None:
    assert len(README.splitlines()) < 250
    top = "\n".join(README.splitlines()[:15])
    assert "make serve" in top
    assert "make test" in top
    for page in ("docs/getting-started.md", "docs/serving/settings.md", "docs/training/install.md"):
        assert f"]({page})" in README or page in README, page
        assert (ROOT / page).is_file()


def test_the_readme_says_how_to_run_fcn_after_make_serve_and_how_to_install_training() -> None:
    # `make serve` puts nothing on PATH: a bare `fcn` is "command not found".
    assert ".venv/bin/fcn pretrained --list" in README
    assert ". .venv/bin/activate" in README
    assert "pip install -e '.[train]'" in README
    # Without a GPU the default torch wheel is the CUDA build: the CPU-only index is named.
    assert "https://download.pytorch.org/whl/cpu" in README


def test_the_fcn8s_context_is_the_networks_own_everywhere() -> None:
    said = set()
    for page in PAGES:
        text = page.read_text()
        for found in re.finditer(r"(\d{3}) pixels (?:either|a) side", text):
            around = text[max(0, found.start() - 80) : found.end() + 40]
            if "FCN-8s" in around:
                said.add((page.relative_to(ROOT).as_posix(), int(found.group(1))))
    assert said, "no page states the context"
    assert {n for _, n in said} == {FCN8s.context}, said


def test_the_demo_rebuild_time_agrees_with_the_recorded_stage_times() -> None:
    seconds = json.loads((ROOT / "models/demo/recipe.json").read_text())["seconds"]
    stages = sum(seconds[s] for s in ("fcn32s", "fcn16s", "fcn8s")) / 60
    stated = re.search(r"about 20 minutes: ([\d.]+) of them train the three stages", README)
    assert stated is not None
    assert abs(float(stated.group(1)) - stages) < 0.05
    card = (ROOT / "models/demo/MODEL_CARD.md").read_text()
    assert f"{stages:.1f} minutes for the three stages" in card
