"""Accuracy metrics."""
from __future__ import annotations

import numpy as np
import torch


def topk_accuracy(scores, labels, topk=(1,)) -> list[float]:
    """Percent of rows whose label is among the ``k`` highest scores, for each ``k``.

    Args:
        scores: ``(N, num_classes)`` probabilities or logits (tensor or array).
        labels: ``(N,)`` integer labels.
    Returns:
        one float in ``[0, 100]`` per ``k``; 0.0 for an empty set.
    """
    scores = torch.as_tensor(np.asarray(scores) if not torch.is_tensor(scores) else scores)
    labels = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).long().reshape(-1)
    if len(labels) == 0:
        return [0.0 for _ in topk]
    maxk = min(max(topk), scores.shape[1])
    top = scores.topk(maxk, dim=1).indices  # (N, maxk)
    hits = top.eq(labels[:, None])
    return [float(hits[:, :min(k, maxk)].any(dim=1).float().mean() * 100.0) for k in topk]
