"""Checkpoints carry everything needed to rebuild and use a network, and fail by name."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from contract.palette import VOC_CLASSES, voc_colormap
from model.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from model.nets.fcn import ModelSpec, build_fcn
from model.nets.preprocessing import CAFFE


def make_checkpoint(arch: str = "fcn16s") -> Checkpoint:
    spec = ModelSpec(arch, 21, width=1 / 32)
    torch.manual_seed(0)
    net = build_fcn(spec)
    torch.nn.init.normal_(net.score_fr.weight)
    return Checkpoint(
        spec=spec,
        state_dict=net.state_dict(),
        classes=list(VOC_CLASSES),
        palette=voc_colormap(21),
        preprocessing=CAFFE,
        dataset="voc2012",
        metrics={"mean_iu": 0.5},
        iteration=7,
    )


def test_round_trip_rebuilds_the_same_network(tmp_path: Path) -> None:
    original = make_checkpoint()
    path = save_checkpoint(original, tmp_path / "ckpt.pt")
    loaded = load_checkpoint(path)
    assert loaded.spec == original.spec
    assert loaded.classes == list(VOC_CLASSES)
    assert loaded.palette[15] == (192, 128, 128)  # VOC's "person"
    assert loaded.preprocessing == CAFFE
    assert loaded.metrics == {"mean_iu": 0.5}
    assert loaded.iteration == 7
    x = torch.randn(1, 3, 33, 47)
    a, b = original.build_model().eval(), loaded.build_model().eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_truncated_and_foreign_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nope.pt: no such"):
        load_checkpoint(tmp_path / "nope.pt")

    good = save_checkpoint(make_checkpoint(), tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(truncated)

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not an FCN checkpoint"):
        load_checkpoint(foreign)


def test_files_mistaken_for_checkpoints_are_named_for_what_they_are(tmp_path: Path) -> None:
    onnx_file = tmp_path / "fcn8s.onnx"
    onnx_file.write_bytes(b"\x08\x0a\x12\x07pytorch")  # an ONNX ModelProto's first fields
    with pytest.raises(CheckpointError, match=r"fcn8s.onnx: not a PyTorch checkpoint \(an ONNX"):
        load_checkpoint(onnx_file)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes.txt: not a PyTorch checkpoint$"):
        load_checkpoint(text)
    empty = tmp_path / "empty.pt"
    empty.touch()
    with pytest.raises(CheckpointError, match=r"empty.pt: .*\(the file is empty\)"):
        load_checkpoint(empty)

    # A pickle of arbitrary objects is refused without running it, in one line.
    objects = tmp_path / "objects.pt"
    torch.save({"args": argparse.Namespace(lr=0.1)}, objects)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(objects)
    message = str(caught.value)
    assert message.startswith(f"{objects}: not an FCN checkpoint")
    assert "argparse.Namespace" in message
    assert "\n" not in message
    assert "weights_only=False" not in message  # no advice to load it unsafely


def test_weights_that_do_not_fit_the_recorded_network_are_refused(tmp_path: Path) -> None:
    ckpt = make_checkpoint("fcn16s")
    ckpt.spec = ModelSpec("fcn8s", 21, width=1 / 32)
    with pytest.raises(CheckpointError, match="weights do not fit fcn8s: missing score_pool3"):
        ckpt.build_model()
    # On load, before anything is built from it, naming the file and the tensors.
    reshaped = make_checkpoint("fcn16s")
    reshaped.state_dict["fc7.weight"] = reshaped.state_dict["fc7.weight"][:, :64]
    path = save_checkpoint(reshaped, tmp_path / "reshaped.pt")
    with pytest.raises(
        CheckpointError,
        match=r"reshaped.pt: weights do not fit fcn16s: fc7.weight is \[128, 64, 1, 1\], "
        r"not \[128, 128, 1, 1\]",
    ):
        load_checkpoint(path)


def test_class_names_must_match_the_network() -> None:
    with pytest.raises(CheckpointError, match="3 class names"):
        Checkpoint(
            spec=ModelSpec("fcn32s", 21),
            state_dict={},
            classes=["a", "b", "c"],
            palette=voc_colormap(21),
            preprocessing=CAFFE,
        )


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    path = save_checkpoint(make_checkpoint(), tmp_path / "ckpt.pt")
    before = path.read_bytes()
    bad = make_checkpoint()
    bad.config = {"unpicklable": lambda: None}
    with pytest.raises(Exception, match="lambda|pickle"):
        save_checkpoint(bad, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_written_files_get_the_usual_permissions_not_private_temp_ones(tmp_path: Path) -> None:
    path = save_checkpoint(make_checkpoint(), tmp_path / "ckpt.pt")
    reference = tmp_path / "plain"
    reference.write_bytes(b"")
    assert path.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777
