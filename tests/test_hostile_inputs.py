"""Hostile but fair inputs, tried through the real entry points (issue 12: "Nothing lost, nothing silent").

Each case builds its inputs on tiny data, calls an entry point's ``main(argv)`` in this process (the shell
scripts in a subprocess) and checks the outcome its kind promises:

- ``error``: exit status 2 and exactly one stderr line, ``error: ...``, naming the problem; the protected paths
  (inputs, results folders, marker files a payload would create) are byte for byte as they were, and a
  results folder that did not exist still does not;
- ``late``: the run starts and then meets the bad input: exit 2, no traceback, the last stderr line is the
  ``error:`` line (progress bars may come before it);
- ``argparse``: a flag argparse itself refuses (exit 2, its ``error:`` line after the usage);
- ``rerun``: a rerun over finished work: exit 0, nothing rewritten, the expected note on stdout;
- ``ok``: an input that looks wrong but is valid (a byte-order mark): exit 0, the expected note on stdout;
- ``stopped``: a signal (sent by the case's patch): exit 128 + its number, no traceback, the note last on stderr.

``docs/hostile_inputs.md`` is this table with the outcome of each case; regenerate it with
``HOSTILE_INPUTS_TABLE=docs/hostile_inputs.md python -m pytest tests/test_hostile_inputs.py``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
import torch

from image_classification_experiments import (
    compute_omega,
    convert_released_checkpoint,
    core50_experiment,
    imagenet_experiment,
    make_numpy_imagenet_label_files,
    offline_full_network,
)
from image_classification_experiments import train_base_init_network_from_scratch as base_init
from image_classification_experiments.make_core50_tree import write_core50_tree
from image_classification_experiments.make_digits_imagefolder import write_digits
from image_classification_experiments.resnet_models import ROW_ORDER, ResNet18ClassifyAfterLayer4_1, build_full_network
from image_classification_experiments.utils_imagenet import _scan_folder, class_names_by_position, load_labels
from remind import reporting
from remind.checkpoint import save_state
from vqa_experiments import make_synthetic_vqa, vqa_trainer
from vqa_experiments.clevr import extract_image_features_clevr, pq_encoding_clevr, preprocess_clevr
from vqa_experiments.tdiuc import preprocess_tdiuc

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "image_classification_experiments"

ENTRIES: dict[str, Callable] = {
    "imagenet_experiment": imagenet_experiment.main,
    "core50_experiment": core50_experiment.main,
    "train_base_init_network_from_scratch": base_init.main,
    "offline_full_network": offline_full_network.main,
    "make_numpy_imagenet_label_files": make_numpy_imagenet_label_files.main,
    "convert_released_checkpoint": convert_released_checkpoint.main,
    "compute_omega": compute_omega.main,
    "preprocess_clevr": preprocess_clevr.main,
    "preprocess_tdiuc": preprocess_tdiuc.main,
    "extract_image_features_clevr": extract_image_features_clevr.main,
    "pq_encoding_clevr": pq_encoding_clevr.main,
    "vqa_trainer": vqa_trainer.main,
    "make_synthetic_vqa": make_synthetic_vqa.main,
}
SHELL = ("train_base_init_network.sh", "run_imagenet_experiment.sh", "run_core50_experiment.sh",
         "run_clevr_experiment.sh")


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def quiet_and_single_threaded():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reporting, "git_commit", lambda: "test")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> SimpleNamespace:
    """The digits ImageFolder (10 classes, label files in a shuffled class order), a base-init checkpoint
    for it, and a tiny CORe50 tree."""
    root = tmp_path_factory.mktemp("hostile")
    digits = write_digits(str(root / "digits"), per_class=8, pixels=32)
    ckpt = root / "base.pth"
    torch.save({"state_dict": ResNet18ClassifyAfterLayer4_1(num_classes=10).state_dict(), "row_order": ROW_ORDER,
                "class_names": class_names_by_position(str(digits), str(digits), 10)}, ckpt)
    core50 = write_core50_tree(str(root / "core50"), num_objects=5, frames_per_video=2, pixels=8, seed=0)
    return SimpleNamespace(root=root, digits=digits, ckpt=ckpt, core50=core50)


@pytest.fixture(scope="session")
def vqa(tmp_path_factory) -> SimpleNamespace:
    """Synthetic CLEVR and TDIUC, CLEVR preprocessed, its features (random ResNet-18) and qtype PQ codes."""
    root = tmp_path_factory.mktemp("hostile_vqa")
    raw, work = root / "raw", root / "clevr"
    assert make_synthetic_vqa.main(["--out", str(raw), "--num_train_images", "16", "--num_val_images", "4",
                                    "--questions_per_image", "3", "--image_size", "64", "--seed", "0"]) == 0
    assert preprocess_clevr.main(["--path", str(raw / "CLEVR_v1.0"), "--out", str(work)]) == 0
    assert extract_image_features_clevr.main(["--path", str(raw / "CLEVR_v1.0"), "--out", str(work),
                                              *FEATURE_FLAGS]) == 0
    assert pq_encoding_clevr.main(["--data_path", str(work), "--data_order", "qtype", *PQ_FLAGS]) == 0
    return SimpleNamespace(raw=raw, clevr=raw / "CLEVR_v1.0", tdiuc=raw / "TDIUC", work=work)


@pytest.fixture(scope="session")
def finished(images, tmp_path_factory) -> SimpleNamespace:
    """Finished runs for the rerun cases: a 1-epoch base-init network and an ImageNet-style base init."""
    root = tmp_path_factory.mktemp("hostile_finished")
    assert base_init.main(base_init_argv(images, root / "base_init", "--epochs", "1")) == 0
    assert imagenet_experiment.main(ie_argv(images, root / "stream", "--streaming_max_class", "4")) == 0
    return SimpleNamespace(base_init=root / "base_init", stream=root / "stream")


class Context:
    """What a case builds on: ``tmp`` (its own folder) and the shared fixtures, made on first use."""

    def __init__(self, request, tmp: Path):
        self._request, self.tmp = request, tmp

    def __getattr__(self, name: str):
        if name in ("images", "vqa", "finished", "capfd"):
            return self._request.getfixturevalue(name)
        raise AttributeError(name)


# --------------------------------------------------------------------------------- argv of each entry
FEATURE_FLAGS = ["--random_init", "--image_size", "64", "--batch_size", "8", "--num_workers", "0", "--model",
                 "resnet18", "--device", "cpu"]
PQ_FLAGS = ["--num_codebooks", "4", "--codebook_size", "16", "--device", "cpu"]
VQA_TINY = ["--config_name", "CLEVR_demo", "--set", "mac_max_step=2", "--set", "mac_dim=16", "--set", "emb_dim=16",
            "--set", "max_epochs=1", "--device", "cpu"]


def ie_argv(images, save_dir: Path, *extra: str, label_dir=None, ckpt=None, images_dir=None) -> list[str]:
    return ["--images_dir", str(images_dir or images.digits), "--label_dir", str(label_dir or images.digits),
            "--classifier_ckpt", str(ckpt or images.ckpt), "--num_classes", "10", "--base_init_classes", "4",
            "--class_increment", "2", "--image_size", "64", "--num_workers", "0", "--device", "cpu",
            "--codebook_size", "16", "--rehearsal_samples", "5", "--lr_examples_per_class", "auto",
            "--save_dir", str(save_dir), *extra]


def core50_argv(images, save_dir: Path, *extra: str, data_dir=None) -> list[str]:
    return ["--data_dir", str(data_dir or images.core50), "--frame_stride", "1", "--image_size", "64",
            "--num_workers", "0", "--device", "cpu", "--codebook_size", "8", "--rehearsal_samples", "3",
            "--base_init_epochs", "1", "--save_dir", str(save_dir), *extra]


def base_init_argv(images, save_dir: Path, *extra: str, data=None) -> list[str]:
    return ["--data", str(data or images.digits), "--save_dir", str(save_dir), "--ckpt_file", "net.pth",
            "--image_size", "32", "--base_max_class", "4", "--num_classes", "10", "-b", "16", "-j", "0",
            "--device", "cpu", "--epochs", "1", *extra]


def offline_argv(images, save_dir: Path, *extra: str) -> list[str]:
    return ["--images_dir", str(images.digits), "--label_dir", str(images.digits), "--save_dir", str(save_dir),
            "--num_classes", "10", "--base_init_classes", "4", "--class_increment", "3", "--epochs", "1",
            "--image_size", "32", "--batch_size", "16", "--train_batch_size", "16", "--num_workers", "0",
            "--device", "cpu", "--no_hflip", *extra]


def trainer_argv(vqa, out: Path, *extra: str, data_path=None) -> list[str]:
    return ["--expt_name", "h", "--data_path", str(data_path or vqa.work), "--data_order", "qtype",
            "--stream_with_rehearsal", "--output_dir", str(out), *VQA_TINY, *extra]


def _without(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its value."""
    k = argv.index(flag)
    return argv[:k] + argv[k + 2:]


def with_flag(argv: list[str], flag: str, value: str | None = None) -> list[str]:
    """``argv`` with ``flag`` set to ``value`` (replaced where present, else appended)."""
    argv = list(argv)
    if flag in argv and value is not None:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag] if value is None else [flag, value]
    return argv


# ------------------------------------------------------------------------------------- input builders
def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def random_bytes(path: Path, size: int = 4096) -> Path:
    return write(path, np.random.default_rng(0).bytes(size))


