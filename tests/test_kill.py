"""Kill tests: the real image entry point in a subprocess on tiny digits, killed with SIGKILL at seeded
random points (once right after an increment's state is written, once right after a mid-increment state
is written), stopped once with SIGTERM, and rerun until it finishes: its accuracy file and predictions equal
an uninterrupted run's, bit for bit. (The VQA one is in test_vqa.py, next to its data.)"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from image_classification_experiments import imagenet_experiment as ie
from image_classification_experiments.make_digits_imagefolder import write_digits
from image_classification_experiments.resnet_models import ROW_ORDER, ResNet18ClassifyAfterLayer4_1
from image_classification_experiments.utils_imagenet import class_names_by_position
from helpers import randomise

REPO = Path(__file__).resolve().parents[1]
POINTS = (4, 7, 10)


def argv(digits: Path, ckpt: Path, save_dir: Path, *extra: str) -> list[str]:
    return ["--images_dir", str(digits), "--label_dir", str(digits), "--classifier_ckpt", str(ckpt),
            "--num_classes", "10", "--base_init_classes", "4", "--class_increment", "3", "--image_size", "64",
            "--num_workers", "0", "--device", "cpu", "--codebook_size", "16", "--rehearsal_samples", "4",
            "--use_random_resized_crops", "--use_mixup", "--lr_examples_per_class", "auto", "--batch_size", "3",
            "--save_dir", str(save_dir), *extra]


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "image_classification_experiments.imagenet_experiment", *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(proc: subprocess.Popen, ready, timeout: float = 300) -> bool:
    """Poll until ``ready()`` (True) or the process ends (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    raise TimeoutError("the run neither reached the point nor ended")


def mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    digits = write_digits(str(root / "digits"), per_class=10, pixels=32, seed=3)
    torch.manual_seed(0)
    ckpt = root / "base.pth"
    torch.save({"state_dict": randomise(ResNet18ClassifyAfterLayer4_1(num_classes=10), 1).state_dict(),
                "row_order": ROW_ORDER, "class_names": class_names_by_position(str(digits), str(digits), 10)}, ckpt)
    reference = root / "uninterrupted"
    torch.set_num_threads(1)  # as the subprocesses: the same kernels, so the same bits
    try:
        assert ie.main(argv(digits, ckpt, reference, "--checkpoint_every_minutes", "0")) == 0
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    return digits, ckpt, reference


def test_killed_runs_finish_like_an_uninterrupted_one(setup, tmp_path):
    digits, ckpt, reference = setup
    save_dir = tmp_path / "killed"
    model_dir = save_dir / "remind_model"
    # a mid-increment state every ~0.1 s, between batches of 3 images
    args = argv(digits, ckpt, save_dir, "--checkpoint_every_minutes", "0.002")
    rng = random.Random(7)
    outcomes, outputs = [], []

    def finish(proc: subprocess.Popen) -> None:
        out, _ = proc.communicate(timeout=600)
        outcomes.append(proc.returncode)
        outputs.append(out)

    # 1. SIGKILL right after the first increment's state is written (the base-init one already exists)
    proc = start(args)
    if wait_for(proc, lambda: (model_dir / f"remind_buffer_{POINTS[1]}.pth").exists()):
        proc.send_signal(signal.SIGKILL)
    finish(proc)
    # 2. SIGKILL right after a mid-increment state is (re)written
    proc = start(args)
    before = mtime(model_dir / "remind_partial.pth")
    if wait_for(proc, lambda: mtime(model_dir / "remind_partial.pth") not in (0, before)):
        proc.send_signal(signal.SIGKILL)
    finish(proc)
    # 3. SIGTERM: the run saves its state at the next safe point and exits 128 + 15
    proc = start(args)
    before = mtime(model_dir / "remind_partial.pth")
    if wait_for(proc, lambda: mtime(model_dir / "remind_partial.pth") not in (0, before)):
        proc.send_signal(signal.SIGTERM)
    finish(proc)
    if outcomes[-1] != 0:  # 0 only if it finished first
        assert outcomes[-1] == 128 + signal.SIGTERM, outputs[-1][-2000:]
        assert "stopped by SIGTERM; the run's state is saved" in outputs[-1]
    # 4.-5. SIGKILL at seeded random times
    for _ in range(2):
        proc = start(args)
        try:
            proc.wait(timeout=rng.uniform(3.0, 9.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        finish(proc)
    # then rerun until it finishes
    for _ in range(5):
        finish(start(args))
        if outcomes[-1] == 0:
            break
    assert outcomes[-1] == 0, outputs[-1][-3000:]
    assert outcomes.count(-signal.SIGKILL) >= 2, outcomes  # the runs were really killed
    assert any("remind_partial.pth: " in out for out in outputs)  # and some continued inside an increment

    last = f"accuracies_min_trained_0_max_trained_{POINTS[-1]}.json"
    assert json.loads((save_dir / last).read_text()) == json.loads((reference / last).read_text())
    for point in POINTS:
        name = f"preds_min_trained_0_max_trained_{point}.pth"
        assert torch.equal(torch.load(save_dir / name, weights_only=True),
                           torch.load(reference / name, weights_only=True)), point
        assert (save_dir / f"accuracies_min_trained_0_max_trained_{point}.json").is_file()
    # bounded disk: one increment state, no mid-increment state, no temporary file left
    assert sorted(p.name for p in model_dir.iterdir()) == ["eval_codes.pth", "remind_buffer_10.pth"] + [
        f"remind_classifier_F_{p}.pth" for p in sorted(POINTS, key=str)]
    assert not list(save_dir.rglob("*.tmp"))
