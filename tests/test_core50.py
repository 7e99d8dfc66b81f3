"""CORe50: the loader and the four orderings on a generated tree with CORe50's naming, and a tiny
end-to-end run of ``core50_experiment.main`` (CPU)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from image_classification_experiments import core50_experiment as ce
from image_classification_experiments.make_core50_tree import write_core50_tree
from image_classification_experiments.stream_run import ACCURACY_KEYS
from image_classification_experiments.utils_core50 import (
    ORDERINGS,
    Core50Frames,
    core50_transform,
    load_core50,
    stream_order,
)
from remind.compute import read_records

NUM_OBJECTS, FRAMES = 15, 4  # 3 categories
TRAIN = (1, 2, 4, 5, 6, 8, 9, 11)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_core50_tree(str(tmp_path_factory.mktemp("core50") / "core50_128x128"), num_objects=NUM_OBJECTS,
                             frames_per_video=FRAMES, pixels=8, seed=0)


@pytest.fixture(scope="module")
def splits(tree):
    return load_core50(str(tree))


def runs(values: np.ndarray) -> list:
    """Values of consecutive runs: [a, a, b, a] -> [a, b, a]."""
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


# ------------------------------------------------------------------ loader
def test_naming_sessions_and_labels(tree, splits):
    train, test = splits
    assert (tree / "s1" / "o1" / "C_01_01_000.png").is_file()
    assert (tree / "s11" / "o15" / "C_11_15_003.png").is_file()
    assert sorted(set(test.sessions.tolist())) == [3, 7, 10]
    assert sorted(set(train.sessions.tolist())) == list(TRAIN)
    assert len(train) == 8 * NUM_OBJECTS * FRAMES and len(test) == 3 * NUM_OBJECTS * FRAMES
    for split in splits:
        for path, session, obj, frame, label in zip(split.paths, split.sessions, split.objects, split.frames,
                                                    split.labels):
            expected = f"s{session}/o{obj}/C_{session:02d}_{obj:02d}_{frame:03d}.png"
            assert Path(path).relative_to(tree).as_posix() == expected
            assert label == (obj - 1) // 5
    assert np.bincount(train.labels).tolist() == [8 * 5 * FRAMES] * 3


def test_frame_stride_keeps_every_kth_frame(tree):
    train, _ = load_core50(str(tree), frame_stride=2)
    assert sorted(set(train.frames.tolist())) == [0, 2] and len(train) == 8 * NUM_OBJECTS * 2


def test_dataset_yields_image_label_index(splits):
    train, _ = splits
    data = Core50Frames(train, np.array([7, 3]), core50_transform(32))
    image, label, index = data[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert index == 7 and label == train.labels[7]


def test_missing_session_is_an_error(tmp_path):
    write_core50_tree(str(tmp_path / "t"), num_objects=5, frames_per_video=1, pixels=4)
    (tmp_path / "t" / "s7").rename(tmp_path / "t" / "moved")
    assert ce.main(["--data_dir", str(tmp_path / "t"), "--device", "cpu", "--save_dir", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ orderings
@pytest.mark.parametrize("ordering", ORDERINGS)
def test_every_frame_exactly_once_and_deterministic(splits, ordering):
    train, _ = splits
    order = stream_order(train, ordering, seed=3)
    assert sorted(order.tolist()) == list(range(len(train)))
    assert np.array_equal(order, stream_order(train, ordering, seed=3))
    others = [stream_order(train, ordering, seed=s) for s in range(4, 10)]
    assert all(not np.array_equal(order, o) for o in others)


def test_iid_is_a_shuffle(splits):
    train, _ = splits
    order = stream_order(train, "iid", seed=0)
    assert len(runs(train.labels[order])) > 10  # categories interleaved, not blocked


@pytest.mark.parametrize("ordering", ["class_iid", "class_instance"])
def test_class_orderings_keep_categories_contiguous(splits, ordering):
    train, _ = splits
    orders = {tuple(runs(train.labels[stream_order(train, ordering, seed=s)])) for s in range(12)}
    assert all(sorted(o) == [0, 1, 2] for o in orders)  # each category one block
    assert len(orders) > 1  # the category order depends on the seed


def assert_objects_contiguous_in_temporal_order(train, order):
    objects = train.objects[order]
    assert sorted(runs(objects)) == sorted(set(objects.tolist()))  # one block per object
    for obj in set(objects.tolist()):
        block = order[objects == obj]
        times = list(zip(train.sessions[block], train.frames[block]))
        assert times == sorted(times)  # sessions ascending, frames ascending within a session


def test_instance_ordering(splits):
    train, _ = splits
    for seed in range(3):
        assert_objects_contiguous_in_temporal_order(train, stream_order(train, "instance", seed))
    labels = train.labels[stream_order(train, "instance", 0)]
    assert len(runs(labels)) > 3  # objects of a category are not kept together


def test_class_instance_ordering(splits):
    train, _ = splits
    order = stream_order(train, "class_instance", 1)
    assert_objects_contiguous_in_temporal_order(train, order)
    assert sorted(runs(train.labels[order])) == [0, 1, 2]
    objects = {tuple(runs(train.objects[stream_order(train, "class_instance", s)])) for s in range(6)}
    assert len(objects) > 1


def test_class_iid_shuffles_within_a_category(splits):
    train, _ = splits
    order = stream_order(train, "class_iid", 0)
    assert len(runs(train.objects[order])) > 3 * 5


def test_eval_points():
    assert ce.eval_points(100, 0.1, 0.1) == (10, [20, 30, 40, 50, 60, 70, 80, 90, 100])
    assert ce.eval_points(7, 0.5, 0.5) == (4, [7])


# ------------------------------------------------------------------ end to end
def test_tiny_run_end_to_end_and_resume(tree, tmp_path, capsys):
    save_dir = tmp_path / "out"
    argv = ["--data_dir", str(tree), "--order", "class_instance", "--permutation_seed", "2", "--frame_stride", "4",
            "--image_size", "64", "--num_workers", "0", "--device", "cpu", "--codebook_size", "16",
            "--rehearsal_samples", "3", "--eval_fraction", "0.5", "--base_init_fraction", "0.3",
            "--use_random_resized_crops", "--use_mixup", "--save_dir", str(save_dir)]
    assert ce.main(argv) == 0
    assert "no --classifier_ckpt" in capsys.readouterr().out
    stream = 8 * NUM_OBJECTS  # one frame per video at --frame_stride 4
    result = save_dir / f"core50_class_instance_accuracies_min_trained_0_max_trained_{stream}.json"
    accuracies = json.loads(result.read_text())
    assert set(accuracies) == set(ACCURACY_KEYS)
    assert len(accuracies["seen_classes_top1"]) == 3  # base init (36 frames), 60, 120
    assert all(0 <= a <= 100 for a in accuracies["seen_classes_top1"])
    assert accuracies["non_base_classes_top1"][0] is None  # no non-base category at base init
    assert (save_dir / "core50_class_instance_accuracy_curve.png").is_file()
    # a rerun finds the last checkpoint and changes nothing
    before = result.read_text()
    assert ce.main(argv) == 0
    assert "resuming from" in capsys.readouterr().out and result.read_text() == before
    # another ordering in the same folder is refused
    other = list(argv)
    other[other.index("--permutation_seed") + 1] = "5"
    capsys.readouterr()
    assert ce.main(other) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_torchvision_style_checkpoint_gets_a_10_way_fc(tree, tmp_path):
    from torchvision.models import resnet18
    ckpt = tmp_path / "resnet18.pth"
    torch.save(resnet18(num_classes=1000).state_dict(), ckpt)
    args = ce.get_args_parser().parse_args(["--data_dir", str(tree), "--classifier_ckpt", str(ckpt)])
    adapted = ce.adapted_checkpoint(args)
    assert adapted["model.fc.weight"].shape == (10, 512)
    assert torch.equal(adapted["model.layer4.1.conv1.weight"], torch.load(ckpt)["layer4.1.conv1.weight"])


def test_base_init_trains_f_on_the_base_frames(tree, tmp_path, capsys):
    """With --base_init_epochs, F (and its random 10-way head) is trained on the base-init codes before the
    first evaluation; with 0 it is evaluated as loaded."""
    first_eval = {}
    for epochs in (0, 8):
        save_dir = tmp_path / f"epochs{epochs}"
        argv = ["--data_dir", str(tree), "--order", "iid", "--permutation_seed", "1", "--frame_stride", "2",
                "--image_size", "64", "--num_workers", "0", "--device", "cpu", "--codebook_size", "16",
                "--rehearsal_samples", "3", "--eval_fraction", "1.0", "--base_init_fraction", "0.5",
                "--base_init_epochs", str(epochs), "--base_init_batch_size", "16", "--save_dir", str(save_dir)]
        assert ce.main(argv) == 0
        out = capsys.readouterr().out
        assert ("base init: F trained" in out) == (epochs > 0)
        result = sorted(save_dir.glob("core50_iid_accuracies_*.json"))[-1]
        first_eval[epochs] = json.loads(result.read_text())["seen_classes_top1"][0]
        # the compute record: F's base-init epochs (batches of 16) counted at the first point, then a step a frame
        records = read_records(save_dir, "core50_iid_compute.json")
        first, last = records[0], records[-1]
        assert out.count("compute: ") == len(records) == 2 and first["unit"] == last["unit"] == "frames"
        base_frames = first["sample_passes"] // max(epochs, 1)
        assert first["examples_streamed"] == 0 and first["optimizer_updates"] == epochs * -(-base_frames // 16)
        assert first["sample_passes"] == epochs * base_frames and (base_frames > 0) == (epochs > 0)
        assert last["examples_streamed"] == last["position"] - first["position"] > 0
        assert last["optimizer_updates"] == first["optimizer_updates"] + last["examples_streamed"]
        assert last["sample_passes"] == first["sample_passes"] + 4 * last["examples_streamed"]  # 1 + 3 replays
    assert first_eval[8] > first_eval[0] + 20, first_eval


def test_dry_run_prints_the_budget_and_writes_nothing(tree, tmp_path, capsys):
    save_dir = tmp_path / "out"
    argv = ["--data_dir", str(tree), "--order", "iid", "--frame_stride", "4", "--image_size", "64",
            "--num_workers", "0", "--device", "cpu", "--codebook_size", "16", "--max_buffer_size", "20",
            "--save_dir", str(save_dir), "--dry_run"]
    assert ce.main(argv) == 0
    out = capsys.readouterr().out
    assert not save_dir.exists()
    assert "20 examples x 128 B of codes (2x2 x 32 codebooks)" in out  # min(--max_buffer_size, frames)
    assert re.search(rf"training examples\s+{8 * NUM_OBJECTS}\n", out) and "dry run" in out


def test_check_images_refuses_unreadable_frames_before_the_run(tree, tmp_path, capsys):
    import shutil

    copy = tmp_path / "core50"
    shutil.copytree(tree, copy)
    broken = copy / "s4" / "o2" / "C_04_02_001.png"
    broken.write_bytes(b"not a png")
    save_dir = tmp_path / "out"
    argv = ["--data_dir", str(copy), "--order", "iid", "--frame_stride", "1", "--image_size", "64",
            "--num_workers", "0", "--device", "cpu", "--codebook_size", "16", "--base_init_fraction", "1.0",
            "--eval_fraction", "1.0", "--base_init_epochs", "0", "--save_dir", str(save_dir)]
    capsys.readouterr()
    assert ce.main(argv + ["--check_images"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 1 images cannot be read") and str(broken) in err[0], err
    assert f"(UnidentifiedImageError: cannot identify image file '{broken}')" in err[0]  # why PIL failed
    assert not save_dir.exists()
    # without the flag the run meets it: one line naming the frame, no traceback
    assert ce.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"error: image {broken} cannot be read")
    # a readable tree passes the check (and --dry_run writes nothing)
    argv[argv.index(str(copy))] = str(tree)
    assert ce.main(argv + ["--check_images", "--dry_run", "--save_dir", str(tmp_path / "dry")]) == 0
    assert f"every image of {len(load_core50(str(tree))[0])} training" in capsys.readouterr().out
    assert not (tmp_path / "dry").exists()
