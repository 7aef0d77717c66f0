"""A two-head net's export names its second head's classes, and `fcn info` shows them."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest

from model.cli import main
from tests.factory import exported, exported_two_head


@pytest.mark.slow
def test_the_geometry_classes_travel_in_the_file_and_fcn_info_shows_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, path = exported_two_head()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["fcn.geometry_classes"]) == ["sky", "horizontal", "vertical"]
    assert [o.name for o in session.get_outputs()][-1] == "geometry"
    assert main(["info", str(path)]) == 0
    assert "\ngeometry output (3): sky, horizontal, vertical\n" in capsys.readouterr().out
    assert main(["info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["geometry_classes"] == [
        "sky",
        "horizontal",
        "vertical",
    ]
    # A one-head file says nothing of geometry, as before.
    _, one = exported()
    assert (
        "fcn.geometry_classes"
        not in ort.InferenceSession(one, providers=["CPUExecutionProvider"])
        .get_modelmeta()
        .custom_metadata_map
    )
    assert main(["info", str(one)]) == 0
    assert "geometry" not in capsys.readouterr().out
