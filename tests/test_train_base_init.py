"""Smoke tests of train_base_init_network_from_scratch on the tiny digits ImageFolder (CPU)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed

from image_classification_experiments import train_base_init_network_from_scratch as base_init
from image_classification_experiments.make_digits_imagefolder import write_digits
from image_classification_experiments.resnet_models import ROW_ORDER, build_full_network, load_network_state

REPO_ROOT = Path(__file__).resolve().parents[1]
CKPT = "net.pth"
BASE_MAX_CLASS = 4


def tiny_args(data: Path, save_dir: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--save_dir", str(save_dir), "--ckpt_file", CKPT, "--image_size", "32",
            "--base_max_class", str(BASE_MAX_CLASS), "--num_classes", "10", "-b", "16", "-j", "0",
            "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits(str(tmp_path_factory.mktemp("digits") / "data"), per_class=12, pixels=32)


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory) -> Path:
    """save_dir of a finished 2-epoch run."""
    save_dir = tmp_path_factory.mktemp("ckpts")
    assert base_init.main(tiny_args(digits, save_dir, "--epochs", "2")) == 0
    return save_dir


def test_checkpoints_load_weights_only(trained, digits):
    for name in (CKPT, f"best_{CKPT}"):
        ckpt = torch.load(trained / name, weights_only=True)
        assert ckpt["arch"] == "ResNet18ClassifyAfterLayer4_1"
        assert ckpt["num_classes"] == 10 and ckpt["image_size"] == 32
        assert isinstance(ckpt["best_acc1"], float) and 0.0 <= ckpt["best_acc1"] <= 100.0
        assert all(key.startswith("model.") for key in ckpt["state_dict"])
        assert ckpt["state_dict"]["model.fc.weight"].shape == (10, 512)
        assert ckpt["optimizer"]["state"], "SGD momentum buffers must be saved"
    assert torch.load(trained / CKPT, weights_only=True)["epoch"] == 2
    state, extras = load_network_state(str(trained / CKPT))
    assert extras["arch"] == "ResNet18ClassifyAfterLayer4_1" and extras["num_classes"] == 10
    # row k of fc is the class at position k of the order file (the label files' value k)
    assert extras["row_order"] == ROW_ORDER
    assert extras["class_names"] == (digits / "class_order.txt").read_text().split()
    build_full_network("ResNet18ClassifyAfterLayer4_1", 10).load_state_dict(state, strict=True)
    assert sorted(p.name for p in trained.iterdir()) == sorted([CKPT, f"best_{CKPT}"])


def test_training_labels_follow_the_class_order(digits, tmp_path):
    args = base_init.get_args_parser().parse_args(tiny_args(digits, tmp_path / "unused"))
    procs = base_init.Processes()
    base_init.check_args(args, procs)
    train_loader, val_loader = base_init.build_loaders(args, procs, torch.device("cpu"))
    file_labels = np.load(digits / "imagenet_indices" / "imagenet_train_labels.npy")
    seen = {}
    for _images, labels, ids in train_loader:
        seen.update(zip(ids.tolist(), labels.tolist()))
    assert sorted(seen) == np.nonzero(file_labels < BASE_MAX_CLASS)[0].tolist()
    assert all(file_labels[i] == label for i, label in seen.items())
    # ImageFolder's alphabetical targets (digit_k -> k) would differ for a shuffled class order.
    folder_targets = [int(Path(path).parent.name.split("_")[1]) for path, _ in train_loader.dataset.samples]
    assert any(folder_targets[i] != label for i, label in seen.items())
    assert len(val_loader.dataset) == int((np.load(digits / "imagenet_indices" /
                                                   "imagenet_val_labels.npy") < BASE_MAX_CLASS).sum())


def test_resume_continues_exactly(digits, trained, tmp_path, capsys):
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    assert base_init.main(tiny_args(digits, resumed, "--epochs", "3", "--resume", str(trained / CKPT))) == 0
    out = capsys.readouterr().out
    assert "epoch 3/3" in out and "epoch 1/3" not in out and "epoch 2/3" not in out
    assert base_init.main(tiny_args(digits, straight, "--epochs", "3")) == 0
    after_resume = torch.load(resumed / CKPT, weights_only=True)
    uninterrupted = torch.load(straight / CKPT, weights_only=True)
    assert after_resume["epoch"] == uninterrupted["epoch"] == 3
    # Same seeded shuffles and crops per epoch: resuming reproduces the uninterrupted run.
    for key, value in uninterrupted["state_dict"].items():
        torch.testing.assert_close(after_resume["state_dict"][key], value, rtol=1e-4, atol=1e-5)


def test_evaluate_writes_nothing(digits, trained, tmp_path, capsys):
    save_dir = tmp_path / "eval"
    assert base_init.main(tiny_args(digits, save_dir, "-e", "--resume", str(trained / CKPT))) == 0
    assert "val top-1" in capsys.readouterr().out
    assert not save_dir.exists()


BAD_INPUTS = {
    "missing folder": (lambda d, t: ["--data", str(t / "nowhere")], "does not exist"),
    "missing labels": (lambda d, t: ["--labels_dir", str(t)], "label file"),
    "classes beyond labels": (lambda d, t: ["--base_max_class", "11", "--num_classes", "20"], "--base_max_class"),
    "num_classes too small": (lambda d, t: ["--num_classes", "3"], "--num_classes"),
    "unknown arch": (lambda d, t: ["--arch", "ResNet99"], "--arch"),
    "corrupt resume": (lambda d, t: ["--resume", str(t / "truncated.pth")], "--resume"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_cleanly(case, digits, trained, tmp_path, capsys):
    save_dir = tmp_path / "save"
    save_dir.mkdir()
    shutil.copyfile(trained / CKPT, save_dir / CKPT)
    before = (save_dir / CKPT).read_bytes()
    (tmp_path / "truncated.pth").write_bytes(before[:5000])
    make_flags, expected = BAD_INPUTS[case]
    # Later flags win in argparse, so the bad flag overrides the good default.
    assert base_init.main(tiny_args(digits, save_dir, "--epochs", "1", *make_flags(digits, tmp_path))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert (save_dir / CKPT).read_bytes() == before
    assert [p.name for p in save_dir.iterdir()] == [CKPT]


@pytest.mark.skipif(importlib.util.find_spec("torch.distributed.run") is None
                    or not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torchrun / gloo not available")
def test_torchrun_two_cpu_processes(digits, tmp_path):
    save_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT),
           "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "image_classification_experiments.train_base_init_network_from_scratch",
               *tiny_args(digits, save_dir, "--epochs", "1")]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.count("epoch 1/1 ") == 1, "only rank 0 prints"
    assert "2 process(es)" in result.stdout
    ckpt = torch.load(save_dir / CKPT, weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(key.startswith("model.") for key in ckpt["state_dict"])
    state, _ = load_network_state(str(save_dir / CKPT))
    build_full_network("ResNet18ClassifyAfterLayer4_1", 10).load_state_dict(state, strict=True)


def test_rerun_of_a_finished_training_changes_nothing(digits, trained, tmp_path, capsys):
    """A finished base-init network is never trained over: the same command says so and exits 0."""
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in copy.iterdir()}
    capsys.readouterr()
    assert base_init.main(tiny_args(digits, copy, "--epochs", "2")) == 0
    assert "already trained" in capsys.readouterr().out
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in copy.iterdir()} == before
    (copy / CKPT).unlink()  # only best_ left: refused unless --overwrite
    assert base_init.main(tiny_args(digits, copy, "--epochs", "2")) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (copy / f"best_{CKPT}").read_bytes() == before[f"best_{CKPT}"][1]


def first_base_image(data: Path, split: str) -> Path:
    """An image of class 0..BASE_MAX_CLASS-1 (one the run uses) in ``split``."""
    labels = np.load(data / "imagenet_indices" / f"imagenet_{split}_labels.npy")
    folder = data / split
    paths = sorted(p for p in folder.rglob("*.png"))  # ImageFolder's order: class folders, then file names
    return paths[int(np.nonzero(labels < BASE_MAX_CLASS)[0][0])]


def test_check_images_refuses_unreadable_images_before_training(digits, trained, tmp_path, capsys):
    copy = tmp_path / "digits"
    shutil.copytree(digits, copy)
    broken = first_base_image(copy, "val")
    broken.write_bytes(b"")  # a zero-byte image
    save_dir = tmp_path / "save"
    capsys.readouterr()
    assert base_init.main(tiny_args(copy, save_dir, "--epochs", "1", "--check_images")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 1 images cannot be read") and str(broken) in err[0], err
    assert not save_dir.exists()
    # without the flag the run meets it (after training an epoch): one line naming the file, no traceback
    assert base_init.main(tiny_args(copy, save_dir, "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"error: image {broken} cannot be read")
    # a readable tree passes the check
    rerun = tmp_path / "rerun"
    shutil.copytree(trained, rerun)
    assert base_init.main(tiny_args(digits, rerun, "--epochs", "2", "--check_images")) == 0
    out = capsys.readouterr().out
    assert f"every image of classes 0-{BASE_MAX_CLASS - 1} can be read" in out and "already trained" in out
