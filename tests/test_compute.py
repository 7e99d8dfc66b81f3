"""The compute record (remind/compute.py): counting, phase timing, state, files; and the library learner's counts."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from remind import REMIND, REMINDConfig
from remind.compute import COUNTS, PHASES, ComputeMeter, compute_table, read_records, summary_line


def test_phases_pause_the_enclosing_phase():
    meter = ComputeMeter()
    with meter.phase("replay"):
        time.sleep(0.05)
        with meter.phase("checkpoint"):
            time.sleep(0.1)
            with meter.phase("checkpoint"):  # re-entering the running phase: one timer
                time.sleep(0.1)
        time.sleep(0.05)
    # bounds with room for a loaded machine's late wake-ups, below what a wrong count gives (0.3 each)
    assert 0.1 <= meter.seconds["replay"] < 0.19
    assert 0.2 <= meter.seconds["checkpoint"] < 0.28
    assert all(v == 0 for k, v in meter.seconds.items() if k not in ("replay", "checkpoint"))
    with pytest.raises(ValueError, match="unknown compute phase 'G'"):
        with meter.phase("G"):
            pass


def test_timed_iterator_times_each_fetch():
    def slow():
        for k in range(3):
            time.sleep(0.03)
            yield k
    meter = ComputeMeter()
    items = []
    for item in meter.timed(slow(), "data"):
        time.sleep(0.02)  # the consumer's time is not the loader's
        items.append(item)
    assert items == [0, 1, 2]
    assert 0.09 <= meter.seconds["data"] < 0.14  # with the consumer's time it would be 0.15


def test_counts_record_and_rate():
    meter = ComputeMeter()
    meter.count_update(51)
    meter.count_update(51)
    meter.count_streamed(2)
    meter.count_evaluated(10)
    meter.add({"optimizer_updates": 3, "sample_passes": 768}, {"offline": 1.5})
    with pytest.raises(ValueError, match="unknown compute count"):
        meter.add({"updates": 1})
    record = meter.record(6, "classes")
    assert {k: record[k] for k in COUNTS} == {"examples_streamed": 2, "optimizer_updates": 5, "sample_passes": 870,
                                               "eval_examples": 10}
    assert record["seconds"]["offline"] == 1.5 and record["stream_seconds"] == pytest.approx(1.5)
    assert record["examples_per_second"] == pytest.approx(2 / 1.5, rel=1e-3)
    assert record["peak_memory_bytes"] > 0 and "cpu" in record["peak_memory_kind"]
    # a rerun of the same point replaces its record
    meter.count_streamed(1)
    meter.record(6, "classes")
    assert len(meter.records) == 1 and meter.records[0]["examples_streamed"] == 3
    line = summary_line(meter.records[0])
    assert line.startswith("compute: 3 examples streamed, 5 updates, 870 sample passes through F;") and "offline 1.5" in line
    table = compute_table({"remind": meter.records[0]})
    assert table.splitlines()[2].startswith("| remind | 3 | 5 | 870 |")


def test_state_round_trip_goes_on_counting(tmp_path):
    meter = ComputeMeter()
    meter.count_update(11)
    with meter.phase("replay"):
        time.sleep(0.02)
        state = json.loads(json.dumps(meter.state_dict()))  # what a checkpoint's metadata carries
    assert state["seconds"]["replay"] >= 0.02  # the running phase's time so far
    meter.record(4, "classes")
    saved = json.loads(json.dumps(meter.state_dict()))
    resumed = ComputeMeter()
    resumed.load_state_dict(saved)
    assert resumed.counts == meter.counts and resumed.records == meter.records
    assert resumed.elapsed_seconds >= saved["elapsed_seconds"] > 0
    resumed.count_update(11)
    resumed.record(6, "classes")
    path = resumed.write(tmp_path)
    assert path.name == "compute.json" and [r["position"] for r in read_records(tmp_path)] == [4, 6]
    assert read_records(tmp_path)[-1]["sample_passes"] == 22
    assert set(json.loads(path.read_text())["fields"]) >= set(COUNTS)


def test_unreadable_record_file_is_one_clear_error(tmp_path):
    assert read_records(tmp_path) == []
    (tmp_path / "compute.json").write_text("{not json")
    with pytest.raises(ValueError, match="compute.json is not a compute record"):
        read_records(tmp_path)
    (tmp_path / "compute.json").write_text(json.dumps({"records": [1, 2]}))
    with pytest.raises(ValueError, match="not a list of records"):
        read_records(tmp_path)


class TinyHead(nn.Module):
    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.fc = nn.Linear(channels, classes)

    def forward(self, maps):
        return self.fc(maps.mean((2, 3)))


def test_library_learner_counts_its_work(tmp_path):
    """REMIND counts what it does: steps, samples (new + replays), examples, evaluations, phases; the counts
    travel in its checkpoint."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(40, 3, 8, 8, generator=gen)
    labels = torch.arange(40) % 4
    trunk = nn.Conv2d(3, 8, 3, padding=1)
    config = REMINDConfig(num_classes=4, num_codebooks=2, codebook_size=4, replays_per_step=3,
                          use_mixup=False, use_random_resized_crops=False, lr_examples_per_class=10)
    learner = REMIND(trunk, TinyHead(8, 4), config, device="cpu")
    base = DataLoader(TensorDataset(images[:20], labels[:20]), batch_size=8)
    stream = DataLoader(TensorDataset(images[20:], labels[20:]), batch_size=8)
    learner.fit_base(base)
    assert learner.compute.counts["optimizer_updates"] == 0 and learner.compute.seconds["base_init"] > 0
    learner.fit_stream(stream, verbose=False)
    counts = learner.compute.counts
    assert counts["examples_streamed"] == 20 and counts["optimizer_updates"] == 20
    assert counts["sample_passes"] == 20 * (1 + 3)  # 20 stored before the first step: always 3 replays
    learner.evaluate(stream)
    assert counts["eval_examples"] == 20
    seconds = learner.compute.seconds
    assert min(seconds["data"], seconds["trunk"], seconds["replay"], seconds["evaluation"]) > 0
    learner.save_checkpoint(tmp_path / "remind.pth")
    assert learner.compute.seconds["checkpoint"] > 0
    again = REMIND(trunk, TinyHead(8, 4), config, device="cpu")
    again.load_checkpoint(tmp_path / "remind.pth")
    assert again.compute.counts == counts
    np.testing.assert_array_equal(again.class_steps, learner.class_steps)


def test_every_phase_is_documented():
    from remind import compute
    for name in PHASES:
        assert f"\n{name} " in compute.__doc__, name


def test_peak_memory_is_the_process_own_not_its_parents(tmp_path):
    """A run started as a subprocess by a program holding much memory reports its own peak (ru_maxrss
    would report the parent's: it survives fork and exec)."""
    import subprocess
    import sys
    held = np.ones(600 * 2**20 // 8)  # 600 MiB touched in this process
    child = subprocess.run([sys.executable, "-c", "from remind.compute import ComputeMeter; "
                            "print(ComputeMeter().peak_memory()[0])"], capture_output=True, text=True, check=True)
    own = ComputeMeter().peak_memory()[0]
    assert own > 600 * 2**20 and held.sum() > 0
    assert 0 < int(child.stdout) < own - 300 * 2**20, (int(child.stdout), own)
