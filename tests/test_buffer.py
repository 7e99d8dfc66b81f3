"""ReplayBuffer: sampling without replacement, class-balanced eviction, state round trip, memory."""
import io
import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from remind.buffer import ReplayBuffer

SHAPE = (2, 2, 3)


def codes_for(example_id, shape=SHAPE):
    """Distinct, recognisable codes for each example id."""
    n = int(np.prod(shape))
    return ((torch.arange(n) * 7 + example_id * 13) % 256).to(torch.uint8).reshape(shape)


def make_buffer(labels, ids=None, num_classes=5, max_size=None, shape=SHAPE):
    labels = np.asarray(labels)
    ids = np.arange(len(labels)) if ids is None else np.asarray(ids)
    buf = ReplayBuffer(shape, num_classes, max_size=max_size)
    if len(labels):
        buf.add_batch(torch.stack([codes_for(int(i), shape) for i in ids]), labels, ids)
    return buf


def chi2_ok(counts, alpha=1e-3):
    counts = np.asarray(counts, dtype=float)
    expected = counts.sum() / len(counts)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    return chi2 < stats.chi2.ppf(1 - alpha, len(counts) - 1), chi2


def assert_contents(buf, label_of):
    """Every stored slot holds the codes, label and id of the example that was put there."""
    codes, labels = buf.gather(np.arange(buf.size))
    for slot in range(buf.size):
        example_id = int(buf.ids[slot])
        assert int(labels[slot]) == label_of[example_id]
        assert torch.equal(codes[slot], codes_for(example_id))


# ------------------------------------------------------------------ sampling
def test_sample_distinct_and_count():
    buf = make_buffer(np.arange(20) % 5)
    rng = np.random.default_rng(0)
    for count in (0, 1, 5, 19):
        slots = buf.sample(count, rng)
        assert len(slots) == count
        assert len(set(slots.tolist())) == count
        assert np.all((slots >= 0) & (slots < 20))
    for count in (20, 50):
        slots = buf.sample(count, rng)
        assert sorted(slots.tolist()) == list(range(20))
    small = make_buffer([0, 1, 2])
    assert sorted(small.sample(50, rng).tolist()) == [0, 1, 2]
    assert len(make_buffer([]).sample(50, rng)) == 0


def test_sample_is_uniform_over_slots():
    buf = make_buffer(np.arange(20) % 5)
    rng = np.random.default_rng(123)
    counts = np.zeros(20)
    draws = 20000
    for _ in range(draws):
        slots = buf.sample(5, rng)
        assert len(np.unique(slots)) == 5
        counts[slots] += 1
    assert counts.sum() == draws * 5
    ok, chi2 = chi2_ok(counts)
    assert ok, (chi2, counts)


def test_sample_is_uniform_over_subsets():
    buf = make_buffer(np.arange(6) % 5)
    rng = np.random.default_rng(7)
    subsets = {s: 0 for s in itertools.combinations(range(6), 3)}
    for _ in range(20000):
        subsets[tuple(sorted(buf.sample(3, rng).tolist()))] += 1
    ok, chi2 = chi2_ok(list(subsets.values()))
    assert ok, (chi2, subsets)


