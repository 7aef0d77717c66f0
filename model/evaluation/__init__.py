"""Evaluation and prediction: the paper's four metrics, per-class IoU, label maps for images."""
