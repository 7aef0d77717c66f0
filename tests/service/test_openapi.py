"""The OpenAPI document tells the truth: schemathesis generates requests for every operation
from ``/openapi.json`` (valid ones and invalid ones) and runs all its checks on every answer
(statuses, content types, headers and bodies as documented; valid requests accepted, invalid
ones refused), against the app in process on the tiny model.

Half of the /v2 requests name the model served (``name_served``; the others get 404, as
documented). What JSON Schema cannot say, the document says in words and the test makes true
of the valid requests it sends (``made_valid``): an infer request's data matching its shape,
the tiling parameters fitting each other and the model; and image bodies are real images
(``IMAGES``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.configuration
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import strategies as st
from schemathesis.core.failures import FailureGroup
from schemathesis.core.media_types import MEDIA_TYPE_STRATEGIES
from schemathesis.core.parameters import ParameterLocation

from contract.tiling import largest_side
from service.main import create_app
from service.routes import IMAGE_TYPES
from tests.images import encode, pattern
from tests.service.support import settings

EXAMPLES = 30  # per operation and generation mode: bounded, the run takes seconds
# Pillow's names of the formats the body's media types stand for.
FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF", "gif": "GIF"}


def images(media_type: str) -> st.SearchStrategy[bytes]:
    """Small real images of ``media_type``: a schema says "binary", not "decodes as a PNG"."""
    fmt = FORMATS[media_type.removeprefix("image/")]
    sides = st.integers(min_value=1, max_value=40)
    return st.builds(
        lambda h, w, seed: encode(pattern(h, w, seed=seed), fmt), sides, sides, st.integers(0, 9)
    )


IMAGES = {media_type: images(media_type) for media_type in IMAGE_TYPES}


def name_served(case: schemathesis.Case, served: dict[str, str]) -> None:
    """Name the model ``served`` (its name and version) in a /v2 request whose path was
    generated valid; generated names are some other model's (404, as documented)."""
    meta = case.meta
    path = meta.components.get(ParameterLocation.PATH) if meta is not None else None
    if (path is None or path.mode.is_positive) and "name" in (case.path_parameters or {}):
        case.path_parameters.update({k: v for k, v in served.items() if k in case.path_parameters})


def made_valid(
    case: schemathesis.Case,
    largest: int,
    align: int,
    default_overlap: int,
    outputs: tuple[str, ...] = ("labels",),
) -> None:
    """Make a generated valid request valid in what JSON Schema cannot say, as the document
    says it in words (``largest``: the longest tile side of one pass; ``align``: the model's
    tile grid; ``default_overlap``: FCN_TILE_OVERLAP; ``outputs``: the model's):

    - an infer request's data holds N x H x W x 3 values (small N, H, W), its binary data
      (which needs a header and bytes after the JSON) given as data instead;
    - /segment's tile_size fits one pass and exceeds tile_overlap by two grid steps;
    - the outputs asked for (``?output=``, an infer request's ``outputs``) are the model's,
      each named once.
    """
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("inputs"), list) and body["inputs"]:
        (tensor,) = body["inputs"]
        shape = [min(int(side), 3) for side in tensor["shape"][:3]] + [3]
        tensor["shape"] = shape
        tensor["data"] = [0] * (shape[0] * shape[1] * shape[2] * 3)
        if isinstance(tensor.get("parameters"), dict):
            tensor["parameters"].pop("binary_data_size", None)
        if isinstance(body.get("outputs"), list):
            # Each known output once (the first entry naming it).
            first = {o.get("name"): o for o in reversed(body["outputs"])}
            body["outputs"] = [o for name, o in first.items() if name in outputs]
    query = case.query
    if query:
        if query.get("output") not in (None, *outputs):
            query["output"] = "labels"
        size, overlap = query.get("tile_size"), query.get("tile_overlap")
        if size is not None:
            least = 2 * align + (default_overlap if overlap is None else 0)
            query["tile_size"] = size = min(max(size, least), largest)
        if overlap is not None:
            query["tile_overlap"] = min(overlap, (largest if size is None else size) - 2 * align)