# ------------------------------------------------------------------ eviction
def test_eviction_keeps_size_and_evicts_from_largest_class():
    base_counts = [25, 20, 10, 5, 0]
    labels = np.repeat(np.arange(5), base_counts)
    max_size = len(labels)
    buf = make_buffer(labels, max_size=max_size)
    label_of = {i: int(l) for i, l in enumerate(labels)}
    buf.check_invariants()
    assert buf.size == max_size
    rng = np.random.default_rng(5)
    new_labels = [4] * 150 + [0] * 20 + [2] * 10
    for step, label in enumerate(new_labels):
        new_id = 1000 + step
        label_of[new_id] = label
        counts_before = buf.class_counts.copy()
        present_before = set(buf.ids[:buf.size].tolist())
        evicted = buf.insert(codes_for(new_id), label, new_id, rng)
        assert evicted is not None and evicted in present_before
        evicted_class = label_of[evicted]
        assert counts_before[evicted_class] == counts_before.max(), (step, counts_before, evicted_class)
        assert buf.size == max_size and len(buf) == max_size
        assert buf.size <= max_size
        buf.check_invariants()
        assert set(buf.ids[:buf.size].tolist()) == (present_before - {evicted}) | {new_id}
        expected = counts_before.copy()
        expected[evicted_class] -= 1
        expected[label] += 1
        np.testing.assert_array_equal(buf.class_counts, expected)
        assert_contents(buf, label_of)
        if step == 149:
            # Classes 0 and 1 were cut down until class 4 caught up with them at 15; from then
            # on class 4 is (one of) the largest and evicts its own examples. Classes 2 and 3
            # were never the largest and are untouched.
            counts = buf.class_counts
            assert counts[2] == 10 and counts[3] == 5, counts
            top = counts[[0, 1, 4]]
            assert top.sum() == 45 and top.max() - top.min() <= 2 and counts[4] == top.max(), counts
    assert buf.codes.shape[0] <= max_size
    # afterwards no class ever grows past the largest class count plus one
    assert buf.class_counts.max() <= 16


def test_eviction_within_class_is_uniform():
    trials = 2000
    rng = np.random.default_rng(11)
    first = np.zeros(10)
    second = np.zeros(10)
    labels = np.array([0] * 10 + [1] * 5)
    for _ in range(trials):
        buf = make_buffer(labels, num_classes=2, max_size=15)
        a = buf.insert(codes_for(100), 1, 100, rng)
        b = buf.insert(codes_for(101), 1, 101, rng)
        assert 0 <= a < 10 and 0 <= b < 10 and a != b  # both from class 0, never twice the same
        first[a] += 1
        second[b] += 1
    for counts in (first, second):
        ok, chi2 = chi2_ok(counts)
        assert ok, (chi2, counts)


def test_unbounded_buffer_never_evicts():
    buf = make_buffer([0, 0, 1], num_classes=3)
    rng = np.random.default_rng(0)
    for i in range(100):
        assert buf.insert(codes_for(10 + i), i % 3, 10 + i, rng) is None
    assert buf.size == 103
    buf.check_invariants()
    np.testing.assert_array_equal(buf.class_counts, [2 + 34, 1 + 33, 33])


def test_insert_below_max_size_does_not_evict():
    buf = make_buffer([0, 1], num_classes=3, max_size=4)
    rng = np.random.default_rng(0)
    assert buf.insert(codes_for(2), 2, 2, rng) is None
    assert buf.insert(codes_for(3), 2, 3, rng) is None
    assert buf.size == 4
    assert buf.insert(codes_for(4), 0, 4, rng) in (2, 3)  # class 2 is the largest
    buf.check_invariants()


# ------------------------------------------------------------------ state
def _filled_buffer(rng):
    labels = np.repeat(np.arange(4), [12, 9, 6, 3])
    buf = make_buffer(labels, num_classes=4, max_size=30)
    label_of = {i: int(l) for i, l in enumerate(labels)}
    for step in range(40):
        label = int(rng.integers(4))
        label_of[100 + step] = label
        buf.insert(codes_for(100 + step), label, 100 + step, rng)
    buf.check_invariants()
    return buf, label_of


def _arrays(buf):
    return (buf.codes[:buf.size].clone(), buf.labels[:buf.size].copy(), buf.ids[:buf.size].copy(),
            buf.class_counts.copy(), [buf.class_slots[c][:buf.class_counts[c]].copy()
                                      for c in range(buf.num_classes)])


def _assert_same(buf_a, buf_b):
    a, b = _arrays(buf_a), _arrays(buf_b)
    assert buf_a.size == buf_b.size
    assert torch.equal(a[0], b[0])
    for x, y in zip(a[1:4], b[1:4]):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a[4], b[4]):
        np.testing.assert_array_equal(x, y)


