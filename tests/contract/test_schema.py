"""The schema-1 rules: metadata parsed or refused with words naming the file and the key,
and the graph's tensors held to the contract."""

from __future__ import annotations

import json

import pytest

from contract.schema import (
    REQUIRED_KEYS,
    MetadataError,
    TensorSpec,
    check_model,
    check_tensors,
    parse_metadata,
)

PROPS = {
    "fcn.schema": "1",
    "fcn.arch": "fcn8s",
    "fcn.backbone": "vgg16",
    "fcn.width": "0.125",
    "fcn.classes": json.dumps(["background", "disc", "square"]),
    "fcn.palette": json.dumps([[0, 0, 0], [128, 0, 0], [0, 128, 0]]),
    "fcn.ignore_index": "255",
    "fcn.dataset": "synthetic",
    "fcn.metrics": json.dumps({"mean_iu": 0.885}),
    "fcn.created": "2026-12-02T12:00:00+00:00",
}
INPUTS = [TensorSpec("image", "uint8", ("N", "H", "W", 3))]
OUTPUTS = [TensorSpec("labels", "uint8", ("N", "H", "W"))]


def test_complete_metadata_parses_with_the_optional_keys_defaulted() -> None:
    meta = parse_metadata(PROPS, "m.onnx")
    assert meta.classes == ("background", "disc", "square")
    assert meta.palette[1] == (128, 0, 0)
    assert (meta.precision, meta.outputs, meta.preprocessing) == ("fp32", ("labels",), {})
    assert meta.label_dtype == "uint8"
    assert meta.to_dict()["metrics"] == {"mean_iu": 0.885}
    assert meta.origin == {}  # weights trained here have no published origin
    assert meta.quantization == {}
    assert "quantization" not in meta.to_dict()


def test_the_quantization_of_an_int8_file_is_read_and_reported() -> None:
    scheme = {"format": "QDQ", "ops": ["Conv"], "calibration": {"images": 32}}
    meta = parse_metadata({**PROPS, "fcn.quantization": json.dumps(scheme)}, "m.onnx")
    assert meta.quantization == scheme
    assert meta.to_dict()["quantization"] == scheme
    assert meta.precision == "fp32"  # the float parts' precision; the contract is unchanged


def test_the_exporters_note_is_read_and_reported_and_kept_to_one_line() -> None:
    assert parse_metadata(PROPS, "m.onnx").to_dict()["note"] == ""  # none: an empty note
    note = "synthetic shapes only; for photos serve voc-fcn8s"
    meta = parse_metadata({**PROPS, "fcn.note": note}, "m.onnx")
    assert meta.note == note
    assert meta.to_dict()["note"] == note
    with pytest.raises(MetadataError, match=r"^m.onnx: fcn.note must be one line$"):
        parse_metadata({**PROPS, "fcn.note": "one\ntwo"}, "m.onnx")
    with pytest.raises(MetadataError, match="fcn.note is 201 characters"):
        parse_metadata({**PROPS, "fcn.note": "x" * 201}, "m.onnx")


