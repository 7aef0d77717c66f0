"""The one rule for collecting images from paths (contract.inputs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.inputs import InputError, collect_images


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_a_folder_gives_its_images_at_any_depth_by_relative_stem(tmp_path: Path) -> None:
    cat = _touch(tmp_path / "in" / "a" / "b" / "cat.JPG")
    dog = _touch(tmp_path / "in" / "dog.png")
    _touch(tmp_path / "in" / "notes.txt")
    _touch(tmp_path / "in" / ".hidden" / "x.png")
    _touch(tmp_path / "in" / ".y.png")
    assert collect_images([tmp_path / "in"]) == {cat: Path("a/b/cat"), dog: Path("dog")}


def test_a_file_named_is_taken_whatever_its_ending_and_once(tmp_path: Path) -> None:
    odd = _touch(tmp_path / "in" / "scan.raw")
    png = _touch(tmp_path / "in" / "p.png")
    assert collect_images([odd, png, tmp_path / "in"]) == {odd: Path("scan"), png: Path("p")}


def test_the_output_folder_is_left_out(tmp_path: Path) -> None:
    image = _touch(tmp_path / "in" / "p.png")
    _touch(tmp_path / "in" / "out" / "p.png")
    assert collect_images([tmp_path / "in"], tmp_path / "in" / "out") == {image: Path("p")}


@pytest.mark.parametrize(
    ("names", "words"),
    [
        pytest.param(["missing"], "missing: no such image or folder", id="missing"),
        pytest.param(["empty"], "no images (.jpg", id="no-images"),
        pytest.param(["one/p.png", "two/p.jpg"], "would both write the outputs of p", id="clash"),
    ],
)
def test_bad_inputs_are_refused_naming_the_path(
    tmp_path: Path, names: list[str], words: str
) -> None:
    (tmp_path / "empty").mkdir()
    for name in names:
        if "/" in name:
            _touch(tmp_path / name)
    with pytest.raises(InputError) as caught:
        collect_images([tmp_path / n for n in names])
    assert words in str(caught.value)