def test_state_dict_round_trip_and_same_future():
    buf, label_of = _filled_buffer(np.random.default_rng(3))
    state = buf.state_dict()
    assert all(torch.is_tensor(v) for v in state.values())
    stream = io.BytesIO()
    torch.save(state, stream)
    stream.seek(0)
    loaded_state = torch.load(stream, weights_only=True)
    restored = ReplayBuffer(SHAPE, 4, max_size=30)
    restored.load_state_dict(loaded_state)
    restored.check_invariants()
    _assert_same(buf, restored)
    assert restored.labels.dtype == buf.labels.dtype and restored.ids.dtype == buf.ids.dtype

    rng_a, rng_b = np.random.default_rng(77), np.random.default_rng(77)
    for step in range(60):
        label = step % 4 if step % 5 else 0
        new_id = 500 + step
        assert buf.insert(codes_for(new_id), label, new_id, rng_a) == \
            restored.insert(codes_for(new_id), label, new_id, rng_b)
        np.testing.assert_array_equal(buf.sample(7, rng_a), restored.sample(7, rng_b))
    _assert_same(buf, restored)
    restored.check_invariants()


def test_load_state_dict_rejects_other_geometry():
    buf, _ = _filled_buffer(np.random.default_rng(3))
    state = buf.state_dict()
    with pytest.raises(ValueError, match="shape"):
        ReplayBuffer((7, 7, 32), 4, max_size=30).load_state_dict(state)
    with pytest.raises(ValueError, match="classes"):
        ReplayBuffer(SHAPE, 5, max_size=30).load_state_dict(state)


# ------------------------------------------------------------------ memory and limits
def test_nbytes_close_to_raw_code_bytes():
    shape = (7, 7, 32)
    raw = 10000 * 1568
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 100, size=10000)
    codes = torch.from_numpy(rng.integers(0, 256, size=(10000, *shape), dtype=np.uint8))

    buf = ReplayBuffer(shape, 100, max_size=10000)
    buf.add_batch(codes, labels, np.arange(10000))
    assert raw <= buf.nbytes() <= 1.01 * raw, buf.nbytes() / raw
    assert torch.equal(buf.gather(np.array([1234]))[0][0], codes[1234])

    # grown one insert at a time, then evicting: the growth slack must stay within the bound
    buf = ReplayBuffer(shape, 100, max_size=10000)
    buf.add_batch(codes[:1000], labels[:1000], np.arange(1000))
    for i in range(1000, 10000):
        assert buf.insert(codes[i], int(labels[i]), i, rng) is None
    for i in range(300):
        assert buf.insert(codes[i], int(labels[i]), 20000 + i, rng) is not None
    assert buf.size == 10000 and buf.codes.shape[0] == 10000
    assert raw <= buf.nbytes() <= 1.01 * raw, buf.nbytes() / raw
    buf.check_invariants()


def test_add_batch_beyond_max_size_raises():
    buf = ReplayBuffer(SHAPE, 3, max_size=5)
    codes = torch.stack([codes_for(i) for i in range(6)])
    with pytest.raises(ValueError, match="max_buffer_size"):
        buf.add_batch(codes, [0, 1, 2, 0, 1, 2], np.arange(6))
    assert buf.size == 0
    buf.add_batch(codes[:3], [0, 1, 2], np.arange(3))
    with pytest.raises(ValueError, match="max_buffer_size"):
        buf.add_batch(codes[3:6], [0, 1, 2], np.arange(3, 6))
    assert buf.size == 3
    buf.check_invariants()


def test_labels_out_of_range_raise():
    buf = ReplayBuffer(SHAPE, 3, max_size=5)
    with pytest.raises(ValueError, match="num_classes"):
        buf.add_batch(torch.stack([codes_for(0)]), [3], [0])
    with pytest.raises(ValueError):
        buf.insert(codes_for(0), -1, 0, np.random.default_rng(0))
    with pytest.raises(ValueError):
        ReplayBuffer(SHAPE, 3, max_size=0)
