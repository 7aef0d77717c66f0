"""The packages' layering (DESIGN.md): ``model/`` and ``service/`` meet only in ``contract/``.

Every import statement is read from the source, those inside functions too, so a lazy import
that would only fail on a user's machine (a service image without torch) fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.isolation import run_without

ROOT = Path(__file__).resolve().parents[1]
# package -> the top-level modules it must never import
FORBIDDEN = {
    "contract": {"model", "service", "client", "torch", "torchvision", "onnx", "onnxruntime"},
    "model": {"service"},
    "service": {"model", "client", "torch", "torchvision"},
    "client": {"model", "service", "torch", "onnxruntime", "fastapi", "starlette"},
}


def imported(path: Path) -> set[tuple[int, str]]:
    """(line, top-level module) of every absolute import in the file at ``path``."""
    found: set[tuple[int, str]] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name.split(".")[0]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_never_imports_what_its_layer_forbids(package: str) -> None:
    sources = sorted((ROOT / package).rglob("*.py"))
    assert sources, f"no package {package}/"
    crossings = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sources
        for line, module in sorted(imported(path))
        if module in FORBIDDEN[package]
    ]
    assert crossings == []


def test_the_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "lazy.py"
    source.write_text("def run():\n    from service.client import Client\n    import torch.nn\n")
    assert imported(source) == {(2, "service"), (3, "torch")}


def test_a_blocked_package_cannot_be_imported_in_the_fresh_interpreter() -> None:
    """The import checks of the client and the codec (``tests.isolation``) can fail."""
    result = run_without({"onnxruntime"}, "import contract.schema\nimport onnxruntime\n")
    assert result.returncode == 1
    assert "ModuleNotFoundError: onnxruntime is blocked" in result.stderr
