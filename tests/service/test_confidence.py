"""How sure the model is, through POST /segment: the confidence map, the JSON figures, the
unsure pixels of overlays, and the refusals of a model exported without it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from contract.encode import UNSURE_COLOR, below
from tests.images import encode, pattern
from tests.service.support import IMAGE, PNG, assert_error, png_labels, serve

pytestmark = pytest.mark.anyio


def reference(session: ort.InferenceSession, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and confidence of one H x W x 3 image straight from ONNX Runtime."""
    labels, confidence = session.run(["labels", "confidence"], {"image": image[None]})
    return labels[0], confidence[0]


def grey(content: bytes) -> np.ndarray:
    picture = Image.open(io.BytesIO(content))
    assert (picture.format, picture.mode) == ("PNG", "L")
    return np.asarray(picture)


async def test_the_confidence_map_is_a_grey_png_of_the_images_size(
    model_path: Path, session: ort.InferenceSession
) -> None:
    _, expected = reference(session, IMAGE)
    assert len(np.unique(expected)) > 5  # a real map, not one value
    async with serve(model_path) as client:
        response = await client.post("/segment?format=confidence", files={"image": ("a", PNG)})
        reduced = await client.post(
            "/segment?format=confidence&max_side=30", files={"image": ("a", PNG)}
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(grey(response.content), expected)
    assert grey(reduced.content).shape == IMAGE.shape[:2]  # scaled back, like the labels


async def test_json_gives_each_class_its_mean_confidence_and_share_below(
    model_path: Path, session: ort.InferenceSession
) -> None:
    labels, confidence = reference(session, IMAGE)
    async with serve(model_path) as client:
        plain = await client.post("/segment?format=json", files={"image": ("a", PNG)})
        asked = await client.post(
            "/segment?format=json&min_confidence=0.9", files={"image": ("a", PNG)}
        )
    assert plain.status_code == asked.status_code == 200
    body, figures = plain.json(), asked.json()
    assert "min_confidence" not in body
    assert "below_min_confidence" not in body["classes"][0]
    assert figures["min_confidence"] == 0.9
    low = below(confidence, 0.9)
    assert 0 < low.mean() < 1
    assert figures["below_min_confidence"] == pytest.approx(low.mean(), abs=1e-6)
    assert body["mean_confidence"] == pytest.approx(confidence.mean() / 255, abs=1e-6)
    assert len(figures["classes"]) > 1
    for entry in figures["classes"]:
        mine = labels == entry["id"]
        assert entry["mean_confidence"] == pytest.approx(confidence[mine].mean() / 255, abs=1e-6)
        assert entry["below_min_confidence"] == pytest.approx(low[mine].mean(), abs=1e-6)
    assert [c["mean_confidence"] for c in body["classes"]] == [
        c["mean_confidence"] for c in figures["classes"]
    ]


async def test_overlays_paint_pixels_below_min_confidence_unsure_and_name_them(
    model_path: Path, session: ort.InferenceSession
) -> None:
    _, confidence = reference(session, IMAGE)
    low = below(confidence, 0.9)
    query = "/segment?format=overlay&image_format=png&alpha=1"
    async with serve(model_path) as client:
        plain = await client.post(query, files={"image": ("a", PNG)})
        marked = await client.post(f"{query}&min_confidence=0.9", files={"image": ("a", PNG)})
        legend = await client.post(
            f"{query}&min_confidence=0.9&legend=true", files={"image": ("a", PNG)}
        )
        sure = await client.post(f"{query}&min_confidence=0", files={"image": ("a", PNG)})
    painted = np.asarray(Image.open(io.BytesIO(marked.content)))
    untouched = np.asarray(Image.open(io.BytesIO(plain.content)))
    assert (painted[low] == UNSURE_COLOR).all()
    np.testing.assert_array_equal(painted[~low], untouched[~low])
    assert sure.content == plain.content  # nothing is below 0
    strip = np.asarray(Image.open(io.BytesIO(legend.content)))[IMAGE.shape[0] :]
    assert UNSURE_COLOR in {tuple(c) for c in strip.reshape(-1, 3).tolist()}


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("format=json&min_confidence=-0.1", "min_confidence: Input should be greater than"),
        ("format=json&min_confidence=1.5", "min_confidence: Input should be less than"),
        ("format=json&min_confidence=high", "min_confidence: Input should be a valid number"),
    ],
    ids=["negative", "above-one", "not-a-number"],
)
async def test_bad_confidence_parameters_are_422(model_path: Path, query: str, words: str) -> None:
    async with serve(model_path) as client:
        response = await client.post(f"/segment?{query}", files={"image": ("a", PNG)})
        after = await client.post("/segment", files={"image": ("a", PNG)})
    error = assert_error(response, 422, "invalid_parameter")
    assert words in error["message"]
    assert after.status_code == 200


