"""Raw /v2 infer bodies, JSON or JSON followed by binary tensor data, for the requests
Triton's client never sends, and the protocol's error answer read back."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np

from tests.images import pattern


def request_body(image: np.ndarray, data: Any = None, **extra: Any) -> dict[str, Any]:
    tensor = {"name": "image", "datatype": "UINT8", "shape": list(image.shape)}
    tensor["data"] = image.tolist() if data is None else data
    return {"inputs": [tensor], **extra}


def binary_request(image: np.ndarray, size: int | None = None, **parameters: Any) -> bytes:
    tensor = {
        "name": "image",
        "datatype": "UINT8",
        "shape": list(image.shape),
        "parameters": {"binary_data_size": image.size if size is None else size},
    }
    return json.dumps({"inputs": [tensor], "parameters": parameters}).encode()


def protocol_error(response: httpx.Response, status: int) -> str:
    """The protocol's error: {"error": "message"} and the status."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"], str)
    return body["error"]


SMALL = pattern(4, 5)[None]