def test_the_origin_of_published_weights_is_read_and_reported() -> None:
    origin = {"name": "voc-fcn8s", "url": "http://127.0.0.1/fcn8s.caffemodel", "sha1": "ab" * 20}
    meta = parse_metadata({**PROPS, "fcn.origin": json.dumps(origin)}, "m.onnx")
    assert meta.origin == origin
    assert meta.to_dict()["origin"] == origin


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_every_required_key_is_required(key: str) -> None:
    props = {k: v for k, v in PROPS.items() if k != key}
    with pytest.raises(MetadataError, match=f"^m.onnx: not an FCN model, metadata lacks {key}$"):
        parse_metadata(props, "m.onnx")


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("fcn.schema", "2", "fcn.schema is '2', this reader knows '1'"),
        ("fcn.palette", json.dumps([[0, 0, 0]]), "fcn.palette has 1 colours for 3 classes"),
        ("fcn.palette", json.dumps([[0, 0, 0], [1, 2], [3, 4, 5]]), "is not \\[r, g, b\\]"),
        ("fcn.palette", json.dumps([[0, 0, 0], [0, 0, 256], [3, 4, 5]]), "outside 0-255"),
        ("fcn.classes", "[]", "not a non-empty list"),
        ("fcn.classes", "[background", "fcn.classes is not valid JSON"),
        ("fcn.width", "wide", "malformed fcn.\\* metadata"),
        ("fcn.precision", "fp8", "fcn.precision is 'fp8'"),
        ("fcn.outputs", json.dumps(["scores"]), "it must list 'labels'"),
        ("fcn.origin", json.dumps(["voc-fcn8s"]), "malformed fcn.\\* metadata"),
        ("fcn.origin", "{name", "fcn.origin is not valid JSON"),
        ("fcn.quantization", '"int8"', "fcn.quantization is not a JSON object"),
        ("fcn.quantization", "{format", "fcn.quantization is not valid JSON"),
    ],
    ids=["schema", "short-palette", "bad-colour", "colour-range", "no-classes", "json",
         "width", "precision", "outputs", "origin-list", "origin-json", "quantization-string",
         "quantization-json"],
)  # fmt: skip
def test_malformed_metadata_is_refused_naming_the_key(key: str, value: str, words: str) -> None:
    with pytest.raises(MetadataError, match=f"^m.onnx: .*{words}"):
        parse_metadata({**PROPS, key: value}, "m.onnx")


CONFIDENT = {**PROPS, "fcn.outputs": json.dumps(["labels", "confidence"])}
CONFIDENCE = TensorSpec("confidence", "uint8", ("N", "H", "W"))


def test_tensors_that_keep_the_contract_pass() -> None:
    meta = parse_metadata(PROPS)
    assert not meta.has_confidence
    assert check_tensors(INPUTS, OUTPUTS, meta) == []
    scored = parse_metadata({**PROPS, "fcn.outputs": json.dumps(["labels", "scores"])})
    scores = TensorSpec("scores", "float", ("N", 3, "H", "W"))
    assert check_tensors(INPUTS, [*OUTPUTS, scores], scored) == []
    confident = parse_metadata(CONFIDENT)
    assert confident.has_confidence
    assert check_tensors(INPUTS, [*OUTPUTS, CONFIDENCE], confident) == []


@pytest.mark.parametrize(
    ("outputs", "words"),
    [
        ([*OUTPUTS, TensorSpec("confidence", "float", ("N", "H", "W"))], "'confidence' is float"),
        ([*OUTPUTS, TensorSpec("confidence", "uint8", ("N", 1, "H", "W"))], "has rank 4"),
        (OUTPUTS, "the graph has no 'confidence' tensor"),
    ],
    ids=["float", "rank", "missing"],
)
def test_a_confidence_output_is_held_to_the_contract(outputs: list[TensorSpec], words: str) -> None:
    with pytest.raises(MetadataError, match=f"^m.onnx: .*{words}"):
        check_model(CONFIDENT, INPUTS, outputs, "m.onnx")


def test_a_graph_with_an_undeclared_confidence_output_is_refused() -> None:
    with pytest.raises(MetadataError, match="the graph's outputs are .*fcn.outputs says"):
        check_model(PROPS, INPUTS, [*OUTPUTS, CONFIDENCE], "m.onnx")


