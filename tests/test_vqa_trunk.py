"""The VQA demo's trunk: question-free pretraining scenes, a ResNet-18 trained on their annotations, its use
through the extraction's ordinary flags, and the linear probe that shows what its features carry.

The probe test is the point of issue 13: the trained trunk's features must let a linear probe read an object's
colour and shape far better than the majority class, and colour better than a random trunk's features do.
Expected labels are recomputed here from the scene JSON files.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vqa_experiments import feature_probe, make_synthetic_vqa, train_scene_trunk
from vqa_experiments.clevr import extract_image_features_clevr
from helpers import one_torch_thread

SIZE = 64


single_threaded = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trunk") / "raw"
    make_synthetic_vqa.generate(root, num_train_images=150, num_val_images=50, questions_per_image=1, image_size=128,
                                seed=3)
    make_synthetic_vqa.generate_scenes(root, 240, image_size=128, seed=3)
    return root


@pytest.fixture(scope="module")
def trunk(raw) -> Path:
    out = raw.parent / "trunk.pth"
    code = train_scene_trunk.main(["--scenes", str(raw / make_synthetic_vqa.PRETRAIN_DIR), "--out", str(out),
                                   "--model_stage", "2", "--image_size", str(SIZE), "--epochs", "6",
                                   "--holdout", "40", "--device", "cpu"])
    assert code == 0
    return out


def extract(raw: Path, out: Path, *trunk_flags: str) -> Path:
    code = extract_image_features_clevr.main(["--path", str(raw / "CLEVR_v1.0"), "--out", str(out),
                                              "--image_size", str(SIZE), "--batch_size", "30", "--num_workers", "0",
                                              "--device", "cpu", *trunk_flags])
    assert code == 0
    return out


def test_pretraining_scenes_are_their_own_and_leave_the_question_splits_unchanged(raw, tmp_path):
    scenes = json.loads((raw / make_synthetic_vqa.PRETRAIN_DIR / "scenes.json").read_text())["scenes"]
    assert len(scenes) == 240
    assert all((raw / make_synthetic_vqa.PRETRAIN_DIR / "images" / s["image_filename"]).is_file() for s in scenes)
    plain = tmp_path / "plain"
    make_synthetic_vqa.generate(plain, num_train_images=150, num_val_images=50, questions_per_image=1, image_size=128,
                                seed=3)
    for split in ("train", "val"):
        name = f"CLEVR_v1.0/scenes/CLEVR_{split}_scenes.json"
        assert (plain / name).read_bytes() == (raw / name).read_bytes()
    train = json.loads((raw / "CLEVR_v1.0/scenes/CLEVR_train_scenes.json").read_text())["scenes"]
    assert [s["objects"] for s in scenes[:60]] != [s["objects"] for s in train]
    with pytest.raises(FileExistsError):
        make_synthetic_vqa.generate_scenes(raw, 5, image_size=128, seed=3)


def test_targets_mark_the_cell_of_each_object_centre(raw):
    scenes = json.loads((raw / make_synthetic_vqa.PRETRAIN_DIR / "scenes.json").read_text())["scenes"][:20]
    targets = train_scene_trunk.scene_targets(scenes, 128, 8)
    colours = train_scene_trunk.GROUPS.index(("color",))
    for row, scene in enumerate(scenes):
        expected = torch.full((8, 8), -1)
        for obj in scene["objects"]:
            x, y = obj["pixel_coords"][:2]
            expected[int(y) // 16, int(x) // 16] = list(make_synthetic_vqa.COLORS).index(obj["color"])
        assert torch.equal(targets[row, colours], expected)


def test_trained_trunk_features_carry_colour_and_shape(raw, trunk):
    random_dir = extract(raw, raw.parent / "random", "--model", "resnet18", "--model_stage", "2", "--random_init")
    trained_dir = extract(raw, raw.parent / "trained", "--model", "resnet18", "--model_stage", "2",
                          "--weights", str(trunk))
    scenes = raw / "CLEVR_v1.0" / "scenes"
    random_probe = feature_probe.run_probe("clevr", random_dir, scenes)["features"]
    trained = feature_probe.run_probe("clevr", trained_dir, scenes)
    probe = trained["features"]
    val_objects = sum(len(s["objects"]) for s in json.loads((scenes / "CLEVR_val_scenes.json").read_text())["scenes"])
    assert trained["objects"]["val"] == val_objects
    # majority class recomputed from the files
    train_colours = [o["color"] for s in json.loads((scenes / "CLEVR_train_scenes.json").read_text())["scenes"]
                     for o in s["objects"]]
    top = max(set(train_colours), key=train_colours.count)
    val_colours = [o["color"] for s in json.loads((scenes / "CLEVR_val_scenes.json").read_text())["scenes"]
                   for o in s["objects"]]
    assert probe["color"]["majority"] == pytest.approx(100 * val_colours.count(top) / len(val_colours), abs=0.01)
    assert probe["color"]["probe"] > probe["color"]["majority"] + 50, probe
    assert probe["shape"]["probe"] > probe["shape"]["majority"] + 10, probe
    # Random filters pass on some colour at layer2 (~74% here); the trained ones nearly all of it. Shape needs
    # more training than this test affords (the demo's trunk: ~97% against 33%, in results/demo-vqa/results.md).
    assert probe["color"]["probe"] > random_probe["color"]["probe"] + 12, (probe, random_probe)


def test_extraction_refuses_a_stage_the_trunk_was_not_trained_through(raw, trunk, tmp_path, capfd):
    code = extract_image_features_clevr.main(["--path", str(raw / "CLEVR_v1.0"), "--out", str(tmp_path),
                                              "--model", "resnet18", "--model_stage", "3", "--weights", str(trunk),
                                              "--image_size", str(SIZE), "--device", "cpu"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "trained through layer2 only" in err[0], err
    assert not any(tmp_path.iterdir())


def test_trunk_file_is_kept_and_bad_settings_are_one_line(raw, trunk, tmp_path, capfd):
    before = trunk.read_bytes()
    code = train_scene_trunk.main(["--scenes", str(raw / make_synthetic_vqa.PRETRAIN_DIR), "--out", str(trunk),
                                   "--device", "cpu"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "exists" in err[0]
    assert trunk.read_bytes() == before
    for flags, expect in ((["--epochs", "0"], "--epochs"), (["--lr", "-1"], "--lr"),
                          (["--holdout", "100000"], "--holdout")):
        code = train_scene_trunk.main(["--scenes", str(raw / make_synthetic_vqa.PRETRAIN_DIR), "--out",
                                       str(tmp_path / "t.pth"), "--device", "cpu", *flags])
        err = capfd.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expect in err[0], (flags, err)
    code = train_scene_trunk.main(["--scenes", str(tmp_path), "--out", str(tmp_path / "t.pth"), "--device", "cpu"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "scenes.json" in err[0]
    assert not (tmp_path / "t.pth").exists()
    state = torch.load(trunk, weights_only=True)
    assert json.loads(state["meta_json"])["trained_through_stage"] == 2
    assert np.isfinite(json.loads(state["meta_json"])["losses"]).all()


def test_demo_report_chance_accuracy_and_omega(raw, tmp_path):
    """The demo's report, against counts made here from the generated TDIUC files."""
    from vqa_experiments import vqa_demo
    from vqa_experiments.tdiuc import preprocess_tdiuc
    work = tmp_path / "tdiuc"
    assert preprocess_tdiuc.main(["--path", str(raw / "TDIUC"), "--out", str(work)]) == 0
    val = vqa_demo.ValQuestions(raw, work, "tdiuc")
    annotations = json.loads((raw / "TDIUC/Annotations/mscoco_val2014_annotations.json").read_text())["annotations"]
    train = json.loads((raw / "TDIUC/Annotations/mscoco_train2014_annotations.json").read_text())["annotations"]
    colour_answers = {a["answers"][0]["answer"] for a in train if a["question_family"] == "query_color"}
    colour = [a for a in annotations if a["question_type"] == "color"]
    assert sorted(val.select("color")) == sorted(a["question_id"] for a in colour)
    assert val.chance(val.select("color")) == pytest.approx(100 / len(colour_answers))
    assert val.chance(val.select("absurd")) == pytest.approx(100.0)  # one answer: "doesnotapply"
    red = {name: k for k, name in val.answer_names.items()}["red"]
    predictions = {str(a["question_id"]): red for a in annotations}
    expected = 100 * sum(a["answers"][0]["answer"] == "red" for a in colour) / len(colour)
    assert val.accuracy(predictions, val.select("color")) == pytest.approx(expected)

    types = list(json.loads((work / "LUT_tdiuc.json").read_text())["qtype2idx"])
    runs = {}
    for method, mpt in (("offline", [50.0, 80.0]), ("remind", [50.0, 60.0]), ("finetune", [25.0, 20.0])):
        runs[method] = tmp_path / method
        runs[method].mkdir()
        summary = {"question_types": types, "boundaries": [10, 20], "overall": mpt, "mean_per_type": mpt,
                   "per_type": {t: mpt for t in types}}
        (runs[method] / "summary.json").write_text(json.dumps(summary))
        (runs[method] / "results_boundary_20.json").write_text(json.dumps(predictions))
    report = vqa_demo.dataset_report("tdiuc", raw, work, runs)
    assert report["omega"]["remind"]["mean_per_type"] == pytest.approx((1 + 60 / 80) / 2, abs=1e-4)
    assert report["omega"]["finetune"]["mean_per_type"] == pytest.approx((0.5 + 0.25) / 2, abs=1e-4)
    assert report["looking"]["color"]["remind"] == pytest.approx(expected, abs=0.01)
    assert report["looking"]["color"]["chance"] == pytest.approx(100 / len(colour_answers), abs=0.01)
    assert "| chance |" in vqa_demo.final_table(report) and "| color |" in vqa_demo.looking_table(report)
