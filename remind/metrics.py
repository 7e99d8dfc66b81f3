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


def omega(learner, offline) -> float:
    """Omega (Hayes et al.): mean over evaluation points of ``learner[t] / offline[t]``.

    Args:
        learner, offline: accuracies at the same evaluation points, one entry
            each (``None`` where a point has no value; points where both are
            ``None`` are skipped, e.g. non-base accuracy at base init).
    Raises:
        ValueError: lists of different lengths, a value in only one list, a value
            that is not finite (NaN, inf), an offline accuracy <= 0, or no point left.
    """
    learner, offline = list(learner), list(offline)
    if len(learner) != len(offline):
        raise ValueError(f"learner has {len(learner)} evaluation points but offline has {len(offline)}; "
                         "Omega needs both runs evaluated at the same points")
    ratios = []
    for t, (ours, upper) in enumerate(zip(learner, offline)):
        if ours is None and upper is None:
            continue
        if ours is None or upper is None:
            raise ValueError(f"evaluation point {t} has a value in only one of the two runs")
        if not (np.isfinite(ours) and np.isfinite(upper)):
            raise ValueError(f"evaluation point {t} has an accuracy that is not a finite number ({ours}, {upper})")
        if upper <= 0:
            raise ValueError(f"offline accuracy at evaluation point {t} is {upper}; Omega is undefined")
        ratios.append(ours / upper)
    if not ratios:
        raise ValueError("no evaluation point to compute Omega on")
    return float(np.mean(ratios))