@pytest.mark.parametrize(
    ("inputs", "outputs", "words"),
    [
        ([TensorSpec("image", "float", ("N", "H", "W", 3))], OUTPUTS, "'image' is float"),
        ([TensorSpec("image", "uint8", (1, "H", "W", 3))], OUTPUTS, "fixed N, H or W"),
        ([TensorSpec("image", "uint8", ("N", "H", "W", 4))], OUTPUTS, "3 channels"),
        ([TensorSpec("pixels", "uint8", ("N", "H", "W", 3))], OUTPUTS, "no 'image' tensor"),
        (INPUTS, [TensorSpec("labels", "int32", ("N", "H", "W"))], "'labels' is int32"),
        (INPUTS, [TensorSpec("labels", "uint8", ("H", "W"))], "'labels' has rank 2"),
        (INPUTS, [*OUTPUTS, TensorSpec("scores", "float", ("N", 3, "H", "W"))], "fcn.outputs"),
    ],
    ids=["input-type", "fixed-size", "channels", "input-name", "label-type", "label-rank",
         "undeclared-scores"],
)  # fmt: skip
def test_tensors_that_break_it_are_named(
    inputs: list[TensorSpec], outputs: list[TensorSpec], words: str
) -> None:
    problems = check_tensors(inputs, outputs, parse_metadata(PROPS))
    assert any(words in p for p in problems), problems
    with pytest.raises(MetadataError, match=f"^m.onnx: .*{words}"):
        check_model(PROPS, inputs, outputs, "m.onnx")


def test_a_second_heads_geometry_output_is_optional_uint8_labels() -> None:
    two = parse_metadata({**PROPS, "fcn.outputs": json.dumps(["labels", "geometry"])})
    geometry = TensorSpec("geometry", "uint8", ("N", "H", "W"))
    assert check_tensors(INPUTS, [*OUTPUTS, geometry], two) == []
    wrong = TensorSpec("geometry", "int64", ("N", "H", "W"))
    assert check_tensors(INPUTS, [*OUTPUTS, wrong], two) == [
        "'geometry' is int64, the contract says uint8"
    ]
    assert check_tensors(INPUTS, OUTPUTS, two) == [
        "the graph has no 'geometry' tensor",
        "the graph's outputs are ['labels'], fcn.outputs says ['geometry', 'labels']",
    ]
    with pytest.raises(MetadataError, match="may add 'confidence', 'scores', 'geometry'"):
        parse_metadata({**PROPS, "fcn.outputs": json.dumps(["labels", "depth"])})


def test_the_geometry_classes_are_read_else_sift_flows_and_only_with_the_output() -> None:
    outputs = {"fcn.outputs": json.dumps(["labels", "geometry"])}
    old = parse_metadata({**PROPS, **outputs})  # exported before fcn.geometry_classes
    assert old.geometry_classes == ("sky", "horizontal", "vertical")
    assert old.to_dict()["geometry_classes"] == ["sky", "horizontal", "vertical"]
    assert len(old.to_dict()["geometry_palette"]) == 3
    named = parse_metadata({**PROPS, **outputs, "fcn.geometry_classes": '["up", "down"]'})
    assert named.geometry_classes == ("up", "down")
    one = parse_metadata({**PROPS, "fcn.geometry_classes": '["up", "down"]'})
    assert (one.has_geometry, one.geometry_classes) == (False, ())
    assert "geometry_classes" not in one.to_dict()  # a one-head file's report is as before


@pytest.mark.parametrize("value", ['"sky"', "[]", "[1, 2]", "{"])
def test_malformed_geometry_classes_are_refused_naming_the_key(value: str) -> None:
    props = {**PROPS, "fcn.outputs": '["labels", "geometry"]', "fcn.geometry_classes": value}
    with pytest.raises(MetadataError, match="fcn.geometry_classes"):
        parse_metadata(props)


def test_above_255_classes_the_labels_are_int32() -> None:
    classes = [f"c{i}" for i in range(300)]
    props = {
        **PROPS,
        "fcn.classes": json.dumps(classes),
        "fcn.palette": json.dumps([[i % 256, 0, 0] for i in range(300)]),
    }
    labels = [TensorSpec("labels", "int32", ("N", "H", "W"))]
    assert check_model(props, INPUTS, labels, "m.onnx").label_dtype == "int32"
