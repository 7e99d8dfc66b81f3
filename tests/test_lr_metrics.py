"""Per-class step learning rate and top-k accuracy."""
import math

import numpy as np
import pytest
import torch

from remind.lr import per_class_lr, step_lr_gamma
from remind.metrics import topk_accuracy

PAPER = dict(start_lr=0.1, end_lr=0.001, step_size=100, examples_per_class=1300)


def test_per_class_lr_endpoints():
    assert per_class_lr(0, **PAPER) == pytest.approx(0.1, rel=1e-12)
    last = per_class_lr(1299, **PAPER)
    assert 0.001 <= last <= 0.0015, last
    # closed form: 0.1 * 0.01 ** (12 / 13)
    assert last == pytest.approx(0.1 * 0.01 ** (12 / 13), rel=1e-9)
    assert per_class_lr(1300, **PAPER) == pytest.approx(0.001, rel=1e-9)
    assert step_lr_gamma(0.1, 0.001, 100, 1300) == pytest.approx(0.01 ** (1 / 13), rel=1e-12)
    assert step_lr_gamma(0.1, 0.001, 100, 1300) == pytest.approx(0.701704, rel=1e-5)


def test_per_class_lr_blocks():
    lrs = np.array([per_class_lr(k, **PAPER) for k in range(1300)])
    blocks = lrs.reshape(13, 100)
    # constant within each block of 100 steps
    assert np.all(blocks == blocks[:, :1])
    # strictly decreasing from block to block, by the same factor gamma
    firsts = blocks[:, 0]
    assert np.all(np.diff(firsts) < 0)
    np.testing.assert_allclose(firsts[1:] / firsts[:-1], 0.01 ** (1 / 13), rtol=1e-12)
    np.testing.assert_allclose(firsts, 0.1 * 0.01 ** (np.arange(13) / 13), rtol=1e-12)
    # the boundary is between step 99 and step 100
    assert per_class_lr(99, **PAPER) == 0.1
    assert per_class_lr(100, **PAPER) < 0.1


def test_per_class_lr_other_class_size():
    # 10 examples per class, step 5: gamma = (0.01)^(1/2); steps 0-4: 0.1, 5-9: 0.01
    args = dict(start_lr=0.1, end_lr=0.001, step_size=5, examples_per_class=10)
    assert [round(per_class_lr(k, **args), 12) for k in range(11)] == [0.1] * 5 + [0.01] * 5 + [0.001]


@pytest.mark.parametrize("bad", [dict(start_lr=0.0), dict(end_lr=-1.0), dict(step_size=0),
                                 dict(examples_per_class=0)])
def test_per_class_lr_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        per_class_lr(0, **{**PAPER, **bad})


SCORES = np.array([
    [0.10, 0.50, 0.30, 0.05, 0.05],  # ranking 1, 2, 0, ...
    [0.70, 0.10, 0.05, 0.10, 0.05],  # ranking 0, {1, 3}, ...
    [0.05, 0.15, 0.20, 0.25, 0.35],  # ranking 4, 3, 2, 1, 0
    [0.30, 0.05, 0.40, 0.20, 0.05],  # ranking 2, 0, 3, ...
], dtype=np.float32)


def test_topk_hand_computed():
    # labels: row 0 -> 1 (rank 1), row 1 -> 0 (rank 1), row 2 -> 3 (rank 2), row 3 -> 3 (rank 3)
    labels = np.array([1, 0, 3, 3])
    assert topk_accuracy(SCORES, labels, topk=(1, 2, 3)) == pytest.approx([50.0, 75.0, 100.0])
    # row 2's label 0 is last: never in the top 4, but in the top 5
    labels = np.array([2, 0, 0, 2])
    assert topk_accuracy(SCORES, labels, topk=(1, 2, 4, 5)) == pytest.approx([50.0, 75.0, 75.0, 100.0])
    assert topk_accuracy(SCORES, [4, 4, 4, 4], topk=(1,)) == pytest.approx([25.0])
    assert topk_accuracy(SCORES, [3, 2, 1, 1], topk=(1, 3)) == pytest.approx([0.0, 0.0])


def test_topk_inputs_of_every_kind():
    labels = np.array([1, 0, 3, 3])
    expected = [50.0, 75.0]
    assert topk_accuracy(torch.from_numpy(SCORES), torch.tensor(labels), topk=(1, 2)) == pytest.approx(expected)
    assert topk_accuracy(SCORES.tolist(), labels.tolist(), topk=(1, 2)) == pytest.approx(expected)
    # a non-contiguous tensor (the original crashed on view()) and a column-vector of labels
    transposed = torch.from_numpy(np.ascontiguousarray(SCORES.T)).t()
    assert not transposed.is_contiguous()
    assert topk_accuracy(transposed, torch.tensor(labels)[:, None], topk=(1, 2)) == pytest.approx(expected)
    # logits instead of probabilities: same ranking, same result
    assert topk_accuracy(np.log(SCORES), labels, topk=(1, 2)) == pytest.approx(expected)


def test_topk_k_larger_than_classes():
    scores = np.array([[0.2, 0.8], [0.9, 0.1], [0.6, 0.4]])
    labels = np.array([0, 0, 1])
    assert topk_accuracy(scores, labels, topk=(1, 5)) == pytest.approx([100 / 3, 100.0])
    assert topk_accuracy(scores, labels, topk=(5,)) == pytest.approx([100.0])
    assert topk_accuracy(scores, labels, topk=(2, 1)) == pytest.approx([100.0, 100 / 3])


def test_topk_empty():
    assert topk_accuracy(np.zeros((0, 10)), np.zeros(0, dtype=int), topk=(1, 5)) == [0.0, 0.0]
    assert topk_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == [0.0]


def test_topk_matches_bruteforce_on_random_scores():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((500, 20))  # continuous: no ties
    labels = rng.integers(0, 20, size=500)
    rank = (scores > scores[np.arange(500), labels][:, None]).sum(1)  # 0 = best
    expected = [100.0 * np.mean(rank < k) for k in (1, 5, 10)]
    assert topk_accuracy(scores, labels, topk=(1, 5, 10)) == pytest.approx(expected)
    assert math.isclose(topk_accuracy(scores, labels, topk=(20,))[0], 100.0)