async def test_options_of_other_formats_are_ignored_as_alpha_and_legend_are(
    model_path: Path,
) -> None:
    """min_confidence shapes overlays and JSON only; a label map or a confidence map is the
    same with it or without it (as every format ignores the options of the others)."""
    async with serve(model_path) as client:
        for plain, extra in [
            ("format=png", "min_confidence=0.5"),
            ("format=confidence", "min_confidence=0.5&legend=true"),
        ]:
            alone = await client.post(f"/segment?{plain}", files={"image": ("a", PNG)})
            both = await client.post(f"/segment?{plain}&{extra}", files={"image": ("a", PNG)})
            assert alone.status_code == both.status_code == 200, both.text
            assert both.content == alone.content, plain


async def test_a_model_without_confidence_refuses_it_and_keeps_serving_labels(
    model_without_confidence_path: Path, session: ort.InferenceSession
) -> None:
    async with serve(model_without_confidence_path) as client:
        info = (await client.get("/v1/model")).json()
        refused = await client.post("/segment?format=confidence", files={"image": ("a", PNG)})
        threshold = await client.post(
            "/segment?format=overlay&min_confidence=0.5", files={"image": ("a", PNG)}
        )
        labels = await client.post("/segment", files={"image": ("a", PNG)})
        figures = await client.post("/segment?format=json", files={"image": ("a", PNG)})
    assert info["outputs"] == ["labels"]
    message = assert_error(refused, 422, "invalid_parameter")["message"]
    assert message.startswith("?format=confidence: model 'fcn8s-tiny-noconf' has no 'confidence'")
    assert "fcn export --checkpoint CKPT --out MODEL.onnx" in message
    assert "?min_confidence=" in assert_error(threshold, 422, "invalid_parameter")["message"]
    assert labels.status_code == 200
    np.testing.assert_array_equal(png_labels(labels.content), reference(session, IMAGE)[0])
    assert figures.status_code == 200
    assert "mean_confidence" not in figures.json()


async def test_a_tiled_confidence_map_has_the_images_size(model_path: Path) -> None:
    png = encode(pattern(150, 230, seed=4), "PNG")
    async with serve(model_path) as client:
        query = "format=confidence&tile=always&tile_size=160&tile_overlap=32"
        response = await client.post(f"/segment?{query}", files={"image": ("a", png)})
    assert response.status_code == 200, response.text
    assert int(response.headers["X-Tiles"]) >= 2
    assert grey(response.content).shape == (150, 230)


async def test_the_openapi_document_declares_the_format_and_the_threshold(
    model_path: Path,
) -> None:
    async with serve(model_path) as client:
        document = (await client.get("/openapi.json")).json()
    operation = document["paths"]["/segment"]["post"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    formats = next(c for c in parameters["format"]["schema"]["anyOf"] if "enum" in c)["enum"]
    assert "confidence" in formats
    bounds = next(c for c in parameters["min_confidence"]["schema"]["anyOf"] if "type" in c)
    assert (bounds.get("minimum"), bounds.get("maximum")) == (0, 1)
    assert "confidence" in operation["responses"]["422"]["description"]