class Payload:
    """A pickle that, when unpickled, creates ``marker``: proof that a loader ran pickled code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_payload(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": Payload(marker)}, path)
    return path


def label_copy(images, tmp: Path, split: str = "train", array=None, raw: bytes | None = None) -> Path:
    """A label folder like the digits' with ``split``'s label file replaced by ``array`` (or ``raw`` bytes)."""
    folder = tmp / "labels"
    shutil.copytree(images.digits / "imagenet_indices", folder)
    target = folder / f"imagenet_{split}_labels.npy"
    if raw is not None:
        target.write_bytes(raw)
    else:
        # only the case that plants a pickled object array needs pickling to write it
        np.save(target, array, allow_pickle=array.dtype == object)
    return folder


def labels_of(images, split: str = "train") -> np.ndarray:
    return np.load(images.digits / "imagenet_indices" / f"imagenet_{split}_labels.npy")


def digits_copy(images, tmp: Path) -> Path:
    copy = tmp / "digits"
    shutil.copytree(images.digits, copy)
    return copy


def break_image(data: Path, split: str, below: int, content: bytes = b"") -> Path:
    """Replace the first image of ``split`` whose label is below ``below`` by ``content`` (zero bytes)."""
    samples, _ = _scan_folder(str(data / split))
    index = int(np.nonzero(load_labels(str(data), str(data), split) < below)[0][0])
    path = Path(samples[index][0])
    path.write_bytes(content)
    _scan_folder.cache_clear()
    return path


def core50_copy(images, tmp: Path) -> Path:
    copy = tmp / "core50"
    shutil.copytree(images.core50, copy)
    return copy


def other_arch_ckpt(tmp: Path) -> Path:
    """A torchvision ResNet-34 (other blocks per stage): a real checkpoint, of another architecture."""
    from torchvision.models import resnet34
    path = tmp / "resnet34.pth"
    torch.save(resnet34(num_classes=10).state_dict(), path)
    return path


def nan_ckpt(images, tmp: Path) -> Path:
    ckpt = torch.load(images.ckpt, weights_only=True)
    ckpt["state_dict"]["model.layer4.1.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(ckpt, tmp / "nan.pth")
    return tmp / "nan.pth"


def other_rows_ckpt(images, tmp: Path) -> Path:
    ckpt = torch.load(images.ckpt, weights_only=True)
    ckpt["class_names"] = list(reversed(ckpt["class_names"]))
    torch.save(ckpt, tmp / "rows.pth")
    return tmp / "rows.pth"


def omega_run(folder: Path, seen1, points=(4, 7, 10), **overrides) -> Path:
    """An accuracy file per evaluation point, as imagenet_experiment writes them."""
    folder.mkdir(parents=True)
    for n, k in enumerate(points, start=1):
        acc = {"seen_classes_top1": seen1[:n], "seen_classes_top5": [100] * n, "base_classes_top1": seen1[:n],
               "base_classes_top5": [100] * n, "non_base_classes_top1": seen1[1:n],
               "non_base_classes_top5": [100] * (n - 1), **overrides}
        (folder / f"accuracies_min_trained_0_max_trained_{k}.json").write_text(json.dumps(acc))
    return folder


def omega_argv(tmp: Path, learner: Path | None = None, offline: Path | None = None) -> list[str]:
    offline = offline or omega_run(tmp / "offline", [90, 80, 70])
    learner = learner or omega_run(tmp / "remind", [80, 60, 50])
    return ["--offline", str(offline), "--runs", f"remind={learner}", "--out", str(tmp / "omega")]


def vqa_work_copy(vqa, tmp: Path) -> Path:
    work = tmp / "work"
    shutil.copytree(vqa.work, work)
    return work


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


CODEC = "all_clevr_resnet_largestage3pq_qtype_codec.pt"
CODES = "all_clevr_resnet_largestage3pq_qtype_codes.npy"
FEATURES = "all_clevr_resnet_largestage3.npy"
MAP = "map_clevr_resnet_largestage3.json"


# ----------------------------------------------------------------------------------------- the table
@dataclass
class Case:
    entry: str
    what: str                 # the input, in words (docs/hostile_inputs.md)
    build: Callable           # Context -> argv, or (argv, protected paths), or for shell: (env, protected)
    expect: str               # a substring of the error line (or, for reruns, of stdout)
    kind: str = "error"
    fixed: str = ""           # the code change that made this case pass, if it failed before issue 12's work
    xfail: str = ""
    protect: tuple = field(default=())
    patch: Callable | None = None   # (monkeypatch, Context) -> None: the situation (a full disk) before the call
    after: Callable | None = None   # (Context, argv) -> None: checks after the call (the rerun continues)


CASES: list[Case] = []


def add(entry: str, what: str, expect: str, build: Callable, kind: str = "error", fixed: str = "",
        xfail: str = "", patch: Callable | None = None, after: Callable | None = None) -> None:
    CASES.append(Case(entry, what, build, expect, kind, fixed, xfail, patch=patch, after=after))


# ------------------------------------------------------------------ imagenet_experiment
IE = "imagenet_experiment"
add(IE, "--images_dir that does not exist", "does not exist",
    lambda c: ie_argv(c.images, c.tmp / "run", images_dir=c.tmp / "nowhere"))
add(IE, "--images_dir that is a file", "is a file, not a folder", fixed="a file given as a folder is named as such",
    build=
    lambda c: ie_argv(c.images, c.tmp / "run", images_dir=write(c.tmp / "file", "x")))
add(IE, "--images_dir whose train/ is an empty folder", "holds no images",
    lambda c: ((c.tmp / "empty" / "train").mkdir(parents=True),
               ie_argv(c.images, c.tmp / "run", images_dir=c.tmp / "empty"))[1])
add(IE, "--label_dir without label files", "not found",
    lambda c: ie_argv(c.images, c.tmp / "run", label_dir=c.tmp))
add(IE, "train label file of floats", "float64",
    lambda c: ie_argv(c.images, c.tmp / "run", label_dir=label_copy(c.images, c.tmp,
                                                                   array=labels_of(c.images).astype(float))))
add(IE, "train label file with a NaN", "float64",
    lambda c: ie_argv(c.images, c.tmp / "run", label_dir=label_copy(
        c.images, c.tmp, array=np.where(np.arange(len(labels_of(c.images))) == 3, np.nan,
                                        labels_of(c.images).astype(float)))))
add(IE, "train label file as a 2-D (N, 1) array", "2-D",
    lambda c: ie_argv(c.images, c.tmp / "run", label_dir=label_copy(c.images, c.tmp,
                                                                   array=labels_of(c.images)[:, None])))
add(IE, "train label file of random bytes", "cannot be read",
    lambda c: ie_argv(c.images, c.tmp / "run", label_dir=label_copy(c.images, c.tmp, raw=b"\x93NUMPY garbage")))
add(IE, "train label file holding a pickled object array", "cannot be read",
    lambda c: ie_argv(c.images, c.tmp / "run", label_dir=label_copy(
        c.images, c.tmp, array=np.array([Payload(c.tmp / "ran")] * len(labels_of(c.images)), dtype=object))))
add(IE, "train label file one label short", "labels but",
    lambda c: ie_argv(c.images, c.tmp / "run", label_dir=label_copy(c.images, c.tmp, array=labels_of(c.images)[1:])))
add(IE, "val label file with a negative label", "negative labels",
    lambda c: ie_argv(c.images, c.tmp / "run", label_dir=label_copy(
        c.images, c.tmp, "val", array=np.where(np.arange(len(labels_of(c.images, "val"))) == 0, -1,
                                               labels_of(c.images, "val")))))
add(IE, "label files with labels >= --num_classes", "raise --num_classes",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--num_classes", "8"))
add(IE, "--num_classes 0", "raise --num_classes",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--num_classes", "0"))
add(IE, "--base_init_classes 12 > --num_classes 10", "goes past the 10 classes",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--base_init_classes", "12"))
add(IE, "--class_increment 0", "--class_increment must be positive",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--class_increment", "0"))
add(IE, "--class_increment -2", "--class_increment must be positive",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--class_increment", "-2"))
add(IE, "--streaming_max_class 20 > --num_classes", "exceeds --num_classes",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--streaming_max_class", "20"))
add(IE, "--min_class -1", "empty or negative",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--min_class", "-1"))
add(IE, "--image_size 0", "--image_size must be at least 32",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--image_size", "0"))
add(IE, "--image_size -64", "--image_size must be at least 32",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--image_size", "-64"))
add(IE, "--batch_size 0", "--batch_size",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--batch_size", "0"))
add(IE, "--num_workers -1", "--num_workers",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--num_workers", "-1"))
add(IE, "--rehearsal_samples -1", "--rehearsal_samples must be non-negative",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--rehearsal_samples", "-1"))
add(IE, "--max_buffer_size 0", "--max_buffer_size",
    fixed="learner settings checked in REMINDConfig: --max_buffer_size",
    build=lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--max_buffer_size", "0"))
add(IE, "--max_buffer_size -5", "--max_buffer_size",
    fixed="learner settings checked in REMINDConfig: --max_buffer_size",
    build=lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--max_buffer_size", "-5"))
add(IE, "--start_lr -0.1", "--start_lr",
    fixed="learner settings checked in REMINDConfig: rates name their flag",
    build=lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--start_lr", "-0.1"))
add(IE, "--end_lr nan", "--end_lr",
    fixed="learner settings checked in REMINDConfig: NaN rates refused",
    build=lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--end_lr", "nan"))
add(IE, "--lr_step_size 0", "--lr_step_size",
    fixed="learner settings checked in REMINDConfig: rates name their flag",
    build=lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--lr_step_size", "0"))
add(IE, "--weight_decay -1", "--weight_decay",
    fixed="learner settings checked in REMINDConfig: rates name their flag",
    build=lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--weight_decay", "-1"))
add(IE, "--use_mixup --mixup_alpha 0", "--mixup_alpha",
    fixed="learner settings checked in REMINDConfig: --mixup_alpha",
    build=lambda c: with_flag(with_flag(ie_argv(c.images, c.tmp / "run"), "--mixup_alpha", "0"), "--use_mixup"))
add(IE, "--lr_examples_per_class ten", "--lr_examples_per_class",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--lr_examples_per_class", "ten"))
add(IE, "--num_codebooks 7 (512 channels)", "not divisible by num_codebooks=7",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--num_codebooks", "7"))
add(IE, "--codebook_size 100", "power of two",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--codebook_size", "100"))
add(IE, "--keep_checkpoints 0", "--keep_checkpoints",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--keep_checkpoints", "0"))
add(IE, "--checkpoint_every_minutes -1", "--checkpoint_every_minutes",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--checkpoint_every_minutes", "-1"))
add(IE, "--offline_epochs -1", "--offline_epochs",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--offline_epochs", "-1"))
add(IE, "--offline_epochs 2 with --max_buffer_size", "drop --max_buffer_size",
    lambda c: with_flag(with_flag(ie_argv(c.images, c.tmp / "run"), "--offline_epochs", "2"),
                        "--max_buffer_size", "10"))
add(IE, "--spatial_feat_dim 7 at --image_size 64", "--spatial_feat_dim 7",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--spatial_feat_dim", "7"))
add(IE, "--extract_features_from model.layer9.0", "layers it can be split at",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--extract_features_from", "model.layer9.0"))
add(IE, "--base_arch that does not exist", "unknown network --arch/--base_arch",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--base_arch", "ResNet99"))
add(IE, "--arch that is not a torchvision model", "not a torchvision classification model",
    lambda c: with_flag(with_flag(ie_argv(c.images, c.tmp / "run"), "--arch", "resnet19"), "--split_at", "layer4.0"))
add(IE, "--arch resnet18 without --split_at", "needs --split_at",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--arch", "resnet18"))
add(IE, "--split_at inside a residual block (a skip connection crosses it)", "a connection skips over the cut",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--split_at", "model.layer4.0.conv2"))
add(IE, "--split_at and --extract_features_from disagree", "disagree",
    lambda c: with_flag(with_flag(ie_argv(c.images, c.tmp / "run"), "--split_at", "model.layer4.0"),
                        "--extract_features_from", "model.layer3"))
add(IE, "--num_codebooks not dividing G's channels at the chosen split", "choose --num_codebooks from a divisor",
    lambda c: with_flag(with_flag(ie_argv(c.images, c.tmp / "run"), "--split_at", "model.layer1"),
                        "--num_codebooks", "48"))
add(IE, "--weights and --classifier_ckpt both given", "one of them",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--weights", str(c.images.ckpt)))
add(IE, "--weights file that does not exist (no --classifier_ckpt)", "nowhere.pth",
    lambda c: _without(ie_argv(c.images, c.tmp / "run"), "--classifier_ckpt") + ["--weights", str(c.tmp / "nowhere.pth")])
add(IE, "--device tpu", "'tpu' is not a device name",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--device", "tpu"))
add(IE, "--device 'cuda:x' (not a device name)", "not a device name",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--device", "cuda:x"))
add(IE, "--classifier_ckpt that does not exist", "not found",
    lambda c: ie_argv(c.images, c.tmp / "run", ckpt=c.tmp / "none.pth"))
add(IE, "--classifier_ckpt of random bytes", "cannot be read",
    lambda c: ie_argv(c.images, c.tmp / "run", ckpt=random_bytes(c.tmp / "r.pth")))
add(IE, "--classifier_ckpt an empty file", "cannot be read",
    lambda c: ie_argv(c.images, c.tmp / "run", ckpt=write(c.tmp / "e.pth", b"")))
add(IE, "--classifier_ckpt a text file", "cannot be read",
    lambda c: ie_argv(c.images, c.tmp / "run", ckpt=write(c.tmp / "t.pth", "weights: none\n")))
add(IE, "--classifier_ckpt a truncated checkpoint", "cannot be read",
    lambda c: ie_argv(c.images, c.tmp / "run", ckpt=truncate(Path(shutil.copy(c.images.ckpt, c.tmp / "t.pth")))))
add(IE, "--classifier_ckpt holding a pickle payload", "not a weights-only",
    lambda c: (ie_argv(c.images, c.tmp / "run", ckpt=pickle_payload(c.tmp / "p.pth", c.tmp / "ran")),
               [c.tmp / "ran", c.tmp / "run"]))
add(IE, "--classifier_ckpt of another architecture (ResNet-34)", "does not fit",
    lambda c: ie_argv(c.images, c.tmp / "run", ckpt=other_arch_ckpt(c.tmp)))
add(IE, "--classifier_ckpt with a NaN weight", "not finite",
    fixed="checkpoints with NaN or inf weights refused",
    build=lambda c: ie_argv(c.images, c.tmp / "run", ckpt=nan_ckpt(c.images, c.tmp)))
add(IE, "--classifier_ckpt whose rows name other classes", "classifier row",
    lambda c: ie_argv(c.images, c.tmp / "run", ckpt=other_rows_ckpt(c.images, c.tmp)))
add(IE, "--resume_full_path without that increment's state", "no remind_buffer_4.pth",
    lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--resume_full_path", str(c.tmp)))
add(IE, "--save_dir below a file", "file",
    lambda c: (ie_argv(c.images, write(c.tmp / "file", "keep") / "run"), [c.tmp / "file"]))
add(IE, "--check_images with an image that is a text file", "1 images cannot be read",
    lambda c: (lambda data: (ie_argv(c.images, c.tmp / "run", "--check_images", images_dir=data, label_dir=data),
                             break_image(data, "val", 10, b"not an image")))(digits_copy(c.images, c.tmp))[0])
add(IE, "--save_dir that is a file", "File exists",
    lambda c: ie_argv(c.images, write(c.tmp / "file", "keep")))
add(IE, "--resume_full_path whose remind_buffer_4.pth is random bytes", "cannot be read",
    fixed="a damaged --resume_full_path state refused before the results folder exists",
    build=lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--resume_full_path",
                        str(random_bytes(c.tmp / "old" / "remind_buffer_4.pth").parent)))
add(IE, "label files that give two class folders one label", "two class folders one label",
    lambda c: ie_argv(c.images, c.tmp / "run", label_dir=label_copy(
        c.images, c.tmp, array=np.where(labels_of(c.images) == 1, 0, labels_of(c.images)))))
add(IE, "--seed -1", "--seed must be non-negative", fixed="negative seeds refused up front",
    build=lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--seed", "-1"))
add(IE, "an unknown flag (--epochs 3)", "unrecognized arguments", kind="argparse",
    build=lambda c: ie_argv(c.images, c.tmp / "run", "--epochs", "3"))
add(IE, "--preset that does not exist", "invalid choice", kind="argparse",
    build=lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--preset", "imagenet"))
add(IE, "--image_size twelve", "invalid int value", kind="argparse",
    build=lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--image_size", "twelve"))
add(IE, "a rerun of a finished run", "resuming from", kind="rerun",
    build=lambda c: (ie_argv(c.images, Path(shutil.copytree(c.finished.stream, c.tmp / "run")),
                             "--streaming_max_class", "4"), [c.tmp / "run"]))
add(IE, "a resume with another --seed", "seed: saved 0, now 3",
    lambda c: (ie_argv(c.images, Path(shutil.copytree(c.finished.stream, c.tmp / "run")),
                       "--streaming_max_class", "6", "--seed", "3"), [c.tmp / "run"]))

# ------------------------------------------------------------------ core50_experiment
CE = "core50_experiment"
add(CE, "--data_dir that does not exist", "does not exist",
    lambda c: core50_argv(c.images, c.tmp / "run", data_dir=c.tmp / "nowhere"))
add(CE, "--data_dir that is a file", "is a file, not a folder", fixed="a file given as a folder is named as such",
    build=
    lambda c: core50_argv(c.images, c.tmp / "run", data_dir=write(c.tmp / "file", "x")))
add(CE, "--data_dir an empty folder", "s1 is missing",
    lambda c: ((c.tmp / "empty").mkdir(), core50_argv(c.images, c.tmp / "run", data_dir=c.tmp / "empty"))[1])
add(CE, "a frame with a name of another session", "is not named",
    lambda c: (lambda data: (shutil.copy(data / "s1/o1/C_01_01_000.png", data / "s2/o1/C_01_01_005.png"),
                             core50_argv(c.images, c.tmp / "run", data_dir=data))[1])(core50_copy(c.images, c.tmp)))
add(CE, "--frame_stride 0", "--frame_stride 0",
    lambda c: with_flag(core50_argv(c.images, c.tmp / "run"), "--frame_stride", "0"))
add(CE, "--base_init_fraction 0", "--base_init_fraction",
    lambda c: with_flag(core50_argv(c.images, c.tmp / "run"), "--base_init_fraction", "0"))
add(CE, "--eval_fraction 1.5", "--eval_fraction",
    lambda c: with_flag(core50_argv(c.images, c.tmp / "run"), "--eval_fraction", "1.5"))
add(CE, "--base_init_epochs -1", "--base_init_epochs",
    lambda c: with_flag(core50_argv(c.images, c.tmp / "run"), "--base_init_epochs", "-1"))
add(CE, "--base_init_batch_size 0", "--base_init_batch_size",
    lambda c: with_flag(core50_argv(c.images, c.tmp / "run"), "--base_init_batch_size", "0"))
add(CE, "--base_init_lr 0", "--base_init_lr",
    lambda c: with_flag(core50_argv(c.images, c.tmp / "run"), "--base_init_lr", "0"))
add(CE, "--image_size 16", "--image_size",
    lambda c: with_flag(core50_argv(c.images, c.tmp / "run"), "--image_size", "16"))
add(CE, "--rehearsal_samples -3", "--rehearsal_samples",
    lambda c: with_flag(core50_argv(c.images, c.tmp / "run"), "--rehearsal_samples", "-3"))
add(CE, "--max_buffer_size 0", "--max_buffer_size",
    fixed="learner settings checked in REMINDConfig: --max_buffer_size",
    build=lambda c: with_flag(core50_argv(c.images, c.tmp / "run"), "--max_buffer_size", "0"))
add(CE, "--permutation_seed -1", "--permutation_seed must be non-negative", fixed="negative seeds refused up front",
    build=lambda c: with_flag(core50_argv(c.images, c.tmp / "run"), "--permutation_seed", "-1"))
add(CE, "--classifier_ckpt of random bytes", "cannot be read",
    lambda c: with_flag(core50_argv(c.images, c.tmp / "run"), "--classifier_ckpt", str(random_bytes(c.tmp / "r"))))
add(CE, "--classifier_ckpt of another architecture (ResNet-34)", "does not fit",
    fixed="a deeper ResNet's checkpoint refused, not cut to ResNet-18",
    build=lambda c: with_flag(core50_argv(c.images, c.tmp / "run"), "--classifier_ckpt", str(other_arch_ckpt(c.tmp))))
add(CE, "--device tpu", "'tpu' is not a device name",
    lambda c: with_flag(core50_argv(c.images, c.tmp / "run"), "--device", "tpu"))
add(CE, "--check_images with a zero-byte frame", "1 images cannot be read", fixed="--check_images for CORe50",
    build=lambda c: (lambda data: (write(data / "s4/o2/C_04_02_001.png", b""),
                                   core50_argv(c.images, c.tmp / "run", "--check_images", data_dir=data))[1])(
        core50_copy(c.images, c.tmp)))
add(CE, "a zero-byte frame met during the run", "C_04_02_001.png cannot be read", kind="late",
    fixed="CORe50 frames that cannot be read: one line naming the file",
    build=lambda c: (lambda data: (write(data / "s4/o2/C_04_02_001.png", b""),
                                   core50_argv(c.images, c.tmp / "run", "--base_init_fraction", "1.0",
                                               data_dir=data))[1])(core50_copy(c.images, c.tmp)))
add(CE, "--order that does not exist", "invalid choice", kind="argparse",
    build=lambda c: with_flag(core50_argv(c.images, c.tmp / "run"), "--order", "class"))

# ------------------------------------------------------------------ train_base_init_network_from_scratch
BI = "train_base_init_network_from_scratch"
add(BI, "--data that does not exist", "does not exist",
    lambda c: base_init_argv(c.images, c.tmp / "ckpts", data=c.tmp / "nowhere"))
add(BI, "--data that is a file", "is a file, not a folder", fixed="a file given as a folder is named as such",
    build=
    lambda c: base_init_argv(c.images, c.tmp / "ckpts", data=write(c.tmp / "file", "x")))
add(BI, "--epochs 0", "--epochs must be at least 1",
    lambda c: base_init_argv(c.images, c.tmp / "ckpts", "--epochs", "0"))
add(BI, "--lr 0", "--lr", fixed="--lr, --momentum and --wd checked up front",
    build=lambda c: base_init_argv(c.images, c.tmp / "ckpts", "--lr", "0"))
add(BI, "--lr -0.1", "--lr", fixed="--lr, --momentum and --wd checked up front",
    build=lambda c: base_init_argv(c.images, c.tmp / "ckpts", "--lr", "-0.1"))
add(BI, "--momentum -0.9", "--momentum", fixed="--lr, --momentum and --wd checked up front",
    build=lambda c: base_init_argv(c.images, c.tmp / "ckpts", "--momentum", "-0.9"))
add(BI, "--wd -1", "--wd", fixed="--lr, --momentum and --wd checked up front",
    build=lambda c: base_init_argv(c.images, c.tmp / "ckpts", "--wd", "-1"))
add(BI, "-b 0", "--batch_size 0",
    lambda c: with_flag(base_init_argv(c.images, c.tmp / "ckpts"), "-b", "0"))
add(BI, "--image_size 0", "--image_size must be at least",
    lambda c: with_flag(base_init_argv(c.images, c.tmp / "ckpts"), "--image_size", "0"))
add(BI, "--image_size 16", "--image_size must be at least 32", fixed="at least 32, as the stream scripts",
    build=lambda c: with_flag(base_init_argv(c.images, c.tmp / "ckpts"), "--image_size", "16"))
add(BI, "--base_max_class 0", "--base_max_class must be at least 1",
    lambda c: with_flag(base_init_argv(c.images, c.tmp / "ckpts"), "--base_max_class", "0"))
add(BI, "--base_max_class 12 > --num_classes 10", "smaller than --base_max_class",
    lambda c: with_flag(base_init_argv(c.images, c.tmp / "ckpts"), "--base_max_class", "12"))
add(BI, "--arch that does not exist", "not a torchvision classification model",
    lambda c: with_flag(base_init_argv(c.images, c.tmp / "ckpts"), "--arch", "ResNet99"))
add(BI, "--ckpt_file with a folder in it", "must be a file name",
    lambda c: with_flag(base_init_argv(c.images, c.tmp / "ckpts"), "--ckpt_file", "sub/net.pth"))
add(BI, "--save_dir that is a file", "is not a folder",
    lambda c: (base_init_argv(c.images, write(c.tmp / "file", "keep")), [c.tmp / "file"]))
add(BI, "--crop_scale_min 0", "--crop_scale_min",
    lambda c: base_init_argv(c.images, c.tmp / "ckpts", "--crop_scale_min", "0"))
add(BI, "--seed -1", "--seed must be non-negative", fixed="negative seeds refused up front",
    build=lambda c: base_init_argv(c.images, c.tmp / "ckpts", "--seed", "-1"))
add(BI, "--labels_dir whose val labels are floats", "float64",
    lambda c: base_init_argv(c.images, c.tmp / "ckpts", "--labels_dir", str(label_copy(
        c.images, c.tmp, "val", array=labels_of(c.images, "val").astype(float)))))
add(BI, "--device tpu", "'tpu' is not a device name",
    lambda c: with_flag(base_init_argv(c.images, c.tmp / "ckpts"), "--device", "tpu"))
add(BI, "--resume of random bytes", "cannot be read",
    lambda c: base_init_argv(c.images, c.tmp / "ckpts", "--resume", str(random_bytes(c.tmp / "r.pth"))))
add(BI, "--resume a REMIND base-init checkpoint without optimizer state", "is not a checkpoint of this script",
    lambda c: base_init_argv(c.images, c.tmp / "ckpts", "--resume", str(c.images.ckpt)))
add(BI, "--resume holding a pickle payload", "not a weights-only",
    lambda c: (base_init_argv(c.images, c.tmp / "ckpts", "--resume", str(pickle_payload(c.tmp / "p.pth",
                                                                                       c.tmp / "ran"))),
               [c.tmp / "ran", c.tmp / "ckpts"]))
add(BI, "--check_images with a zero-byte image", "1 images cannot be read", fixed="--check_images for base init",
    build=lambda c: (lambda data: (break_image(data, "train", 4),
                                   base_init_argv(c.images, c.tmp / "ckpts", "--check_images", data=data))[1])(
        digits_copy(c.images, c.tmp)))
add(BI, "a zero-byte image met during training", "cannot be read", kind="late",
    fixed="base init runs inside run_main: an unreadable image is one line",
    build=lambda c: (lambda data: (break_image(data, "train", 4),
                                   base_init_argv(c.images, c.tmp / "ckpts", data=data))[1])(
        digits_copy(c.images, c.tmp)))
def best_only(c) -> Path:
    folder = c.tmp / "ckpts"
    folder.mkdir()
    shutil.copy(c.finished.base_init / "best_net.pth", folder / "best_net.pth")
    return folder


add(BI, "best_<ckpt> without the last-epoch checkpoint", "--overwrite",
    lambda c: (lambda d: (base_init_argv(c.images, d), [d]))(best_only(c)))
add(BI, "a rerun over a finished network", "already trained", kind="rerun",
    build=lambda c: (base_init_argv(c.images, Path(shutil.copytree(c.finished.base_init, c.tmp / "ckpts")),
                                    "--epochs", "1"), [c.tmp / "ckpts"]))

# ------------------------------------------------------------------ offline_full_network
OF = "offline_full_network"
add(OF, "--epochs 0", "--epochs", lambda c: with_flag(offline_argv(c.images, c.tmp / "run"), "--epochs", "0"))
add(OF, "--class_increment 0", "--class_increment",
    lambda c: with_flag(offline_argv(c.images, c.tmp / "run"), "--class_increment", "0"))
add(OF, "--train_batch_size 0", "--train_batch_size", fixed="every flag checked before the folder is locked",
    build=lambda c: with_flag(offline_argv(c.images, c.tmp / "run"), "--train_batch_size", "0"))
add(OF, "--lr -1", "--lr", fixed="every flag checked before the folder is locked",
    build=lambda c: with_flag(offline_argv(c.images, c.tmp / "run"), "--lr", "-1"))
add(OF, "--image_size 0", "--image_size", fixed="every flag checked before the folder is locked",
    build=lambda c: with_flag(offline_argv(c.images, c.tmp / "run"), "--image_size", "0"))
add(OF, "--arch that does not exist", "--arch", fixed="every flag checked before the folder is locked",
    build=lambda c: with_flag(offline_argv(c.images, c.tmp / "run"), "--arch", "ResNet99"))
add(OF, "--batch_size 0 (evaluation)", "--batch_size", fixed="every flag checked before the folder is locked",
    build=lambda c: with_flag(offline_argv(c.images, c.tmp / "run"), "--batch_size", "0"))
add(OF, "--images_dir that does not exist", "does not exist",
    lambda c: with_flag(offline_argv(c.images, c.tmp / "run"), "--images_dir", str(c.tmp / "nowhere")))
add(OF, "--device tpu", "'tpu' is not a device name",
    lambda c: with_flag(offline_argv(c.images, c.tmp / "run"), "--device", "tpu"))

# ------------------------------------------------------------------ make_numpy_imagenet_label_files
ML = "make_numpy_imagenet_label_files"


def ml_argv(c, order: Path | None = None, data: Path | None = None, out: Path | None = None):
    out = out or c.tmp / "labels"
    return (["--data", str(data or c.images.digits), "--class_order_text_file",
             str(order or c.images.digits / "class_order.txt"), "--labels_dir", str(out)], [out])


def order_text(c, transform) -> Path:
    names = (c.images.digits / "class_order.txt").read_text().split()
    return write(c.tmp / "order.txt", "\n".join(transform(names)) + "\n")


add(ML, "--data that does not exist", "does not exist", lambda c: ml_argv(c, data=c.tmp / "nowhere"))
add(ML, "--data that is a file", "is a file, not a folder", fixed="a file given as a folder is named as such",
    build=lambda c: ml_argv(c, data=write(c.tmp / "file", "x")))
add(ML, "--class_order_text_file that does not exist", "not found", lambda c: ml_argv(c, order=c.tmp / "none.txt"))
add(ML, "a binary class-order file", "is not text",
    lambda c: ml_argv(c, order=write(c.tmp / "order.bin", b"\xff\xfe\x00\x81" * 8)))
add(ML, "an empty class-order file", "is empty", lambda c: ml_argv(c, order=write(c.tmp / "order.txt", "\n\n")))
add(ML, "a class-order file naming a class twice", "names a class twice",
    lambda c: ml_argv(c, order=order_text(c, lambda n: n + n[:1])))
add(ML, "a class-order file naming a class with no folder", "no folder",
    lambda c: ml_argv(c, order=order_text(c, lambda n: n[:3] + ["digit_x"] + n[3:])))
add(ML, "a class-order file missing a folder's class", "missing from the class order file",
    lambda c: ml_argv(c, order=order_text(c, lambda n: n[:-1])))
add(ML, "--labels_dir that is a file", "File exists",
    lambda c: ml_argv(c, out=write(c.tmp / "file", "keep")))

# ------------------------------------------------------------------ convert_released_checkpoint
CV = "convert_released_checkpoint"


def cv_argv(c, ckpt: Path, out: Path | None = None):
    out = out or c.tmp / "converted.pth"
    return (["--ckpt", str(ckpt), "--out", str(out), "--class_order_text_file",
             str(c.images.digits / "class_order.txt")], [out])


def alphabetical_ckpt(c) -> Path:
    torch.save({"state_dict": build_full_network("ResNet18ClassifyAfterLayer4_1", 10).state_dict()},
               c.tmp / "alpha.pth")
    return c.tmp / "alpha.pth"


add(CV, "--ckpt that does not exist", "--ckpt checkpoint not found",
    fixed="the error names --ckpt, not --classifier_ckpt", build=lambda c: cv_argv(c, c.tmp / "none.pth"))
add(CV, "--ckpt of random bytes", "--ckpt checkpoint", fixed="the error names --ckpt, not --classifier_ckpt",
    build=lambda c: cv_argv(c, random_bytes(c.tmp / "r.pth")))
add(CV, "--ckpt holding a pickle payload", "not a weights-only",
    lambda c: (cv_argv(c, pickle_payload(c.tmp / "p.pth", c.tmp / "ran"))[0], [c.tmp / "ran", c.tmp / "converted.pth"]))
add(CV, "--ckpt already in class order", "already has its rows in class order",
    lambda c: cv_argv(c, c.images.ckpt))
add(CV, "--ckpt without a classifier", "has no classifier",
    lambda c: (torch.save({"state_dict": {"model.conv1.weight": torch.zeros(64, 3, 7, 7)}}, c.tmp / "nofc.pth"),
               cv_argv(c, c.tmp / "nofc.pth"))[1])
add(CV, "--out that exists", "exists", lambda c: cv_argv(c, alphabetical_ckpt(c), write(c.tmp / "out.pth", "keep")))
add(CV, "--images_dir that does not exist", "does not exist",
    lambda c: (cv_argv(c, alphabetical_ckpt(c))[0] + ["--images_dir", str(c.tmp / "nowhere")],
               [c.tmp / "converted.pth"]))

# ------------------------------------------------------------------ compute_omega
CO = "compute_omega"
add(CO, "--offline folder that does not exist", "does not exist",
    lambda c: omega_argv(c.tmp, offline=c.tmp / "nowhere"))
add(CO, "--offline folder with no accuracy files", "no accuracies_min_trained",
    lambda c: ((c.tmp / "empty").mkdir(), omega_argv(c.tmp, offline=c.tmp / "empty"))[1])
add(CO, "an accuracy file that is not JSON", "cannot read",
    lambda c: (lambda off: (write(off / "accuracies_min_trained_0_max_trained_10.json", "{oops"),
                            omega_argv(c.tmp, offline=off))[1])(omega_run(c.tmp / "off", [90, 80, 70])))
add(CO, "string accuracies", "must be a list of numbers",
    lambda c: omega_argv(c.tmp, learner=omega_run(c.tmp / "r", ["80", "60", "50"])))
add(CO, "NaN accuracies", "not a finite number", fixed="Omega refuses NaN and infinite accuracies",
    build=lambda c: omega_argv(c.tmp, learner=omega_run(c.tmp / "r", [80, float("nan"), 50])))
add(CO, "an offline accuracy of 0", "Omega is undefined",
    lambda c: omega_argv(c.tmp, offline=omega_run(c.tmp / "off", [90, 0, 70])))
add(CO, "runs evaluated at different points", "evaluations",
    lambda c: omega_argv(c.tmp, learner=omega_run(c.tmp / "r", [80, 60], points=(4, 7))))
add(CO, "--runs entry without NAME=", "is not NAME=DIR",
    lambda c: omega_argv(c.tmp)[:3] + ["results/remind", "--out", str(c.tmp / "omega")])
add(CO, "--runs name 'offline' (reserved)", "reserved",
    lambda c: (lambda a: a[:3] + [a[3].replace("remind=", "offline=")] + a[4:])(omega_argv(c.tmp)))
add(CO, "--out that is a file", "File exists",
    lambda c: (omega_argv(c.tmp)[:-1] + [str(write(c.tmp / "file", "keep"))], [c.tmp / "file"]))

# ------------------------------------------------------------------ VQA preprocessing
PC, PT = "preprocess_clevr", "preprocess_tdiuc"
add(PC, "--path that does not exist", "not found",
    lambda c: (["--path", str(c.tmp / "nowhere"), "--out", str(c.tmp / "work")], [c.tmp / "work"]))
add(PC, "a question file that is not JSON", "is not valid JSON",
    lambda c: (lambda raw: (write(raw / "questions/CLEVR_train_questions.json", '{"questions": [tru'),
                            (["--path", str(raw), "--out", str(c.tmp / "work")], [c.tmp / "work"]))[1])(
        Path(shutil.copytree(c.vqa.clevr / "questions", c.tmp / "clevr/questions")).parent))
add(PC, "CLEVR's test split (no answers) as train", "not a CLEVR question file",
    lambda c: (lambda raw: (write(raw / "questions/CLEVR_train_questions.json", json.dumps(
        {"questions": [{"question_index": 0, "image_index": 0, "question": "Is there a cube?"}]})),
                            (["--path", str(raw), "--out", str(c.tmp / "work")], [c.tmp / "work"]))[1])(
        Path(shutil.copytree(c.vqa.clevr / "questions", c.tmp / "clevr/questions")).parent))
add(PC, "--path that is a file", "not found",
    lambda c: (["--path", str(write(c.tmp / "file", "x")), "--out", str(c.tmp / "work")], [c.tmp / "work"]))
add(PC, "--out that is a file", "File exists",
    lambda c: (["--path", str(c.vqa.clevr), "--out", str(write(c.tmp / "file", "keep"))], [c.tmp / "file"]))
add(PT, "annotations of a question missing from the question file", "different TDIUC versions",
    lambda c: (lambda raw: (write(raw / "Questions/OpenEnded_mscoco_train2014_questions.json",
                                  json.dumps({"questions": []})),
                            (["--path", str(raw), "--out", str(c.tmp / "work")], [c.tmp / "work"]))[1])(
        Path(shutil.copytree(c.vqa.tdiuc, c.tmp / "tdiuc", ignore=shutil.ignore_patterns("Images")))))

# ------------------------------------------------------------------ VQA feature extraction
EX = "extract_image_features_clevr"


def ex_argv(c, *extra: str, path: Path | None = None):
    out = c.tmp / "work"
    return (["--path", str(path or c.vqa.clevr), "--out", str(out), *FEATURE_FLAGS, *extra], [out])


add(EX, "--path that does not exist", "no images found in --path", fixed="the error names the folder",
    build=lambda c: ex_argv(c, path=c.tmp / "nowhere"))
add(EX, "--path an empty folder", "no images found in --path", fixed="the error names the folder",
    build=lambda c: ((c.tmp / "empty").mkdir(), ex_argv(c, path=c.tmp / "empty"))[1])
add(EX, "--image_size 0", "--image_size", fixed="extraction flags checked up front",
    build=lambda c: (lambda a: (with_flag(a[0], "--image_size", "0"), a[1]))(ex_argv(c)))
add(EX, "--image_size -32", "--image_size", fixed="extraction flags checked up front",
    build=lambda c: (lambda a: (with_flag(a[0], "--image_size", "-32"), a[1]))(ex_argv(c)))
add(EX, "--batch_size 0", "--batch_size", fixed="extraction flags checked up front",
    build=lambda c: (lambda a: (with_flag(a[0], "--batch_size", "0"), a[1]))(ex_argv(c)))
add(EX, "--num_workers -1", "--num_workers", fixed="extraction flags checked up front",
    build=lambda c: (lambda a: (with_flag(a[0], "--num_workers", "-1"), a[1]))(ex_argv(c)))
add(EX, "--device tpu", "'tpu' is not a device name", fixed="check_device before extraction",
    build=lambda c: (lambda a: (with_flag(a[0], "--device", "tpu"), a[1]))(ex_argv(c)))
add(EX, "--out that is a file", "File exists",
    lambda c: (lambda a: (with_flag(a[0], "--out", str(write(c.tmp / "file", "keep"))), [c.tmp / "file"]))(ex_argv(c)))
add(EX, "--weights of random bytes", "cannot be read",
    lambda c: (lambda a: ([x for x in a[0] if x != "--random_init"] + ["--weights", str(random_bytes(c.tmp / "w"))],
                          a[1]))(ex_argv(c)))
add(EX, "--weights of another ResNet depth (ResNet-34 for --model resnet18)", "resnet18",
    fixed="build_trunk refuses weights of another ResNet depth (it loaded a deeper one's first blocks silently)",
    build=lambda c: (lambda a: ([x for x in a[0] if x != "--random_init"] + ["--weights", str(other_arch_ckpt(c.tmp))],
                          a[1]))(ex_argv(c)))
add(EX, "an image that is a zero-byte file", "cannot be read", fixed="VQA images that cannot be read: one line",
    build=lambda c: (lambda raw: (write(sorted((raw / "images/train").glob("*.png"))[3], b""),
                                  ex_argv(c, path=raw))[1])(
        Path(shutil.copytree(c.vqa.clevr / "images", c.tmp / "clevr/images")).parent))

# ------------------------------------------------------------------ VQA PQ encoding
PQ = "pq_encoding_clevr"


def pq_argv(c, work: Path, *extra: str, protect=()):
    return (["--data_path", str(work), "--data_order", "qtype", *PQ_FLAGS, "--overwrite", *extra],
            [work / FEATURES, work / MAP, *protect])


add(PQ, "--data_path that does not exist", "not found",
    lambda c: (["--data_path", str(c.tmp / "nowhere"), "--data_order", "qtype", *PQ_FLAGS], [c.tmp / "nowhere"]))
add(PQ, "a truncated feature file", FEATURES, fixed="feature files checked: one line naming the file and the fix",
    build=lambda c: (lambda w: (truncate(w / FEATURES), pq_argv(c, w))[1])(vqa_work_copy(c.vqa, c.tmp)))
add(PQ, "a feature file of the wrong shape (2-D)", "extract_image_features_clevr",
    fixed="feature files checked: one line naming the file and the fix",
    build=lambda c: (lambda w: (np.save(w / FEATURES, np.zeros((20, 256), np.float32)), pq_argv(c, w))[1])(
        vqa_work_copy(c.vqa, c.tmp)))
add(PQ, "a feature file of NaNs", "not finite", fixed="feature files checked: one line naming the file and the fix",
    build=lambda c: (lambda w: (np.save(w / FEATURES, np.full(np.load(w / FEATURES, mmap_mode="r").shape, np.nan,
                                                             np.float32)), pq_argv(c, w))[1])(
        vqa_work_copy(c.vqa, c.tmp)))
add(PQ, "a map file listing fewer images than the features", "maps",
    lambda c: (lambda w: (write(w / MAP, json.dumps({"image_id_to_ix": {"1": 0}})), pq_argv(c, w))[1])(
        vqa_work_copy(c.vqa, c.tmp)))
add(PQ, "--num_codebooks 0", "must be positive",
    lambda c: (lambda w: pq_argv(c, w, "--num_codebooks", "0"))(vqa_work_copy(c.vqa, c.tmp)))
add(PQ, "--codebook_size 3", "power of two",
    lambda c: (lambda w: pq_argv(c, w, "--codebook_size", "3"))(vqa_work_copy(c.vqa, c.tmp)))
add(PQ, "--train_vectors 0", "--train_vectors", fixed="PQ flags checked up front",
    build=lambda c: (lambda w: pq_argv(c, w, "--train_vectors", "0"))(vqa_work_copy(c.vqa, c.tmp)))
add(PQ, "--num_classes 0", "--num_classes", fixed="PQ flags checked up front",
    build=lambda c: (lambda w: pq_argv(c, w, "--num_classes", "0"))(vqa_work_copy(c.vqa, c.tmp)))
add(PQ, "--device tpu", "'tpu' is not a device name", fixed="check_device before PQ encoding",
    build=lambda c: (lambda w: pq_argv(c, w, "--device", "tpu"))(vqa_work_copy(c.vqa, c.tmp)))
add(PQ, "a truncated question file (.npz)", "train_clevr.npz",
    fixed="question files that cannot be read: one line",
    build=lambda c: (lambda w: (truncate(w / "train_clevr.npz"), pq_argv(c, w))[1])(vqa_work_copy(c.vqa, c.tmp)))
add(PQ, "--seed -1", "--seed must be non-negative", fixed="negative seeds refused up front",
    build=lambda c: (lambda w: pq_argv(c, w, "--seed", "-1"))(vqa_work_copy(c.vqa, c.tmp)))
add(PQ, "--images an empty folder", "no images found in --images", fixed="the error names the folder",
    build=lambda c: (lambda w: ((c.tmp / "empty").mkdir(), pq_argv(c, w, "--images", str(c.tmp / "empty"),
                                                            "--random_init", "--model", "resnet18"))[1])(
        vqa_work_copy(c.vqa, c.tmp)))

# ------------------------------------------------------------------ vqa_trainer
VT = "vqa_trainer"


def vt_broken(c, name: str, damage: Callable[[Path], object], *extra: str):
    work = vqa_work_copy(c.vqa, c.tmp)
    damage(work / name)
    return trainer_argv(c.vqa, c.tmp / "out", *extra, data_path=work), [work, c.tmp / "out"]


add(VT, "a PQ codec file without centroids", CODEC, fixed="a codec without centroids: one line",
    build=lambda c: vt_broken(c, CODEC, lambda p: save_state(p, {"codebooks": torch.zeros(4, 16, 64)}, {})))
add(VT, "a PQ codec file of random bytes", "cannot be read",
    lambda c: vt_broken(c, CODEC, lambda p: random_bytes(p)))
add(VT, "a PQ codec of other dimensions", "codebooks",
    lambda c: vt_broken(c, CODEC, lambda p: save_state(p, {"centroids": torch.zeros(8, 16, 32)}, {})))
add(VT, "codes past the codec's centroids (a codec of 4 centroids)", "hold code",
    fixed="codes checked against the codec's centroids",
    build=lambda c: vt_broken(c, CODEC, lambda p: save_state(p, {"centroids": torch.zeros(4, 4, 64)}, {})))
add(VT, "a truncated codes file", CODES,
    lambda c: vt_broken(c, CODES, truncate))
add(VT, "a codes file of floats", "expected uint8",
    lambda c: vt_broken(c, CODES, lambda p: np.save(p, np.load(p).astype(np.float32))))
add(VT, "a truncated question file (.npz)", "train_clevr.npz", fixed="question files that cannot be read: one line",
    build=lambda c: vt_broken(c, "train_clevr.npz", truncate))
add(VT, "a question file (.npz) of random bytes", "val_clevr.npz",
    lambda c: vt_broken(c, "val_clevr.npz", random_bytes))
add(VT, "a question file (.npz) with a damaged member", "train_clevr.npz",
    lambda c: vt_broken(c, "train_clevr.npz", lambda p: p.write_bytes(
        p.read_bytes().replace(b"tokens.npy", b"tokenX.npy"))))
add(VT, "a lookup table that is not JSON", "is not valid JSON",
    lambda c: vt_broken(c, "LUT_clevr.json", lambda p: write(p, "{")))
add(VT, "a dictionary file that is missing", "not found",
    lambda c: vt_broken(c, "dictionary_clevr.json", lambda p: p.unlink()))
add(VT, "unknown --config_name", "unknown --config_name",
    lambda c: with_flag(trainer_argv(c.vqa, c.tmp / "out"), "--config_name", "CLEVR"))
add(VT, "--set max_epochs=-3", "max_epochs must be at least 1",
    lambda c: trainer_argv(c.vqa, c.tmp / "out", "--set", "max_epochs=-3"))
add(VT, "--set max_epochs=three", "takes a int",
    lambda c: trainer_argv(c.vqa, c.tmp / "out", "--set", "max_epochs=three"))
add(VT, "--set lr=nan", "lr > 0", lambda c: trainer_argv(c.vqa, c.tmp / "out", "--set", "lr=nan"))
add(VT, "--set dataset=vqa2", "dataset", fixed="--set of dataset, model and optimizer checked",
    build=lambda c: trainer_argv(c.vqa, c.tmp / "out", "--set", "dataset=vqa2"))
add(VT, "--set model=mlp", "model",
    lambda c: trainer_argv(c.vqa, c.tmp / "out", "--set", "model=mlp"))
add(VT, "--set optimizer=sgd", "optimizer", fixed="--set of dataset, model and optimizer checked",
    build=lambda c: (trainer_argv(c.vqa, c.tmp / "out", "--set", "optimizer=sgd"), [c.tmp / "out"]))
add(VT, "--set mac_dropout=1.5", "mac_dropout", fixed="--set of dropout and ema_decay checked",
    build=lambda c: trainer_argv(c.vqa, c.tmp / "out", "--set", "mac_dropout=1.5"))
add(VT, "--set ema_decay=2", "ema_decay", fixed="--set of dropout and ema_decay checked",
    build=lambda c: trainer_argv(c.vqa, c.tmp / "out", "--set", "ema_decay=2", "--use_exponential_averaging"))
add(VT, "--set noise (no '=')", "expected field=value", lambda c: trainer_argv(c.vqa, c.tmp / "out", "--set", "noise"))
add(VT, "--set num_rehearsal_samples=-1", "replays_per_step must be >= 0",
    lambda c: trainer_argv(c.vqa, c.tmp / "out", "--set", "num_rehearsal_samples=-1"))
add(VT, "--seed -1", "--seed must be non-negative", fixed="negative seeds refused up front",
    build=lambda c: trainer_argv(c.vqa, c.tmp / "out", "--seed", "-1"))
add(VT, "an unknown flag (--replays 5)", "unrecognized arguments", kind="argparse",
    build=lambda c: trainer_argv(c.vqa, c.tmp / "out", "--replays", "5"))
add(VT, "--lr 0", "lr > 0", lambda c: trainer_argv(c.vqa, c.tmp / "out", "--lr", "0"))
add(VT, "--max_buffer_size without --rehearsal_mode limited_buffer", "limited_buffer",
    fixed="--max_buffer_size without limited_buffer refused, not ignored",
    build=lambda c: trainer_argv(c.vqa, c.tmp / "out", "--max_buffer_size", "10"))
add(VT, "--rehearsal_mode limited_buffer --max_buffer_size 0", "positive --max_buffer_size",
    lambda c: trainer_argv(c.vqa, c.tmp / "out", "--rehearsal_mode", "limited_buffer", "--max_buffer_size", "0"))
add(VT, "--checkpoint_every_minutes -1", "--checkpoint_every_minutes",
    lambda c: trainer_argv(c.vqa, c.tmp / "out", "--checkpoint_every_minutes", "-1"))
add(VT, "--device tpu", "'tpu' is not a device name", lambda c: trainer_argv(c.vqa, c.tmp / "out", "--device", "tpu"))
add(VT, "--output_dir that is a file", "file",
    lambda c: (trainer_argv(c.vqa, write(c.tmp / "file", "keep")), [c.tmp / "file"]))
add(VT, "a checkpoint.pt of random bytes in --output_dir", "cannot be read",
    lambda c: (trainer_argv(c.vqa, random_bytes(c.tmp / "out" / "checkpoint.pt").parent), [c.tmp / "out"]))
add(VT, "--glove file of random bytes", "glove.txt cannot be read",
    fixed="word vector files that cannot be used: one line",
    build=lambda c: trainer_argv(c.vqa, c.tmp / "out", "--glove", str(random_bytes(c.tmp / "glove.txt"))))
add(VT, "--glove .npy matrix with a NaN", "not finite", fixed="word vector files that cannot be used: one line",
    build=lambda c: trainer_argv(c.vqa, c.tmp / "out", "--glove", str((lambda p: (
        np.save(p, np.full((5, 16), np.nan, np.float32)), p)[1])(c.tmp / "glove.npy"))))
add(VT, "--data_order typo", "invalid choice", kind="argparse",
    build=lambda c: with_flag(trainer_argv(c.vqa, c.tmp / "out"), "--data_order", "qtypes"))

# ------------------------------------------------------------------ make_synthetic_vqa
MS = "make_synthetic_vqa"
add(MS, "--num_train_images 0", "--num_train_images 0",
    lambda c: (["--out", str(c.tmp / "raw"), "--num_train_images", "0"], [c.tmp / "raw"]))
add(MS, "--questions_per_image -1", "--questions_per_image",
    lambda c: (["--out", str(c.tmp / "raw"), "--questions_per_image", "-1"], [c.tmp / "raw"]))
add(MS, "--image_size 8", "--image_size 8",
    lambda c: (["--out", str(c.tmp / "raw"), "--image_size", "8"], [c.tmp / "raw"]))
add(MS, "--out that is a file", "is a file",
    lambda c: (["--out", str(write(c.tmp / "file", "keep"))], [c.tmp / "file"]))
add(MS, "--out below a file", "Not a directory",
    fixed="make_synthetic_vqa runs inside remind.cli.run_main (an OSError of --out was a traceback)",
    build=lambda c: (["--out", str(write(c.tmp / "file", "keep") / "raw"), "--num_train_images", "1",
                      "--num_val_images", "1", "--image_size", "32"], [c.tmp / "file"]))
add(MS, "--out holding a dataset already", "--overwrite",
    lambda c: (["--out", str(write(c.tmp / "raw" / "CLEVR_v1.0" / "keep.txt", "keep").parent.parent)],
               [c.tmp / "raw"]))

# ------------------------------------------------------------------ shell scripts
add("train_base_init_network.sh", "NPROC='PATH[$(touch x)]' (arithmetic injection)", "NPROC=",
    lambda c: ({"NPROC": f"PATH[$(touch {c.tmp / 'ran'})]"}, [c.tmp / "ran"]))
add("train_base_init_network.sh", "EPOCHS=0 (reaches the trainer)", "--epochs must be at least 1",
    lambda c: ({"EPOCHS": "0", "IMAGENET_DIR": str(c.images.digits), "LABEL_ORDER_DIR": str(c.images.digits),
                "BASE_MAX_CLASS": "4", "NUM_CLASSES": "10", "IMAGE_SIZE": "32", "SAVE_DIR": str(c.tmp / "ckpts"),
                "DEVICE": "cpu"}, [c.tmp / "ckpts"]))
add("run_imagenet_experiment.sh", "NUM_CLASSES=1e3", "NUM_CLASSES=1e3", lambda c: ({"NUM_CLASSES": "1e3"}, []))
add("run_core50_experiment.sh", "IMAGE_SIZE=-224", "IMAGE_SIZE=-224", lambda c: ({"IMAGE_SIZE": "-224"}, []))
add("run_core50_experiment.sh", "SEEDS='?' (a glob)", "SEEDS holds ?", lambda c: ({"SEEDS": "?"}, []))
add("run_clevr_experiment.sh", "PREPARE=1 without WEIGHTS", "needs WEIGHTS",
    lambda c: ({"PREPARE": "1", "DATA_PATH": str(c.tmp / "work")}, [c.tmp / "work"]))


# ------------------------------------------------------------------ issue 20: symlink loops, huge images, BOMs
def linked_back(c, split: str = "train") -> Path:
    """A digits copy with ``ln -s .. <split>/digit_8/loop``: a folder symlink back to the split folder."""
    data = digits_copy(c.images, c.tmp)
    os.symlink("..", data / split / "digit_8" / "loop")
    _scan_folder.cache_clear()
    return data


def bomb_png(width: int = 16000, height: int = 16000) -> bytes:
    """A PNG header declaring ``width`` x ``height`` pixels (over PIL's decompression-bomb limit), a few bytes."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def with_bomb(c, split: str, below: int) -> Path:
    data = digits_copy(c.images, c.tmp)
    break_image(data, split, below, bomb_png())
    return data


LOOPS = "a folder symlink back into the tree: refused, naming the link"
BOMBS = "images over PIL's decompression-bomb limit: one line naming the file"
add(ML, "a folder symlink back to the split folder (ln -s .. train/digit_8/loop)", "digit_8/loop leads back to",
    fixed=LOOPS, build=lambda c: ml_argv(c, data=linked_back(c)))
add(IE, "a folder symlink back to the split folder (ln -s .. val/digit_8/loop)", "digit_8/loop leads back to",
    fixed=LOOPS, build=lambda c: (lambda d: ie_argv(c.images, c.tmp / "run", images_dir=d, label_dir=d))(
        linked_back(c, "val")))
add(BI, "a folder symlink back to the split folder (ln -s .. train/digit_8/loop)", "digit_8/loop leads back to",
    fixed=LOOPS, build=lambda c: base_init_argv(c.images, c.tmp / "ckpts", data=linked_back(c)))
add(IE, "--check_images with a 16000 x 16000 PNG", "1 images cannot be read", fixed=BOMBS,
    build=lambda c: (lambda d: ie_argv(c.images, c.tmp / "run", "--check_images", images_dir=d, label_dir=d))(
        with_bomb(c, "train", 4)))
add(IE, "a 16000 x 16000 PNG met during the run", "DecompressionBombError", kind="late", fixed=BOMBS,
    build=lambda c: (lambda d: ie_argv(c.images, c.tmp / "run", images_dir=d, label_dir=d))(with_bomb(c, "train", 4)))
add(BI, "--check_images with a 16000 x 16000 PNG", "1 images cannot be read", fixed=BOMBS,
    build=lambda c: base_init_argv(c.images, c.tmp / "ckpts", "--check_images", data=with_bomb(c, "val", 4)))
add(CE, "a 16000 x 16000 PNG frame met during the run", "DecompressionBombError", kind="late", fixed=BOMBS,
    build=lambda c: (lambda data: (write(data / "s4/o2/C_04_02_001.png", bomb_png()),
                                   core50_argv(c.images, c.tmp / "run", "--base_init_fraction", "1.0",
                                               data_dir=data))[1])(core50_copy(c.images, c.tmp)))
add(EX, "a 16000 x 16000 PNG image", "DecompressionBombError", fixed=BOMBS,
    build=lambda c: (lambda raw: (write(sorted((raw / "images/train").glob("*.png"))[3], bomb_png()),
                                  ex_argv(c, path=raw))[1])(
        Path(shutil.copytree(c.vqa.clevr / "images", c.tmp / "clevr/images")).parent))
add(ML, "a class-order file that starts with a UTF-8 byte-order mark", "10 classes)", kind="ok",
    fixed="class order files read as utf-8-sig (the first class was reported missing)",
    build=lambda c: ml_argv(c, order=write(c.tmp / "order.txt", b"\xef\xbb\xbf" + (
        c.images.digits / "class_order.txt").read_bytes()))[0] )


# ------------------------------------------------------------------ issue 20: a disk that fills up mid-run
def full_disk_at(name: str, nth: int = 1):
    """A patch making torch.save fail as on a full disk (torch's own RuntimeError) when it writes ``name`` for
    the ``nth`` time."""
    def patch(monkeypatch, c) -> None:
        real = torch.save
        writes = []

        def save(obj, f, *args, **kwargs):
            target = os.readlink(f"/proc/self/fd/{f.fileno()}") if hasattr(f, "fileno") else str(f)
            if Path(target).name.startswith(f".{name}") and len(writes) + 1 == nth:
                f.write(b"PK" * 512)  # torch's zip writer writes through, then finds the disk full
                f.flush()
                raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1024 vs 960")
            if Path(target).name.startswith(f".{name}"):
                writes.append(target)
            return real(obj, f, *args, **kwargs)
        monkeypatch.setattr(torch, "save", save)
    return patch


def rerun_continues(entry: str, kept: str, note: str):
    """After the full disk: ``kept`` is still a complete state, no temporary is left, and a rerun continues."""
    def after(c, argv) -> None:
        folder = Path(argv[argv.index("--save_dir") + 1])
        torch.load(folder / kept, weights_only=True)
        assert not list(folder.rglob(".*.tmp")), list(folder.rglob(".*.tmp"))
        assert ENTRIES[entry](argv) == 0
        assert note in c.capfd.readouterr().out
    return after


DISK = "the atomic writer turns torch's 'unexpected pos' into one ENOSPC line naming the folder"
add(IE, "the disk fills up while remind_buffer_6.pth is written", "remind_model while writing "
    "remind_buffer_6.pth", kind="late", fixed=DISK, patch=full_disk_at("remind_buffer_6.pth"),
    after=rerun_continues(IE, "remind_model/remind_buffer_4.pth", "resuming from"),
    build=lambda c: ie_argv(c.images, c.tmp / "run"))
def vqa_rerun_continues(c, argv) -> None:
    """After the full disk: the VQA run's checkpoint.pt is the previous complete one and a rerun resumes."""
    folder = Path(argv[argv.index("--output_dir") + 1]) / "h"
    folder = folder if (folder / "checkpoint.pt").is_file() else Path(argv[argv.index("--output_dir") + 1])
    assert (folder / "checkpoint.pt").is_file() and not list(folder.rglob(".*.tmp"))
    assert vqa_trainer.main(argv) == 0
    assert "resuming h after" in c.capfd.readouterr().out


add(VT, "the disk fills up while the second checkpoint.pt is written", "while writing checkpoint.pt",
    kind="late", fixed=DISK, patch=full_disk_at("checkpoint.pt", nth=2), after=vqa_rerun_continues,
    build=lambda c: trainer_argv(c.vqa, c.tmp / "out"))
def core50_rerun_continues(c, argv) -> None:
    """After the full disk: the CORe50 run's first increment state loads and a rerun resumes from it."""
    folder = Path(argv[argv.index("--save_dir") + 1])
    states = list(folder.rglob("remind_buffer_*.pth"))
    assert len(states) == 1 and not list(folder.rglob(".*.tmp")), states
    torch.load(states[0], weights_only=True)
    assert ENTRIES[CE](argv) == 0
    assert "resuming from" in c.capfd.readouterr().out


add(CE, "the disk fills up while the second increment state is written", "while writing remind_buffer_",
    kind="late", fixed=DISK, patch=full_disk_at("remind_buffer_", nth=2), after=core50_rerun_continues,
    build=lambda c: core50_argv(c.images, c.tmp / "run"))
add(BI, "the disk fills up while the checkpoint is written", "ckpts while writing net.pth",
    kind="late", fixed=DISK, patch=full_disk_at("net.pth"),
    build=lambda c: base_init_argv(c.images, c.tmp / "ckpts"))


# ------------------------------------------------------------------ issue 20: a scheduler that signals twice
def signals_twice(signum: int):
    """A patch sending ``signum`` twice at the stream's first safe point: the second arrives while a stop is
    pending and must stop the run at once."""
    def patch(monkeypatch, c) -> None:
        import signal

        from remind.autosave import Autosave
        real = Autosave.tick

        def tick(self, save):
            if not self.stop_pending:
                os.kill(os.getpid(), signum)
                os.kill(os.getpid(), signum)
            return real(self, save)
        monkeypatch.setattr(Autosave, "tick", tick)
        assert signum in (signal.SIGINT, signal.SIGTERM)
    return patch


TWICE = "a second signal raises StoppedAtOnce, which run_main prints as one line (it was a traceback)"
add(IE, "SIGINT twice while a stop is pending", "stopped at once by a second SIGINT", kind="stopped", fixed=TWICE,
    patch=signals_twice(2), after=rerun_continues(IE, "remind_model/remind_buffer_4.pth", "resuming from"),
    build=lambda c: ie_argv(c.images, c.tmp / "run"))
add(IE, "SIGTERM twice while a stop is pending", "stopped at once by a second SIGTERM", kind="stopped", fixed=TWICE,
    patch=signals_twice(15), build=lambda c: ie_argv(c.images, c.tmp / "run"))


# ------------------------------------------------------------------ issue 20: flag values and question fields
def clevr_with(c, position: int, **fields):
    """A copy of the synthetic CLEVR questions with question ``position``'s ``fields`` replaced."""
    raw = Path(shutil.copytree(c.vqa.clevr / "questions", c.tmp / "clevr/questions")).parent
    file = raw / "questions/CLEVR_train_questions.json"
    data = json.loads(file.read_text())
    data["questions"][position].update(fields)
    file.write_text(json.dumps(data))
    return ["--path", str(raw), "--out", str(c.tmp / "work")], [c.tmp / "work", raw]


def tdiuc_answer(c, position: int, answer):
    """A copy of the synthetic TDIUC files with annotation ``position``'s first answer replaced."""
    raw = Path(shutil.copytree(c.vqa.tdiuc, c.tmp / "tdiuc", ignore=shutil.ignore_patterns("Images")))
    file = raw / "Annotations/mscoco_train2014_annotations.json"
    data = json.loads(file.read_text())
    data["annotations"][position]["answers"][0]["answer"] = answer
    file.write_text(json.dumps(data))
    return ["--path", str(raw), "--out", str(c.tmp / "work")], [c.tmp / "work", raw]


def other_run_checkpoint(c) -> list[str]:
    """An --output_dir whose checkpoint.pt is of a run with another seed (a finished 1-epoch run)."""
    out = c.tmp / "out"
    assert vqa_trainer.main(trainer_argv(c.vqa, out, "--seed", "1")) == 0
    return trainer_argv(c.vqa, out)


def reshaped_checkpoint(c) -> list[str]:
    """An --output_dir whose checkpoint.pt (of this very run) holds a network tensor of another shape."""
    from remind.checkpoint import load_state, save_state
    out = c.tmp / "out"
    assert vqa_trainer.main(trainer_argv(c.vqa, out)) == 0
    state, meta = load_state(out / "checkpoint.pt")
    weights = state["learner"]["plastic_net"]
    name = next(k for k, v in weights.items() if v.dim() == 2)
    weights[name] = weights[name][:, :-1].clone()
    save_state(out / "checkpoint.pt", state, meta)
    return trainer_argv(c.vqa, out)


def checkpoint_without_identity(c) -> list[str]:
    """An --output_dir whose checkpoint.pt (of this very run) lost its run identity from the metadata."""
    from remind.checkpoint import load_state, save_state
    out = c.tmp / "out"
    assert vqa_trainer.main(trainer_argv(c.vqa, out)) == 0
    state, meta = load_state(out / "checkpoint.pt")
    del meta["identity"]
    save_state(out / "checkpoint.pt", state, meta)
    return trainer_argv(c.vqa, out)


def omega_into_run(c):
    """compute_omega with --out the learner's own results folder, which holds its accuracy_curves.png."""
    run = omega_run(c.tmp / "remind", [80, 60, 50])
    write(run / "accuracy_curves.png", b"the run's own plot")
    return omega_argv(c.tmp, learner=run)[:-1] + [str(run)], [run]


add(VT, "a checkpoint.pt whose tensors have other shapes", "does not fit this run's model",
    fixed="a VQA checkpoint that does not fit the model is one line (it was a size-mismatch traceback)",
    build=lambda c: (reshaped_checkpoint(c), [c.tmp / "out" / "checkpoint.pt"]))
add(VT, "a checkpoint.pt whose metadata lacks the run identity", "has no run identity in its metadata",
    fixed="a run state without its identity is one line (it was a KeyError traceback)",
    build=lambda c: (checkpoint_without_identity(c), [c.tmp / "out" / "checkpoint.pt"]))
add(VT, "a TDIUC config on a CLEVR data folder", "holds the clevr data",
    fixed="a config of another dataset than the data folder is named as such (it said only that a file is missing)",
    build=lambda c: ["--expt_name", "h", "--data_path", str(c.vqa.work), "--data_order", "qtype",
                     "--stream_with_rehearsal", "--output_dir", str(c.tmp / "out"), "--config_name", "TDIUC_demo",
                     "--device", "cpu"])
FLAGS20 = "flag values checked before work (issue 20)"
FIELDS = "each question's fields checked, the first bad one named by its index"
add(IE, "--checkpoint_every_minutes nan", "finite number >= 0", fixed=FLAGS20,
    build=lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--checkpoint_every_minutes", "nan"))
add(IE, "--checkpoint_every_minutes inf", "finite number >= 0", fixed=FLAGS20,
    build=lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--checkpoint_every_minutes", "inf"))
add(CE, "--checkpoint_every_minutes nan", "finite number >= 0", fixed=FLAGS20,
    build=lambda c: with_flag(core50_argv(c.images, c.tmp / "run"), "--checkpoint_every_minutes", "nan"))
add(VT, "--checkpoint_every_minutes nan", "finite number >= 0", fixed=FLAGS20,
    build=lambda c: trainer_argv(c.vqa, c.tmp / "out", "--checkpoint_every_minutes", "nan"))
add(IE, "--streaming_min_class 9 --streaming_max_class 7 (a reversed range)", "is reversed", fixed=FLAGS20,
    build=lambda c: ie_argv(c.images, c.tmp / "run", "--streaming_min_class", "9", "--streaming_max_class", "7"))
add(IE, "--num_classes 1000000000000", "for F's last layer alone", fixed=FLAGS20,
    build=lambda c: with_flag(ie_argv(c.images, c.tmp / "run"), "--num_classes", "1000000000000"))
add(VT, "--set lr=1e400 (inf)", "not a finite number", fixed=FLAGS20,
    build=lambda c: trainer_argv(c.vqa, c.tmp / "out", "--set", "lr=1e400"))
add(VT, "--glove text file with a 'nan' value", "not finite", fixed=FLAGS20,
    build=lambda c: trainer_argv(c.vqa, c.tmp / "out", "--glove", str(write(c.tmp / "glove.txt", "".join(
        f"{w} " + " ".join(["nan"] * 16) + "\n" for w in ("is", "there", "a", "the", "what")) ))))
add(VT, "--glove of another dimension than emb_dim", "glove.txt have shape", fixed=FLAGS20,
    build=lambda c: trainer_argv(c.vqa, c.tmp / "out", "--glove", str(write(c.tmp / "glove.txt", "".join(
        f"{w} " + " ".join(["0.1"] * 8) + "\n" for w in ("is", "there", "a", "the", "what")) ))))
add(VT, "an --output_dir of a run with another --seed", "seed: saved 1, now 0", fixed=FLAGS20 + (
    ": the VQA trainer no longer suggests --allow_changed_settings, which it does not have"),
    build=lambda c: (lambda a: (a, [c.tmp / "out"]))(other_run_checkpoint(c)))
add(PC, "an answer that is null", "question 2 has answer None", fixed=FIELDS,
    build=lambda c: clevr_with(c, 2, answer=None))
add(PC, "an image_index of 1.7", "question 1 has image_index 1.7", fixed=FIELDS,
    build=lambda c: clevr_with(c, 1, image_index=1.7))
add(PC, "a question_index that is a string", "question 0 has question_index '0'", fixed=FIELDS,
    build=lambda c: clevr_with(c, 0, question_index="0"))
add(PT, "an answer that is null", "annotation 1 has answer None", fixed=FIELDS,
    build=lambda c: tdiuc_answer(c, 1, None))

# ------------------------------------------------------------------ issue 20: report writers
add(CO, "--out that is one of the runs (its accuracy_curves.png)", "holds a run's results",
    fixed="compute_omega refuses an --out holding a run's results (it overwrote the run's plot)",
    build=lambda c: omega_into_run(c))


# ------------------------------------------------------------------------------------------- the test
def snapshot(paths) -> dict:
    """Bytes and modification time of every file under ``paths``; ``absent`` for paths that do not exist."""
    state = {}
    for root in map(Path, paths):
        if not os.path.lexists(root):
            state[str(root)] = "absent"
            continue
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if path.is_file():
                state[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            else:
                state[str(path)] = "folder"
    return state


RECORDED: dict[str, tuple[Case, str]] = {}


def case_id(case: Case) -> str:
    return f"{case.entry}: {case.what}"


def run_shell(script: str, env: dict, tmp: Path) -> tuple[int, str, str]:
    folder = "vqa_experiments" if script.startswith("run_clevr") else "image_classification_experiments"
    full_env = {**os.environ, "PYTHON": sys.executable, "LOG_DIR": str(tmp / "logs"), "OMP_NUM_THREADS": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), **env}
    result = subprocess.run(["bash", str(REPO / folder / script)], env=full_env, capture_output=True, text=True,
                            timeout=120, cwd=tmp)
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize("case", [pytest.param(c, id=case_id(c), marks=[pytest.mark.xfail(strict=True, reason=c.xfail)]
                                               if c.xfail else []) for c in CASES])
def test_hostile_input(case: Case, request, tmp_path, capfd, monkeypatch):
    context = Context(request, tmp_path)
    built = case.build(context)
    args, protected = built if isinstance(built, tuple) else (built, [])
    if case.entry not in SHELL and case.kind in ("error", "argparse"):
        protected = [*protected, *(Path(a) for a, flag in zip(args[1:], args) if flag in (
            "--save_dir", "--output_dir", "--out", "--labels_dir"))]
    before = snapshot(protected)
    if case.patch is not None:
        case.patch(monkeypatch, context)
    capfd.readouterr()
    if case.entry in SHELL:
        rc, out, err = run_shell(case.entry, args, tmp_path)
        lines = [line for line in (out + err).splitlines() if line.startswith("error:")]
        assert rc == 2 and len(lines) == 1 and "Traceback" not in out + err, (rc, out, err)
        line = lines[0]
    else:
        try:
            rc = ENTRIES[case.entry](args)
        except SystemExit as exc:  # argparse
            rc = exc.code
        out, err = capfd.readouterr()
        lines = err.strip().splitlines()
        if case.kind in ("rerun", "ok"):
            assert rc == 0 and case.expect in out, (rc, out, err)
            line = "exit 0; " + case.expect
        elif case.kind == "argparse":
            assert rc == 2 and lines and ": error: " in lines[-1], (rc, err)
            line = "error: " + lines[-1].split(": error: ", 1)[1]
        elif case.kind == "late":
            assert rc == 2 and "Traceback" not in err and lines and lines[-1].startswith("error:"), (rc, err)
            line = lines[-1]
        elif case.kind == "stopped":
            assert rc > 128 and "Traceback" not in err and lines and "stopped" in lines[-1], (rc, err)
            line = f"exit {rc}; " + lines[-1][lines[-1].index("stopped"):]  # after a progress bar's last state
        else:
            assert rc == 2 and len(lines) == 1 and lines[0].startswith("error:"), (rc, err)
            line = lines[0]
    assert case.expect in line, line
    assert snapshot(protected) == before
    if case.after is not None:
        monkeypatch.undo()
        case.after(context, args)
    RECORDED[case_id(case)] = (case, line.replace(str(tmp_path), "<tmp>").replace(str(tmp_path.parent),
                                                                                  "<session tmp>"))


@pytest.fixture(scope="module", autouse=True)
def write_table():
    """With HOSTILE_INPUTS_TABLE=path, write the outcomes as docs/hostile_inputs.md's table."""
    yield
    target = os.environ.get("HOSTILE_INPUTS_TABLE")
    if not target or len(RECORDED) != len([c for c in CASES if not c.xfail]):
        return
    rows = ["| # | entry point | input | outcome | fixed by |", "|---|---|---|---|---|"]
    for n, case in enumerate(CASES, start=1):
        if case.xfail:
            outcome = f"**open**: {case.xfail}"
        else:
            outcome = "`" + RECORDED[case_id(case)][1].replace("|", "\\|") + "`"
        what = case.what.replace("|", "\\|")
        rows.append(f"| {n} | {case.entry} | {what} | {outcome} | {case.fixed} |")
    text = Path(target).read_text() if Path(target).exists() else ""
    start, end = "<!-- table: tests/test_hostile_inputs.py -->", "<!-- end of table -->"
    table = start + "\n" + "\n".join(rows) + "\n" + end
    if start in text and end in text:
        text = text[:text.index(start)] + table + text[text.index(end) + len(end):]
    else:
        text += "\n" + table + "\n"
    Path(target).write_text(text)
