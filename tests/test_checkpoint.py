"""Checkpoint I/O: round trip, atomic writes, clear errors on damaged or foreign files, RNG state."""
import json
import os
import zipfile

import numpy as np
import pytest
import torch

from remind.checkpoint import (CheckpointError, atomic_torch_save, load_state, rng_from_json,
                               rng_state_to_json, safe_load, save_state)


class Custom:
    """A plain Python object: saving it needs pickle, which weights-only loading refuses."""

    def __init__(self):
        self.value = 3


def _tensors():
    torch.manual_seed(0)
    return {
        "weights": torch.randn(4, 5),
        "codes": torch.randint(0, 256, (3, 7, 7, 8), dtype=torch.uint8),
        "labels": torch.arange(10, dtype=torch.int64),
        "flag": torch.tensor(True),
    }


def test_save_state_round_trip(tmp_path):
    tensors = _tensors()
    meta = {"step": 12, "lr": 0.05, "classes": [3, 1, 2], "nested": {"name": "run", "ok": True},
            "none": None}
    path = tmp_path / "sub" / "state.pt"
    save_state(path, tensors, meta)
    loaded, loaded_meta = load_state(path)
    assert loaded_meta == meta
    assert set(loaded) == set(tensors)
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype
        assert torch.equal(loaded[key], value)


def test_atomic_save_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "model.pt"
    atomic_torch_save({"a": torch.ones(3)}, path)
    atomic_torch_save({"a": torch.zeros(3)}, path)  # overwrite
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(3))


def test_atomic_save_failure_keeps_previous_file(tmp_path):
    path = tmp_path / "model.pt"
    atomic_torch_save({"a": torch.ones(3)}, path)
    with pytest.raises(Exception):
        atomic_torch_save({"a": torch.zeros(3), "f": lambda x: x}, path)  # lambdas cannot be pickled
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))


def _assert_damaged(path):
    with pytest.raises(CheckpointError) as err:
        load_state(path)
    message = str(err.value)
    assert "truncated" in message and "corrupt" in message and str(path) in message
    with pytest.raises(CheckpointError):
        safe_load(path)


def test_truncated_file_raises_checkpoint_error(tmp_path):
    path = tmp_path / "state.pt"
    save_state(path, _tensors(), {"step": 1})
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    _assert_damaged(path)


def test_random_bytes_raise_checkpoint_error(tmp_path):
    path = tmp_path / "state.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    _assert_damaged(path)


def test_empty_file_raises_checkpoint_error(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _assert_damaged(empty)


def test_missing_file_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_state(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="not found"):
        safe_load(tmp_path)  # a directory is not a checkpoint file


def test_plain_torch_file_is_not_a_state_file(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"a": torch.ones(2)}, path)
    assert torch.equal(safe_load(path)["a"], torch.ones(2))  # readable ...
    with pytest.raises(CheckpointError, match="not a REMIND state file"):
        load_state(path)  # ... but not a state file
    torch.save([torch.ones(2)], path)
    with pytest.raises(CheckpointError):
        load_state(path)


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"tensors": {}, "meta_json": "{}", "obj": Custom()}, path)
    with pytest.raises(CheckpointError) as err:
        load_state(path)
    assert "weights-only" in str(err.value)
    torch.save(Custom(), path)
    with pytest.raises(CheckpointError):
        safe_load(path)


def test_legacy_format_loads_without_pickle(tmp_path):
    """PyTorch 1.3.1 (the original's) wrote the legacy, non-zip format; it cannot be memory-mapped but loads."""
    path = tmp_path / "legacy.pth"
    ckpt = {"epoch": 40, "arch": "ResNet18ClassifyAfterLayer4_1", "best_acc1": torch.tensor(71.5),
            "state_dict": {"module.fc.weight": torch.arange(6.0).reshape(3, 2)},
            "optimizer": {"state": {0: {"momentum_buffer": torch.ones(2)}}, "param_groups": [{"lr": 0.1}]}}
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    loaded = safe_load(path)
    assert loaded["epoch"] == 40 and torch.equal(loaded["state_dict"]["module.fc.weight"],
                                                 ckpt["state_dict"]["module.fc.weight"])
    torch.save({"state_dict": {}, "obj": Custom()}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="weights-only"):
        safe_load(path)  # still no pickle in the legacy format


def test_rng_json_round_trip_gives_same_future_draws():
    rng = np.random.default_rng(1234)
    rng.random(17)  # advance
    text = rng_state_to_json(rng)
    json.loads(text)  # valid JSON
    clone = rng_from_json(text)
    assert type(clone.bit_generator) is type(rng.bit_generator)
    np.testing.assert_array_equal(clone.random(100), rng.random(100))
    np.testing.assert_array_equal(clone.integers(0, 1000, 50), rng.integers(0, 1000, 50))
    np.testing.assert_array_equal(clone.choice(1000, 20, replace=False), rng.choice(1000, 20, replace=False))
    np.testing.assert_array_equal(clone.beta(0.1, 0.1, 10), rng.beta(0.1, 0.1, 10))


def test_rng_state_survives_save_state(tmp_path):
    rng = np.random.default_rng(5)
    rng.integers(0, 10, 3)
    path = tmp_path / "state.pt"
    save_state(path, {}, {"rng": rng_state_to_json(rng)})
    _, meta = load_state(path)
    clone = rng_from_json(meta["rng"])
    np.testing.assert_array_equal(clone.standard_normal(10), rng.standard_normal(10))


@pytest.mark.parametrize("bit_generator", ["MT19937", "Philox", "SFC64"])
def test_rng_json_rejects_other_bit_generators(bit_generator):
    rng = np.random.Generator(getattr(np.random, bit_generator)(5))
    with pytest.raises(ValueError, match="default_rng"):
        rng_state_to_json(rng)


def test_run_state_identity_and_earlier_formats(tmp_path):
    from remind.checkpoint import load_run_state, save_run_state, save_state

    path = tmp_path / "run.pth"
    save_run_state(path, {"learner": {"w": torch.ones(2)}}, {"seed": 0, "mode": "stream", "shape": (2, 2)},
                   {"position": 5})
    state, meta = load_run_state(path, {"seed": 0, "mode": "stream", "shape": (2, 2)})
    assert torch.equal(state["learner"]["w"], torch.ones(2)) and meta["position"] == 5
    with pytest.raises(CheckpointError, match=r"other settings \(mode: saved 'stream', now 'offline', seed: saved 0, "
                                              r"now 1\)"):
        load_run_state(path, {"seed": 1, "mode": "offline", "shape": (2, 2)})
    old = tmp_path / "remind_buffer_4.pth"  # what this project wrote before the shared learner
    save_state(old, {"buffer.codes": torch.zeros(1, 2, 2, 4, dtype=torch.uint8)}, {"inc": 4, "settings": {}})
    with pytest.raises(CheckpointError, match="earlier version of this project"):
        load_run_state(old, {})
    legacy_vqa = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "meta_json": "{}"}, legacy_vqa)
    with pytest.raises(CheckpointError, match="earlier version of this project"):
        load_run_state(legacy_vqa, {})
