"""A two-head file's second labels (SIFT Flow's geometric classes) through ``?output=geometry``
and the protocol's ``geometry`` output; the 422 and 400 of files without them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from contract.palette import color_table
from contract.schema import GEOMETRY_PALETTE
from model.nets.preprocessing import Normalize
from tests.factory import exported_two_head
from tests.images import encode, pattern
from tests.service.support import IMAGE, PNG, assert_error, png_labels, rle_decode, serve

pytestmark = pytest.mark.anyio
SKY_GROUND_WALL = ["sky", "horizontal", "vertical"]


@pytest.fixture(scope="module")
def two_head() -> Path:
    return exported_two_head()[1]


def onnx_geometry(path: Path, image: np.ndarray) -> np.ndarray:
    """The file's geometry of one H x W x 3 image, straight from ONNX Runtime."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (geometry,) = session.run(["geometry"], {"image": np.ascontiguousarray(image)[None]})
    return np.asarray(geometry[0])


def torch_geometry(image: np.ndarray) -> np.ndarray:
    """The argmax of the tiny two-head net's geometric head, in PyTorch."""
    checkpoint = exported_two_head()[0]
    net = checkpoint.build_model().eval()
    normalize = Normalize(checkpoint.preprocessing)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        _, logits = net(normalize(x), geometry=True)
    return np.asarray(logits.argmax(1)[0].numpy(), dtype=np.uint8)


@pytest.mark.slow
async def test_every_format_draws_the_geometric_head_with_its_own_classes(two_head: Path) -> None:
    async with serve(two_head) as client:
        files = {"image": ("a.png", PNG)}
        png = await client.post("/segment", params={"output": "geometry"}, files=files)
        labels = await client.post("/segment", files=files)
        answer = await client.post(
            "/segment", params={"output": "geometry", "format": "json"}, files=files
        )
        overlay = await client.post(
            "/segment",
            params={"output": "geometry", "format": "overlay", "legend": True},
            files=files,
        )
        model = (await client.get("/v1/model")).json()
    assert png.status_code == 200, png.text
    geometry = png_labels(png.content)
    assert np.array_equal(geometry, onnx_geometry(two_head, IMAGE))
    assert (geometry == torch_geometry(IMAGE)).mean() > 0.99  # float rounding at ties
    assert len(np.unique(geometry)) > 1  # the tiny head's labels vary: the test means something
    # Drawn in the geometry's colours, not the classes' (the labels answer is another map).
    palette = Image.open(io.BytesIO(png.content)).getpalette()
    assert palette is not None
    assert palette[:9] == [v for c in GEOMETRY_PALETTE for v in c]
    assert labels.status_code == 200
    assert not np.array_equal(png_labels(labels.content), geometry)
    body = answer.json()
    assert {c["name"] for c in body["classes"]} <= set(SKY_GROUND_WALL)
    for entry in body["classes"]:
        mask = rle_decode(entry["rle"]) if "rle" in entry else None
        if mask is not None:
            assert np.array_equal(mask, geometry == entry["id"])
    assert overlay.status_code == 200
    assert model["outputs"][0] == "labels"
    assert "geometry" in model["outputs"]
    assert model["geometry_classes"] == SKY_GROUND_WALL
    table = color_table(GEOMETRY_PALETTE)
    assert model["geometry_palette"] == table[:3].tolist()


@pytest.mark.slow
async def test_tiled_geometry_at_the_exact_overlap_is_the_one_pass_answer(two_head: Path) -> None:
    png = encode(pattern(613, 777, seed=4), "PNG")
    async with serve(two_head) as client:
        exact = (await client.get("/v1/model")).json()["tiling"]["exact_overlap"]
        query = {"output": "geometry"}
        whole = await client.post("/segment", params=query, files={"image": ("a.png", png)})
        tiles = {"tile": "always", "tile_size": exact + 80, "tile_overlap": exact}
        tiled = await client.post(
            "/segment", params={**query, **tiles}, files={"image": ("a.png", png)}
        )
    assert whole.headers["X-Tiles"] == "1"
    assert int(tiled.headers["X-Tiles"]) >= 4
    assert tiled.content == whole.content


@pytest.mark.slow
@pytest.mark.runtimes
async def test_the_protocol_route_gives_geometry_where_the_file_has_it(two_head: Path) -> None:
    images = np.stack([pattern(40, 48, seed=s) for s in (1, 2)])
    tensor = {"name": "image", "datatype": "UINT8", "shape": list(images.shape)}
    body = {"inputs": [{**tensor, "data": images.ravel().tolist()}]}
    async with serve(two_head) as client:
        meta = (await client.get("/v2/models/fcn8s-two-head")).json()
        asked = {**body, "outputs": [{"name": "geometry"}]}
        answer = await client.post("/v2/models/fcn8s-two-head/infer", json=asked)
    assert {"name": "geometry", "datatype": "UINT8", "shape": [-1, -1, -1]} in meta["outputs"]
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == (
        "geometry",
        "UINT8",
        [2, 40, 48],
    )
    got = np.asarray(output["data"], dtype=np.uint8).reshape(2, 40, 48)
    for image, geometry in zip(images, got, strict=True):
        assert np.array_equal(geometry, onnx_geometry(two_head, image))


async def test_a_file_without_geometry_refuses_it_and_keeps_serving_labels(
    model_path: Path,
) -> None:
    tensor = {"name": "image", "datatype": "UINT8", "shape": [1, *IMAGE.shape]}
    body = {
        "inputs": [{**tensor, "data": IMAGE.ravel().tolist()}],
        "outputs": [{"name": "geometry"}],
    }
    async with serve(model_path) as client:
        refused = await client.post(
            "/segment", params={"output": "geometry"}, files={"image": ("a.png", PNG)}
        )
        labels = await client.post("/segment", files={"image": ("a.png", PNG)})
        model = (await client.get("/v1/model")).json()
        meta = (await client.get("/v2/models/fcn8s-tiny")).json()
        infer = await client.post("/v2/models/fcn8s-tiny/infer", content=json.dumps(body))
    error = assert_error(refused, 422, "invalid_parameter")
    assert error["message"].startswith("?output=geometry: 'fcn8s-tiny' has no 'geometry' output")
    assert "two-head" in error["message"]
    assert labels.status_code == 200
    assert "geometry_classes" not in model
    assert "geometry" not in [o["name"] for o in meta["outputs"]]
    assert infer.status_code == 400
    assert "no output named 'geometry'" in infer.json()["error"]
    assert "two-head" in infer.json()["error"]
