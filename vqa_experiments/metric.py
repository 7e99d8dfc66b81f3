"""VQA accuracy: overall and mean-per-question-type, in percent."""
from __future__ import annotations

import numpy as np


def accuracy_by_type(predictions: np.ndarray, answers: np.ndarray, qtypes: np.ndarray,
                     type_names: list[str]) -> dict:
    """Exact-match accuracy of ``predictions`` against ``answers`` (an answer of -1, outside the
    answer table, is always wrong), overall and per question type.

    The mean per type averages the types present in ``qtypes`` (the original divided by a
    hard-coded 5 for CLEVR and 12 for TDIUC, the number of types those datasets have).
    """
    correct = (np.asarray(predictions) == np.asarray(answers)) & (np.asarray(answers) >= 0)
    per_type = {}
    for t in np.unique(qtypes):
        per_type[type_names[int(t)]] = 100.0 * float(correct[qtypes == t].mean())
    return {"overall": 100.0 * float(correct.mean()) if len(correct) else 0.0,
            "mean_per_type": float(np.mean(list(per_type.values()))) if per_type else 0.0,
            "per_type": per_type}
