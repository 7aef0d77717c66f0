"""pyproject.toml's requirements: one ONNX Runtime on every platform, floors that the code
needs, and an environment that meets them.

The markers are evaluated for each platform a user may install on, so a ``make serve`` on a
Mac or an ARM Linux machine never asks for onnxruntime-gpu (PyPI has it for Linux x86_64
only). CI's lowest-versions job (.ci/lowest) installs each floor and runs the tests on it.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
ORT_GPU, ORT_CPU = "onnxruntime-gpu", "onnxruntime"
# What the markers see on each platform: sys_platform, platform_system, platform_machine.
PLATFORMS = {
    "linux-x86_64": ("linux", "Linux", "x86_64"),
    "linux-aarch64": ("linux", "Linux", "aarch64"),
    "macos-arm64": ("darwin", "Darwin", "arm64"),
    "macos-x86_64": ("darwin", "Darwin", "x86_64"),
    "windows-amd64": ("win32", "Windows", "AMD64"),
}


def requirements() -> dict[str, list[Requirement]]:
    """The base dependencies (under ``""``) and each extra's, as pyproject.toml lists them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = {"": [Requirement(r) for r in project["dependencies"]]}
    for extra, listed in project["optional-dependencies"].items():
        found[extra] = [Requirement(r) for r in listed]
    return found


def wanted(extra: str, platform: str) -> list[str]:
    """The names ``pip install '.[extra]'`` asks for on ``platform`` (markers evaluated)."""
    sys_platform, system, machine = PLATFORMS[platform]
    environment = {
        **default_environment(),
        "sys_platform": sys_platform,
        "platform_system": system,
        "platform_machine": machine,
        "os_name": "nt" if system == "Windows" else "posix",
    }
    return [
        r.name for r in requirements()[extra] if r.marker is None or r.marker.evaluate(environment)
    ]


def floor(extra: str, name: str) -> Version:
    """The lowest version ``extra`` allows of ``name`` (its ``>=`` bound)."""
    (requirement,) = [r for r in requirements()[extra] if r.name == name]
    bounds = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    assert bounds, f"pyproject.toml: {extra} extra: {requirement} has no >= floor"
    return max(bounds)


def test_the_extras_that_run_onnx_models_are_the_train_and_serve_extras() -> None:
    users = {
        extra
        for extra in requirements()
        for p in PLATFORMS
        if {ORT_GPU, ORT_CPU} & set(wanted(extra, p))
    }
    assert users == {"train", "serve"}


@pytest.mark.parametrize("extra", ["train", "serve"])
@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_platform_gets_exactly_one_onnx_runtime(extra: str, platform: str) -> None:
    runtimes = [name for name in wanted(extra, platform) if name in (ORT_GPU, ORT_CPU)]
    # Both at once would overwrite each other's `onnxruntime` package.
    expected = ORT_GPU if platform == "linux-x86_64" else ORT_CPU
    assert runtimes == [expected], f"{extra} extra on {platform}"


def test_both_onnx_runtimes_have_the_same_floor() -> None:
    for extra in ("train", "serve"):
        assert floor(extra, ORT_GPU) == floor(extra, ORT_CPU), extra


def test_the_client_needs_neither_torch_nor_onnx_runtime() -> None:
    for platform in PLATFORMS:
        assert {"torch", ORT_GPU, ORT_CPU}.isdisjoint(wanted("client", platform)), platform


def test_every_requirement_has_a_floor() -> None:
    """A requirement with no lower bound lets the lowest-versions job (and a user's old
    environment) pick any release ever published."""
    for extra, listed in requirements().items():
        for requirement in listed:
            floor(extra, requirement.name)


# (extra, distribution, lowest that works, what the code needs from it)
FLOORS = [
    ("serve", "python-multipart", "0.0.18", "the python_multipart module; CVE-2024-53981"),
    ("serve", "pydantic-settings", "2.7", "pydantic_settings.NoDecode (service/config.py)"),
    ("serve", "pydantic", "2.10", "FastAPI's OpenAPI schema without a deprecation warning"),
    ("serve", "starlette", "0.49.1", "CVE-2025-62727; python_multipart by its new name"),
    ("serve", "fastapi", "0.120.1", "the first that allows starlette 0.49.1"),
    ("serve", "uvicorn", "0.50", "no websockets.legacy import at start"),
    ("train", "torchvision", "0.21", "v2.Transform.make_params/transform (RandomScale)"),
    ("train", "torch", "2.6", "the torch of torchvision 0.21"),
    ("train", "onnxscript", "0.6", "torch.onnx.export(dynamo=True) of torch 2.11 and later"),
    ("dev", "ruff", "0.13", "the RUF043 rule pyproject.toml names, no UP038 on service/"),
    ("dev", "protobuf", "4.25", "text_format parsing that does not segfault"),
    ("dev", "mypy", "2.0", "narrowing `arch in NAMES` to its Literal (model/zoo/pretrained.py)"),
]


@pytest.mark.parametrize(
    ("extra", "name", "lowest", "why"), FLOORS, ids=[f"{e}-{n}" for e, n, _, _ in FLOORS]
)
def test_floors_are_no_lower_than_the_code_needs(
    extra: str, name: str, lowest: str, why: str
) -> None:
    assert floor(extra, name) >= Version(lowest), f"{name} below {lowest} lacks {why}"


def test_the_installed_versions_are_within_what_pyproject_allows() -> None:
    """The environment the tests run in (``make test``'s or the lowest-versions job's) is one
    that pyproject.toml allows here, with one ONNX Runtime."""
    here = dict(default_environment())
    outside = []
    for listed in requirements().values():
        for requirement in listed:
            if requirement.marker is not None and not requirement.marker.evaluate(here):
                continue
            installed = importlib.metadata.version(requirement.name)
            if not requirement.specifier.contains(installed, prereleases=True):
                outside.append(f"{requirement.name} {installed} (pyproject.toml: {requirement})")
    assert not outside
    runtimes = []
    for name in (ORT_GPU, ORT_CPU):
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        runtimes.append(name)
    assert len(runtimes) == 1, f"installed ONNX Runtimes: {runtimes}"