@pytest.mark.slow
def test_every_operation_answers_as_its_document_says(
    model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Any,
) -> None:
    # Hypothesis caches what it learns in .hypothesis/ of the working directory: not here.
    hypothesis.configuration.set_hypothesis_home_dir(tmp_path / ".hypothesis")
    for media_type, strategy in IMAGES.items():
        monkeypatch.setitem(MEDIA_TYPE_STRATEGIES, media_type, strategy)
    serving = settings(model_path, access_log=False)
    app = create_app(serving)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # A request both malformed and over FCN_MAX_PIXELS is refused for its size (413): the
    # codec refuses on the shape alone, before it reads the pixels. A refusal all the same.
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    runtime = app.state.service.runtime
    names = {"name": serving.name, "version": runtime.info.version}
    align, largest = runtime.info.meta.tiling.align, largest_side(serving.max_model_pixels)
    operations = [result.ok() for result in schema.get_all_operations()]
    cases = 0
    failures: list[str] = []
    answers: Counter[int] = Counter()

    def check(operation: Any, mode: schemathesis.GenerationMode) -> None:
        """Up to EXAMPLES generated requests of ``mode`` to ``operation``, each validated."""

        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode), served=st.booleans())
        def run(case: schemathesis.Case, served: bool) -> None:
            nonlocal cases
            cases += 1
            if served:
                name_served(case, names)
            if mode is schemathesis.GenerationMode.POSITIVE:
                made_valid(case, largest, align, serving.tile_overlap, runtime.outputs)
            try:
                response = case.call_and_validate()  # every check schemathesis has
                answers[response.status_code] += 1
            except FailureGroup as group:
                failures.append(f"{operation.label} ({mode.value}): {group}")

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            # No parameter and no body (GET /v2, /metrics...): nothing to make invalid.
            assert mode is schemathesis.GenerationMode.NEGATIVE

    try:
        for operation in operations:
            for mode in schemathesis.GenerationMode:
                check(operation, mode)
    finally:
        from schemathesis.python import asgi

        asgi.shutdown_lifespans()  # the app's lifespan, which from_asgi started
    labels = sorted(operation.label for operation in operations)
    summary = f"{len(operations)} operations, {cases} cases, {len(failures)} failures"
    statuses = ", ".join(f"{status} x{n}" for status, n in sorted(answers.items()))
    print(f"schemathesis: {summary}; answers {statuses}; operations: {', '.join(labels)}")
    record_property("schemathesis", summary)
    assert len(operations) == 14, labels  # every route the app serves, /v2 included
    assert cases >= 6 * EXAMPLES  # operations with parameters or a body: their share
    assert failures == [], "\n\n".join(failures)
    # Valid requests reached the model, and invalid ones were refused, on the way.
    assert answers[200] > 0
    assert answers[400] + answers[422] > 0


# --- the document itself --------------------------------------------------------------------


@pytest.fixture(scope="module")
def document(model_path: Path) -> dict[str, Any]:
    """The app's OpenAPI document (no model loaded: the document is the routes')."""
    return create_app(settings(model_path)).openapi()


def operations_of(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{method.upper()} {path}": operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def texts(value: Any) -> list[str]:
    """Every description and summary anywhere in ``value``."""
    if isinstance(value, dict):
        found = [v for k, v in value.items() if k in ("description", "summary")]
        return [t for t in found if isinstance(t, str)] + [
            t for v in value.values() for t in texts(v)
        ]
    if isinstance(value, list):
        return [t for v in value for t in texts(v)]
    return []


def test_every_parameter_has_its_place_and_a_meaning(document: dict[str, Any]) -> None:
    operations = operations_of(document)
    for label, operation in operations.items():
        assert operation.get("description"), label
        for parameter in operation.get("parameters", []):
            assert parameter.get("description"), (label, parameter["name"])
            expected = "path" if "{" + parameter["name"] + "}" in label else "query"
            assert parameter["in"] == expected, (label, parameter["name"])
    path_params = {
        p["name"]
        for p in operations["POST /v2/models/{name}/versions/{version}/infer"]["parameters"]
    }
    assert path_params == {"name", "version"}
    # Plain words: no reStructuredText ``literals`` from the docstrings.
    assert not [t for t in texts(document) if "``" in t]


def test_every_error_is_declared_with_its_body(document: dict[str, Any]) -> None:
    operations = operations_of(document)
    segment = operations["POST /segment"]["responses"]
    assert set(segment) == {"200", "400", "406", "408", "413", "415", "422", "500", "503", "504"}
    for status in set(segment) - {"200"}:
        schema = segment[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, status
    assert "Retry-After" in segment["503"]["headers"]
    infer = operations["POST /v2/models/{name}/infer"]["responses"]
    assert set(infer) == {"200", "400", "404", "408", "413", "500", "503", "504"}
    assert infer["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ProtocolErrorBody"
    }
    for label in ("GET /v2/models/{name}", "GET /v2/models/{name}/versions/{version}/ready"):
        assert "404" in operations[label]["responses"], label
    # FastAPI's own validation body is never sent: the service answers with its own.
    assert "HTTPValidationError" not in str(document)
    error = document["components"]["schemas"]["ErrorDetail"]
    assert set(error["required"]) == {"code", "message"}


def test_metrics_are_text_and_an_empty_infer_body_is_not_valid(document: dict[str, Any]) -> None:
    import jsonschema_rs  # schemathesis's own validator

    operations = operations_of(document)
    assert set(operations["GET /metrics"]["responses"]["200"]["content"]) == {"text/plain"}
    body = operations["POST /v2/models/{name}/infer"]["requestBody"]["content"]
    assert set(body) == {"application/json"}  # not "any bytes" as well
    validator = jsonschema_rs.Draft202012Validator(body["application/json"]["schema"])
    pixels = {"name": "image", "shape": [1, 1, 1, 3], "datatype": "UINT8"}
    assert not validator.is_valid({})
    assert not validator.is_valid({"inputs": [pixels]})  # no data, no binary data
    assert validator.is_valid({"inputs": [{**pixels, "data": [0, 0, 0]}]})
