"""The paper's four metrics, checked against confusion matrices worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from model.evaluation.metrics import ConfusionMatrix, metrics_from_confusion


def test_metrics_of_a_hand_computed_matrix() -> None:
    # rows: truth, columns: prediction
    n = torch.tensor([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    m = metrics_from_confusion(n)
    # t = [4, 6, 0]; predicted = [5, 5, 0]
    assert m.pixel_accuracy == pytest.approx(7 / 10)
    # class 2 is absent from truth and prediction: left out of both means
    assert m.mean_accuracy == pytest.approx((3 / 4 + 4 / 6) / 2)
    iu = [3 / (4 + 5 - 3), 4 / (6 + 5 - 4)]
    assert m.mean_iu == pytest.approx(sum(iu) / 2)
    assert m.frequency_weighted_iu == pytest.approx((4 * iu[0] + 6 * iu[1]) / 10)
    assert m.class_iu[:2] == pytest.approx(iu)
    assert math.isnan(m.class_iu[2])
    assert math.isnan(m.class_accuracy[2])


def test_a_class_predicted_but_absent_from_truth_counts_as_zero_iu() -> None:
    n = torch.tensor([[5, 0, 1], [0, 4, 0], [0, 0, 0]])
    m = metrics_from_confusion(n)
    assert m.class_iu[2] == 0.0
    assert m.mean_iu == pytest.approx((5 / 6 + 1 + 0) / 3)
    # Accuracy is per truth class: class 2 has no truth pixels and drops out.
    assert m.mean_accuracy == pytest.approx((5 / 6 + 1) / 2)
    assert m.pixel_accuracy == pytest.approx(9 / 10)


def test_perfect_prediction_scores_one_everywhere() -> None:
    m = metrics_from_confusion(torch.diag(torch.tensor([10, 0, 3, 7])))
    assert m.summary() == pytest.approx(
        {"pixel_accuracy": 1.0, "mean_accuracy": 1.0, "mean_iu": 1.0, "frequency_weighted_iu": 1.0}
    )


def test_confusion_matrix_accumulates_over_images_and_ignores_255() -> None:
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 0, 1], [255, 2, 2]], dtype=torch.uint8)
    labels = torch.tensor([[0, 1, 1], [2, 2, 0]])
    cm.update(target, labels)
    cm.update(target[:1], labels[:1])
    expected = torch.tensor([[2, 2, 0], [0, 2, 0], [1, 0, 1]])
    assert torch.equal(cm.matrix, expected)
    assert cm.compute().pixel_accuracy == pytest.approx(5 / 8)


def test_whole_dataset_accumulation_is_not_a_mean_of_per_image_scores() -> None:
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 0]))  # 4/4 right
    cm.update(torch.tensor([1]), torch.tensor([0]))  # 0/1 right
    assert cm.compute().pixel_accuracy == pytest.approx(4 / 5)


def test_out_of_range_values_are_an_error_not_a_skewed_score() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        cm.update(torch.tensor([0, 7]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="differ"):
        cm.update(torch.zeros(2, 2), torch.zeros(4))


def test_matches_a_numpy_reference_on_random_maps() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    target = rng.integers(0, 6, size=(4, 31, 29))
    target[:, :3] = 255
    labels = rng.integers(0, 5, size=(4, 31, 29))
    cm = ConfusionMatrix(6)
    cm.update(torch.from_numpy(target), torch.from_numpy(labels))
    m = cm.compute()

    # The reference's score.py, verbatim in spirit.
    keep = target != 255
    hist = np.bincount(6 * target[keep] + labels[keep], minlength=36).reshape(6, 6)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.diag(hist).sum() / hist.sum()
        mean_acc = np.nanmean(np.diag(hist) / hist.sum(1))
        iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    freq = hist.sum(1) / hist.sum()
    assert m.pixel_accuracy == pytest.approx(acc)
    assert m.mean_accuracy == pytest.approx(mean_acc)
    assert m.mean_iu == pytest.approx(np.nanmean(iu))
    assert m.frequency_weighted_iu == pytest.approx((freq[freq > 0] * iu[freq > 0]).sum())
