"""The whole-network offline baseline through its real entry point, on tiny digits."""
import json

import numpy as np
import pytest
import torch

from image_classification_experiments import compute_omega, offline_full_network
from image_classification_experiments.make_digits_imagefolder import write_digits
from remind.compute import read_records


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return str(write_digits(str(tmp_path_factory.mktemp("digits")), per_class=10, pixels=32, seed=0))


def argv(digits, save_dir, **overrides):
    flags = {"--images_dir": digits, "--label_dir": digits, "--save_dir": str(save_dir), "--num_classes": "10",
             "--base_init_classes": "4", "--class_increment": "3", "--epochs": "1", "--train_batch_size": "8",
             "--image_size": "32", "--num_workers": "0", "--device": "cpu"}
    flags.update(overrides)
    return [item for pair in flags.items() for item in pair] + ["--no_hflip"]


def test_offline_full_network_writes_results_resumes_and_feeds_omega(digits, tmp_path):
    save_dir = tmp_path / "offline"
    assert offline_full_network.main(argv(digits, save_dir)) == 0
    final = json.loads((save_dir / "accuracies_min_trained_0_max_trained_10.json").read_text())
    assert len(final["seen_classes_top1"]) == 3 and len(final["non_base_classes_top1"]) == 2
    # each point's network was trained on exactly the classes seen: its checkpoint says how many epochs ran
    for classes in (4, 7, 10):
        ckpt = torch.load(save_dir / "networks" / f"ResNet18ClassifyAfterLayer4_1_{classes}.pth", weights_only=True)
        assert ckpt["epoch"] == 1
    probas = torch.load(save_dir / "preds_min_trained_0_max_trained_7.pth", weights_only=True)
    assert probas.shape == (2 * 7, 10) and torch.allclose(probas.sum(1), torch.ones(14), atol=1e-5)
    labels = np.load(f"{digits}/imagenet_indices/imagenet_val_labels.npy")
    seen = labels[labels < 7]
    top1 = 100.0 * float((probas.argmax(1).numpy() == seen).mean())
    assert json.loads((save_dir / "accuracies_min_trained_0_max_trained_7.json").read_text())[
        "seen_classes_top1"][-1] == pytest.approx(top1)

    # the compute record: one epoch per network of 8 images per class in batches of 8
    def counts():
        return [(r["position"], r["examples_streamed"], r["optimizer_updates"], r["sample_passes"])
                for r in read_records(save_dir)]
    expected = [(4, 0, 4, 32), (7, 24, 4 + 7, 32 + 56), (10, 48, 4 + 7 + 10, 32 + 56 + 80)]
    assert counts() == expected
    assert read_records(save_dir)[-1]["seconds"]["offline"] > 0

    # a rerun trains nothing again, and reads what each network cost from its record
    stamps = {p.name: p.stat().st_mtime_ns for p in (save_dir / "networks").iterdir()}
    assert offline_full_network.main(argv(digits, save_dir)) == 0
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (save_dir / "networks").iterdir()}
    assert counts() == expected

    # more epochs continue the existing networks instead of starting over
    assert offline_full_network.main(argv(digits, save_dir, **{"--epochs": "2", "--streaming_max_class": "7",
                                                               "--class_increment": "3"})) == 0
    ckpt = torch.load(save_dir / "networks" / "ResNet18ClassifyAfterLayer4_1_7.pth", weights_only=True)
    assert ckpt["epoch"] == 2

    # its folder is what compute_omega reads as the offline reference
    assert sorted(compute_omega.accuracy_files(save_dir)) == [4, 7, 10]


def test_offline_full_network_bad_class_range(digits, tmp_path, capsys):
    assert offline_full_network.main(argv(digits, tmp_path / "x", **{"--num_classes": "12"})) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "label files" in err[0]
    assert not (tmp_path / "x").exists()
