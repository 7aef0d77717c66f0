"""Calibration: the contract's confidence from logits, the expected calibration error and the
coverage table, counted by hand on pixels whose answers are known."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from model.evaluation.calibration import Calibration, confidence_of, plot_reliability
from model.evaluation.metrics import json_safe


def test_confidence_is_the_top_probability_x_255_rounded_half_to_even() -> None:
    # Two classes: probabilities 1/2 (127.5, the tie: to even 128), 3/4 (191.25), and one
    # class far ahead (255).
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3)], [0.0, 40.0]]).T.reshape(1, 2, 1, 3)
    assert confidence_of(logits).tolist() == [[[128, 191, 255]]]
    assert confidence_of(logits).dtype == torch.uint8
    # Half-precision logits are scored in float32: the same bytes.
    assert torch.equal(confidence_of(logits.half()), confidence_of(logits))
    five = torch.zeros(1, 5, 2, 2)  # five equal classes: 255 / 5
    assert confidence_of(five).unique().tolist() == [51]


def sample() -> Calibration:
    """Eight labelled pixels and two ignored ones, in two bins."""
    calibration = Calibration(3)
    target = torch.tensor([1, 1, 1, 1, 2, 2, 0, 0, 255, 255])
    labels = torch.tensor([1, 1, 1, 1, 2, 0, 0, 2, 1, 1])
    confidence = torch.tensor([255, 255, 255, 255, 128, 128, 128, 128, 10, 255], dtype=torch.uint8)
    calibration.update(target[:5], labels[:5], confidence[:5])  # batches add up
    calibration.update(target[5:], labels[5:], confidence[5:])
    return calibration


def test_the_expected_calibration_error_by_hand() -> None:
    report = sample().compute()
    assert report.pixels == 8  # the ignored pixels count nowhere
    assert report.accuracy == pytest.approx(6 / 8)
    assert report.confidence == pytest.approx((4 * 255 + 4 * 128) / 8 / 255)
    # Half the pixels at 255, all right; half at 128 (0.502), half of them right.
    assert report.ece == pytest.approx(0.5 * 0 + 0.5 * abs(0.5 - 128 / 255))
    assert len(report.bins) == 15
    assert sum(b.pixels for b in report.bins) == 8
    (middle,) = [b for b in report.bins if b.lower <= 128 / 255 < b.upper]
    assert (middle.pixels, middle.accuracy) == (4, 0.5)
    assert report.bins[-1].pixels == 4
    assert math.isnan(report.bins[0].accuracy)  # an empty bin has no figures


def test_coverage_keeps_the_pixels_at_or_above_each_level() -> None:
    report = sample().compute()
    levels = {row.level: row for row in report.coverage}
    everything, sure = levels[0.5], levels[0.6]
    assert everything.kept == 1.0  # 128 is at 0.5 (the service's rule: 128 >= 127.5)
    assert everything.pixel_accuracy == pytest.approx(6 / 8)
    # Above 0.5 only the four pixels of class 1, all right: IU 1 for the one class seen.
    assert (sure.kept, sure.mean_iu, sure.pixel_accuracy) == (0.5, 1.0, 1.0)
    assert levels[0.0].mean_iu == pytest.approx(levels[0.5].mean_iu)
    record = json.loads(json.dumps(json_safe(report.to_dict())))
    assert record["ece"] == pytest.approx(report.ece)
    assert [row["level"] for row in record["coverage"]] == [r.level for r in report.coverage]
    assert "ECE" in report.lines()[0]


def test_out_of_range_levels_are_refused() -> None:
    with pytest.raises(ValueError, match="levels must rise from 0"):
        Calibration(3, levels=(0.5, 0.9))


@pytest.mark.slow  # matplotlib's first figure
def test_the_reliability_plot_is_a_png(tmp_path: Path) -> None:
    path = plot_reliability(sample().compute(), tmp_path / "reliability.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name != "reliability.png"]


def test_a_calibration_of_no_pixels_has_no_figures() -> None:
    report = Calibration(2).compute()
    assert report.pixels == 0
    assert math.isnan(report.ece)
    assert all(math.isnan(row.kept) for row in report.coverage)
    assert np.isnan([b.confidence for b in report.bins]).all()
