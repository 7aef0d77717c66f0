"""Settings from FCN_* variables, refused by the value at fault, and documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from contract.encode import DEFAULT_ALPHA, JPEG_QUALITY, PNG_COMPRESS_LEVEL
from service.config import Settings

# The hand-written guide to the settings; the reference table beside it is generated from
# Settings (tests/docs checks that one).
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "serving" / "settings.md"


def test_settings_come_from_fcn_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FCN_MODEL_PATH", "/models/voc.onnx")
    monkeypatch.setenv("FCN_PROVIDERS", "tensorrt, cuda,CPU")
    monkeypatch.setenv("FCN_WARMUP_SIZES", "375x500, 64X48")
    monkeypatch.setenv("FCN_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("FCN_REQUIRE_GPU", "true")
    settings = Settings()  # type: ignore[call-arg]
    assert settings.model_path == Path("/models/voc.onnx")
    assert settings.name == "voc"
    assert settings.providers == (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    assert settings.warmup_sizes == ((375, 500), (64, 48))
    assert settings.max_batch_size == 16
    assert settings.require_gpu is True
    monkeypatch.setenv("FCN_WARMUP_SIZES", "")
    assert Settings().warmup_sizes == ()  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("name", "value", "fault"),
    [
        ("providers", "rocm,cpu", "rocm"),
        ("providers", "", "at least one"),
        ("warmup_sizes", "375", "HxW"),
        ("warmup_sizes", "0x5", "at least 1x1"),
        ("max_batch_size", "-1", "greater than or equal to 0"),
        ("overlay_alpha", "1.5", "less than or equal to 1"),
        ("default_format", "gif", "png"),
    ],
)
def test_bad_settings_are_refused_with_the_value_at_fault(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, fault: str
) -> None:
    monkeypatch.setenv("FCN_MODEL_PATH", "m.onnx")
    monkeypatch.setenv(f"FCN_{name.upper()}", value)
    with pytest.raises(ValidationError, match=re.escape(fault)) as caught:
        Settings()  # type: ignore[call-arg]
    assert name in str(caught.value)


def test_the_settings_guide_documents_every_setting() -> None:
    text = GUIDE.read_text()
    missing = [
        f"FCN_{name.upper()}"
        for name in Settings.model_fields
        if not re.search(rf"^\| `FCN_{name.upper()}` \|", text, re.MULTILINE)
    ]
    assert not missing, f"docs/serving/settings.md's tables lack {missing}"


def test_encoding_defaults_are_the_contracts() -> None:
    defaults = Settings(model_path=Path("m.onnx"))
    assert defaults.overlay_alpha == DEFAULT_ALPHA
    assert defaults.jpeg_quality == JPEG_QUALITY
    assert defaults.png_compress_level == PNG_COMPRESS_LEVEL
