"""Class-name files: a list of names, or names with colours, in JSON or YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.palette import voc_colormap
from model.data.classes import load_classes_file
from model.data.datasets import DataError


def test_classes_file_forms(tmp_path: Path) -> None:
    listed = tmp_path / "classes.json"
    listed.write_text(json.dumps(["bg", "fg"]))
    assert load_classes_file(listed) == (["bg", "fg"], voc_colormap(2))
    entries = tmp_path / "classes.yml"
    entries.write_text(
        "classes:\n  - {name: bg, color: [1, 2, 3]}\n  - {name: fg, color: [4, 5, 6]}\n"
    )
    assert load_classes_file(entries) == (["bg", "fg"], [(1, 2, 3), (4, 5, 6)])
    entries.write_text("classes: [bg, bg]\n")
    with pytest.raises(DataError, match="classes.yml: need at least 2 distinct"):
        load_classes_file(entries)
