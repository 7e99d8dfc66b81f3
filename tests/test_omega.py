"""Omega, ``compute_omega`` and the offline baseline (``imagenet_experiment --offline_epochs``) on CPU.

The end-to-end runs use the tiny digits set of tests/test_imagenet_experiment.py (10 classes, 8 train
and 2 val images per class, 64 px inputs, 2x2 maps) and a randomly initialised base-init network.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from image_classification_experiments import compute_omega as co
from image_classification_experiments import imagenet_experiment as ie
from image_classification_experiments.make_digits_imagefolder import write_digits
from image_classification_experiments.resnet_models import ResNet18ClassifyAfterLayer4_1
from remind.checkpoint import load_state
from remind.compute import ComputeMeter, read_records
from remind.metrics import omega

NUM_CLASSES, BASE, INCREMENT, POINTS = 10, 4, 2, [4, 6, 8, 10]
OFFLINE_EPOCHS, OFFLINE_BATCH = 3, 8  # offline_argv's


# ------------------------------------------------------------------ omega
def test_omega_hand_computed():
    assert omega([50, 40], [100, 80]) == pytest.approx(0.5)
    assert omega([90.0, 60.0], [100.0, 80.0]) == pytest.approx((0.9 + 0.75) / 2)
    assert omega([None, 30.0, 20.0], [None, 60.0, 10.0]) == pytest.approx((0.5 + 2.0) / 2)  # skipped point


@pytest.mark.parametrize("learner, offline, message", [
    ([50, 40], [100], "2 evaluation points but offline has 1"),
    ([None, 40], [100, 80], "only one"),
    ([50], [0.0], "undefined"),
    ([None], [None], "no evaluation point"),
])
def test_omega_bad_input(learner, offline, message):
    with pytest.raises(ValueError, match=message):
        omega(learner, offline)


# ------------------------------------------------------------------ compute_omega on hand-written results
def _write_run(folder: Path, seen1, seen5, base1, base5, non1, non5, points=(4, 6, 8)) -> Path:
    folder.mkdir(parents=True)
    for n, k in enumerate(points, start=1):
        acc = {"seen_classes_top1": seen1[:n], "seen_classes_top5": seen5[:n], "base_classes_top1": base1[:n],
               "base_classes_top5": base5[:n], "non_base_classes_top1": non1[:n - 1],
               "non_base_classes_top5": non5[:n - 1]}
        (folder / f"accuracies_min_trained_0_max_trained_{k}.json").write_text(json.dumps(acc))
    return folder


def test_compute_omega_end_to_end(tmp_path, capsys):
    offline = _write_run(tmp_path / "offline", [100, 80, 50], [100, 100, 100], [100, 90, 60], [100, 100, 100],
                         [70, 40], [100, 100])
    learner = _write_run(tmp_path / "remind", [90, 40, 50], [100, 50, 100], [50, 45, 60], [100, 100, 50],
                         [35, 40], [100, 50])
    out = tmp_path / "out"
    assert co.main(["--offline", str(offline), "--runs", f"remind={learner}", f"same={offline}",
                    "--out", str(out)]) == 0
    result = json.loads((out / "omega.json").read_text())
    assert set(result) == {"remind", "same"}
    assert result["remind"] == pytest.approx({
        "top1": (0.9 + 0.5 + 1.0) / 3, "top5": (1.0 + 0.5 + 1.0) / 3,
        "base_top1": (0.5 + 0.5 + 1.0) / 3, "base_top5": (1.0 + 1.0 + 0.5) / 3,
        "non_base_top1": (0.5 + 1.0) / 2, "non_base_top5": (1.0 + 0.5) / 2})
    assert all(v == pytest.approx(1.0) for v in result["same"].values())
    table = (out / "results.md").read_text()
    assert "| remind | 0.800 |" in table and "offline seen top1" in table and "| 8 | 50.00 |" in table
    assert (out / "accuracy_curves.png").read_bytes().startswith(b"\x89PNG")
    assert "remind" in capsys.readouterr().out
    assert "## Compute" not in table  # hand-written runs have no compute.json


def test_compute_omega_reports_each_runs_compute(tmp_path, capsys):
    """results.md gets each run's last compute record; an unreadable compute.json is left out with a warning,
    and the Omega report is still written."""
    offline = _write_run(tmp_path / "offline", [100, 80, 50], [100] * 3, [100] * 3, [100] * 3, [70, 40], [100] * 2)
    learner = _write_run(tmp_path / "remind", [90, 40, 50], [100] * 3, [50] * 3, [100] * 3, [35, 40], [100] * 2)
    meter = ComputeMeter()
    meter.count_streamed(816)
    meter.count_update(51)
    meter.add(seconds={"replay": 8.0})
    meter.record(8, "classes")
    meter.write(learner)
    (offline / "compute.json").write_text("{oops")
    out = tmp_path / "out"
    assert co.main(["--offline", str(offline), "--runs", f"remind={learner}", "--out", str(out)]) == 0
    table = (out / "results.md").read_text()
    assert "## Compute" in table and "| remind | 816 | 1 | 51 | 8.0 | 102.0 |" in table
    assert "| offline |" not in table.split("## Compute")[1]
    assert "compute.json is not a compute record" in capsys.readouterr().out


def test_compute_omega_bad_input(tmp_path, capsys):
    offline = _write_run(tmp_path / "offline", [100, 80, 50], [100] * 3, [100] * 3, [100] * 3, [70, 40], [100] * 2)
    short = _write_run(tmp_path / "short", [90, 40], [100] * 2, [50] * 2, [100] * 2, [35], [100], points=(4, 6))
    (tmp_path / "empty").mkdir()
    strings = _write_run(tmp_path / "strings", [100, 80, 50], [100] * 3, [100] * 3, [100] * 3, [70, 40], [100] * 2)
    name = "accuracies_min_trained_0_max_trained_8.json"
    bad = json.loads((strings / name).read_text())
    bad["seen_classes_top1"] = ["90", "40", "50"]  # strings, not numbers
    (strings / name).write_text(json.dumps(bad))
    for runs in ([f"a={tmp_path / 'missing'}"], [f"a={tmp_path / 'empty'}"], [f"a={short}"], ["no_equals_sign"],
                 [f"a={strings}"]):
        capsys.readouterr()
        assert co.main(["--offline", str(offline), "--runs", *runs, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ the offline baseline, real entry point
@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits(str(tmp_path_factory.mktemp("digits_om") / "digits"), per_class=10, pixels=32, seed=0)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt_om") / "base.pth"
    torch.save({"state_dict": ResNet18ClassifyAfterLayer4_1(num_classes=NUM_CLASSES).state_dict(),
                "arch": "ResNet18ClassifyAfterLayer4_1"}, path)
    return path


def offline_argv(digits: Path, ckpt: Path, save_dir: Path, *extra: str) -> list[str]:
    return ["--images_dir", str(digits), "--label_dir", str(digits), "--classifier_ckpt", str(ckpt),
            "--num_classes", str(NUM_CLASSES), "--base_init_classes", str(BASE), "--class_increment",
            str(INCREMENT), "--image_size", "64", "--num_workers", "0", "--device", "cpu", "--codebook_size", "16",
            "--use_random_resized_crops", "--offline_epochs", str(OFFLINE_EPOCHS), "--offline_batch_size", str(OFFLINE_BATCH),
            "--offline_lr", "0.05", "--keep_checkpoints", "all", "--save_dir", str(save_dir), *extra]


@pytest.fixture(scope="module")
def offline_run(digits, ckpt, tmp_path_factory) -> Path:
    save_dir = tmp_path_factory.mktemp("offline") / "run"
    assert ie.main(offline_argv(digits, ckpt, save_dir)) == 0
    return save_dir


def test_offline_run_writes_the_streaming_files(offline_run, ckpt):
    for n, k in enumerate(POINTS):
        acc = json.loads((offline_run / f"accuracies_min_trained_0_max_trained_{k}.json").read_text())
        assert set(acc) == set(ie.ACCURACY_KEYS)
        assert len(acc["seen_classes_top1"]) == n + 1 and len(acc["non_base_classes_top1"]) == n
        assert all(math.isfinite(v) and 0 <= v <= 100 for values in acc.values() for v in values)
        preds = torch.load(offline_run / f"preds_min_trained_0_max_trained_{k}.pth", weights_only=True)
        assert preds.shape == (2 * k, NUM_CLASSES) and torch.isfinite(preds).all()
        tensors, meta = load_state(offline_run / "remind_model" / f"remind_buffer_{k}.pth")
        # the buffer holds exactly the training examples seen so far (8 per class), unbounded
        labels = tensors["learner"]["buffer"]["labels"]
        assert meta["identity"]["mode"] == "offline" and len(labels) == 8 * k
        assert sorted(labels.tolist()) == sorted(list(range(k)) * 8)
        assert tensors["class_steps"].sum() == 0  # no streaming step was taken
    assert (offline_run / "accuracy_curves.png").is_file()
    # the compute record: each point's examples stored, then EPOCHS epochs of F over everything seen
    records, updates, passes = read_records(offline_run), 0, 0
    assert [r["position"] for r in records] == POINTS
    for record in records:  # F trained at base init too (in the base_init phase)
        k = record["position"]
        updates += OFFLINE_EPOCHS * -(-8 * k // OFFLINE_BATCH)
        passes += OFFLINE_EPOCHS * 8 * k
        assert record["examples_streamed"] == 8 * (k - BASE)
        assert (record["optimizer_updates"], record["sample_passes"]) == (updates, passes)
        assert (record["seconds"]["offline"] > 0) == (k > BASE) and record["seconds"]["replay"] == 0
    # F was retrained from the base-init checkpoint: its fc differs from the checkpoint's
    base_fc = torch.load(ckpt, weights_only=True)["state_dict"]["model.fc.weight"]
    trained = torch.load(offline_run / "remind_model" / "remind_classifier_F_10.pth", weights_only=True)
    assert not torch.equal(trained["model_state_dict"]["model.fc.weight"], base_fc)


def test_offline_resume_equals_uninterrupted(offline_run, digits, ckpt, tmp_path, capsys):
    save_dir = tmp_path / "resumed"
    assert ie.main(offline_argv(digits, ckpt, save_dir, "--streaming_max_class", "6")) == 0
    assert not (save_dir / "accuracies_min_trained_0_max_trained_8.json").exists()
    first_checkpoint = (save_dir / "remind_model" / "remind_buffer_6.pth").stat().st_mtime_ns
    assert ie.main(offline_argv(digits, ckpt, save_dir)) == 0
    assert (save_dir / "remind_model" / "remind_buffer_6.pth").stat().st_mtime_ns == first_checkpoint
    final = "accuracies_min_trained_0_max_trained_10.json"
    assert json.loads((save_dir / final).read_text()) == json.loads((offline_run / final).read_text())
    torch.testing.assert_close(torch.load(save_dir / "preds_min_trained_0_max_trained_10.pth", weights_only=True),
                               torch.load(offline_run / "preds_min_trained_0_max_trained_10.pth", weights_only=True))
    # a streaming run cannot continue an offline checkpoint (nor the reverse)
    capsys.readouterr()
    argv = [a for a in offline_argv(digits, ckpt, save_dir, "--streaming_max_class", "10")]
    argv[argv.index("--offline_epochs") + 1] = "0"
    (save_dir / "remind_model" / "remind_buffer_10.pth").unlink()
    assert ie.main(argv) == 2
    assert "mode: saved 'offline', now 'stream'" in capsys.readouterr().err


def test_offline_rejects_a_buffer_limit(digits, ckpt, tmp_path, capsys):
    assert ie.main(offline_argv(digits, ckpt, tmp_path / "x", "--max_buffer_size", "10")) == 2
    assert "--max_buffer_size" in capsys.readouterr().err
