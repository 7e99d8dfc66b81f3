"""The paper's own files: the shipped class order, a checkpoint in the original's convention and its
conversion, and run_imagenet_experiment.sh creating missing label files (tiny digits tree, CPU)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from image_classification_experiments import convert_released_checkpoint as convert
from image_classification_experiments import imagenet_experiment as ie
from image_classification_experiments.make_digits_imagefolder import write_digits
from image_classification_experiments.make_numpy_imagenet_label_files import make_label_files
from image_classification_experiments.resnet_models import ROW_ORDER, ResNet18ClassifyAfterLayer4_1
from image_classification_experiments.utils_imagenet import eval_transform

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "image_classification_experiments" / "imagenet_files" / "imagenet_class_order.txt"
NAMES = [f"digit_{d}" for d in range(10)]  # ImageFolder's alphabetical order
# Base-init classes {0, 1, 2, 3} in another order, then the rest shuffled: base init sees the same images under
# both labellings, so the two runs below must agree exactly.
ORDER = ["digit_2", "digit_0", "digit_3", "digit_1", "digit_7", "digit_4", "digit_9", "digit_5", "digit_8",
         "digit_6"]
BASE = 4


def test_shipped_class_order_is_the_papers_1000_wnids():
    names = SHIPPED.read_text().split("\n")
    assert names[-1] == "" and len(names[:-1]) == 1000 and len(set(names[:-1])) == 1000
    assert all(re.fullmatch(r"n\d{8}", name) for name in names[:-1])
    assert names[:2] == ["n09332890", "n03983396"]  # the original's first classes (the paper's order)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("order")
    digits = write_digits(str(root / "digits"), per_class=40, pixels=32, seed=1)
    (root / "order.txt").write_text("\n".join(ORDER) + "\n")
    (root / "alphabetical.txt").write_text("\n".join(NAMES) + "\n")
    make_label_files(str(digits), str(root / "order.txt"), str(root / "order_labels"))
    make_label_files(str(digits), str(root / "alphabetical.txt"), str(root / "alpha_labels"))
    return root


@pytest.fixture(scope="module")
def original_ckpt(tree) -> Path:
    """A base-init network trained as the original did (ImageFolder's targets), saved in its convention:
    DataParallel's ``module.`` prefixes, a ``state_dict`` entry, PyTorch's legacy file format."""
    torch.manual_seed(0)
    data = torchvision.datasets.ImageFolder(str(tree / "digits" / "train"), transform=eval_transform(64))
    base = [i for i, (_, target) in enumerate(data.samples) if target < BASE]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, base), batch_size=16, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    network = ResNet18ClassifyAfterLayer4_1(num_classes=10)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    network.train()
    for _ in range(4):
        for images, targets in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(network(images), targets).backward()
            optimizer.step()
    path = tree / "best_ResNet18ClassifyAfterLayer4_1_4.pth"
    torch.save({"epoch": 4, "arch": "ResNet18ClassifyAfterLayer4_1", "best_acc1": torch.tensor(90.0),
                "state_dict": {"module." + k: v for k, v in network.state_dict().items()},
                "optimizer": optimizer.state_dict()}, path, _use_new_zipfile_serialization=False)
    return path


def base_init_accuracy(tree: Path, labels: str, ckpt: Path, save_dir: Path, capfd) -> tuple[dict, str]:
    argv = ["--images_dir", str(tree / "digits"), "--label_dir", str(tree / labels), "--classifier_ckpt", str(ckpt),
            "--num_classes", "10", "--base_init_classes", str(BASE), "--streaming_max_class", str(BASE),
            "--image_size", "64", "--num_workers", "0", "--device", "cpu", "--codebook_size", "16",
            "--rehearsal_samples", "5", "--lr_examples_per_class", "auto", "--save_dir", str(save_dir)]
    capfd.readouterr()
    code = ie.main(argv)
    err = capfd.readouterr().err
    assert code == 0, err
    accuracies = json.loads((save_dir / f"accuracies_min_trained_0_max_trained_{BASE}.json").read_text())
    return {k: v[0] for k, v in accuracies.items() if k.startswith("base")}, err


def test_converted_release_gives_the_accuracy_of_the_original_labels(tree, original_ckpt, tmp_path, capfd):
    converted = tmp_path / "converted.pth"
    assert convert.main(["--ckpt", str(original_ckpt), "--out", str(converted),
                         "--class_order_text_file", str(tree / "order.txt")]) == 0
    saved = torch.load(converted, weights_only=True)
    assert saved["row_order"] == ROW_ORDER and saved["class_names"] == ORDER
    assert not any(k.startswith("module.") for k in saved["state_dict"])
    old = torch.load(original_ckpt, weights_only=True)["state_dict"]["module.model.fc.weight"]
    for position, name in enumerate(ORDER):  # every row moved, base-init classes and the others alike
        assert torch.equal(saved["state_dict"]["model.fc.weight"][position], old[NAMES.index(name)])

    reference, warned = base_init_accuracy(tree, "alpha_labels", original_ckpt, tmp_path / "alpha", capfd)
    assert "does not record which class" in warned  # the release says nothing about its rows: not silent
    assert reference["base_classes_top1"] > 50  # the network has learned the base classes
    ours, err = base_init_accuracy(tree, "order_labels", converted, tmp_path / "order", capfd)
    assert "does not record" not in err
    assert ours == reference
    unconverted, warned = base_init_accuracy(tree, "order_labels", original_ckpt, tmp_path / "wrong", capfd)
    assert "convert_released_checkpoint" in warned
    assert unconverted["base_classes_top1"] < reference["base_classes_top1"] - 20  # what the warning is about


def test_converted_checkpoint_refused_with_other_label_files(tree, original_ckpt, tmp_path, capfd):
    converted = tmp_path / "converted.pth"
    convert.convert(str(original_ckpt), str(converted), str(tree / "order.txt"), str(tree / "digits"))
    argv = ["--images_dir", str(tree / "digits"), "--label_dir", str(tree / "alpha_labels"),
            "--classifier_ckpt", str(converted), "--num_classes", "10", "--base_init_classes", str(BASE),
            "--image_size", "64", "--num_workers", "0", "--device", "cpu", "--codebook_size", "16",
            "--save_dir", str(tmp_path / "run")]
    capfd.readouterr()
    assert ie.main(argv) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("error:") and "classifier row 0" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_conversion_refuses_to_overwrite_and_bad_orders(tree, original_ckpt, tmp_path, capfd):
    out = tmp_path / "out.pth"
    out.write_bytes(b"keep me")
    assert convert.main(["--ckpt", str(original_ckpt), "--out", str(out),
                         "--class_order_text_file", str(tree / "order.txt")]) == 2
    assert out.read_bytes() == b"keep me" and "exists" in capfd.readouterr().err
    (tmp_path / "bad.txt").write_text("digit_0\nnot_a_class\n")
    assert convert.main(["--ckpt", str(original_ckpt), "--out", str(tmp_path / "new.pth"),
                         "--class_order_text_file", str(tmp_path / "bad.txt"), "--images_dir",
                         str(tree / "digits")]) == 2
    assert "not_a_class" in capfd.readouterr().err and not (tmp_path / "new.pth").exists()


def test_run_script_writes_missing_label_files_and_runs(tree, original_ckpt, tmp_path):
    converted = tmp_path / "converted.pth"
    convert.convert(str(original_ckpt), str(converted), str(tree / "order.txt"))
    labels = tmp_path / "labels"
    env = {**os.environ, "IMAGE_DIR": str(tree / "digits"), "CLASS_ORDER": str(tree / "order.txt"),
           "LABEL_ORDER_DIR": str(labels), "BASE_INIT_CKPT": str(converted), "SAVE_DIR": str(tmp_path / "run"),
           "LOG_DIR": str(tmp_path / "logs"), "EXPT_NAME": "tiny", "NUM_CLASSES": "10", "BASE_INIT_CLASSES": "4",
           "CLASS_INCREMENT": "2", "IMAGE_SIZE": "64", "CODEBOOK_SIZE": "16", "REPLAY_SAMPLES": "3",
           "MAX_BUFFER_SIZE": "200", "LR_EXAMPLES_PER_CLASS": "auto", "DEVICE": "cpu",
           "EXTRA_ARGS": "--num_workers 0 --streaming_max_class 6", "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(REPO / "image_classification_experiments" / "run_imagenet_experiment.sh")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "label files missing" in result.stdout and "does not record" not in result.stdout + result.stderr
    np.testing.assert_array_equal(np.load(labels / "imagenet_indices" / "imagenet_train_labels.npy"),
                                  np.load(tree / "order_labels" / "imagenet_train_labels.npy"))
    accuracies = json.loads((tmp_path / "run" / "accuracies_min_trained_0_max_trained_6.json").read_text())
    assert len(accuracies["seen_classes_top1"]) == 2
    assert (tmp_path / "logs" / "tiny.log").is_file()
