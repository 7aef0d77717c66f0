"""The docs' generated references (docs/hooks/reference.py): the settings table names every
field of ``Settings`` with its default, the command-line page every subcommand and flag."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from docs.hooks import reference
from model.cli import COMMANDS
from service.cli import _argument_parser as serve_parser
from service.config import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs"


def rows(table: str) -> dict[str, list[str]]:
    """The table's rows by their first cell's variable name."""
    found = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        if cells and cells[0].startswith("`FCN_"):
            found[cells[0].strip("`")] = cells
    return found


def test_the_settings_table_has_a_described_row_for_every_setting() -> None:
    table = rows(reference.settings_table())
    assert list(table) == [f"FCN_{name.upper()}" for name in Settings.model_fields]
    undescribed = [variable for variable, cells in table.items() if not cells[3]]
    assert not undescribed, f"Field(description=...) missing for {undescribed}"


@pytest.mark.parametrize(
    ("variable", "default", "kind"),
    [
        ("FCN_MODEL_PATH", "(required)", "path"),
        ("FCN_MAX_PIXELS", "`100000000`", "integer, >= 1"),
        ("FCN_PROVIDERS", "`CUDAExecutionProvider,CPUExecutionProvider`", "comma separated"),
        ("FCN_WARMUP_SIZES", "`375x500`", "`HxW` sizes"),
        ("FCN_OVERLAY_ALPHA", "`0.5`", "number, >= 0, <= 1"),
        ("FCN_TILING", "`auto`", "one of `auto`, `always`, `never`"),
        ("FCN_REQUIRE_GPU", "`false`", "`true` or `false`"),
        ("FCN_TRT_CACHE_DIR", "`unset`", "path (optional)"),
    ],
)
def test_settings_are_shown_as_the_environment_writes_them(
    variable: str, default: str, kind: str
) -> None:
    _, shown_default, shown_kind, _ = rows(reference.settings_table())[variable]
    assert shown_default == default
    assert kind in shown_kind


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every subcommand's parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)


def test_the_cli_page_has_every_subcommand_and_flag() -> None:
    page = reference.cli_reference()
    headings = set(re.findall(r"^#+ `(.+)`$", page, re.MULTILINE))
    assert {f"fcn {name}" for name in COMMANDS} <= headings
    assert {"fcn data check", "fcn data synth", "fcn data download", "fcn-serve"} <= headings
    every = [p for command in reference.fcn_commands() for p in parsers(command)]
    missing = [
        f"{parser.prog} {option}"
        for parser in [*every, serve_parser()]
        for action in parser._actions
        for option in action.option_strings
        if option not in {"-h", "--help"} and f"`{option}" not in page
    ]
    assert not missing, missing
    # A flag's default, from the parser (fcn data check --workers).
    assert "| `--workers WORKERS` | `4` | reading threads (default: 4) |" in page


def test_the_reference_pages_hold_their_markers() -> None:
    """Without its marker a page would show no table at all, and the build would not say."""
    for page, marker in [("settings", "settings"), ("cli", "cli")]:
        assert f"<!-- generated: {marker} -->" in (DOCS / "reference" / f"{page}.md").read_text()


def test_markers_are_replaced_and_other_pages_left_alone() -> None:
    page = "# Settings\n\n<!-- generated: settings -->\n"
    rendered = reference.on_page_markdown(page, page=None, config=None, files=None)
    assert "<!-- generated" not in rendered
    assert "| `FCN_MAX_QUEUE` | `64` |" in rendered
    assert reference.on_page_markdown("# Plain\n", page=None, config=None, files=None) == (
        "# Plain\n"
    )
