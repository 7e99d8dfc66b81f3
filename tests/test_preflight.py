"""The preflight budget (--dry_run, and the table every real run prints): the checks of a real start,
nothing written, the buffer at its largest computed from the sizes, a full disk refused before compute."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from benchmarks.preflight_tables import imagenet_table, vqa_table
from image_classification_experiments import imagenet_experiment as ie
from image_classification_experiments.make_digits_imagefolder import write_digits
from image_classification_experiments.resnet_models import ROW_ORDER, ResNet18ClassifyAfterLayer4_1
from image_classification_experiments.utils_imagenet import class_names_by_position
from remind import budget

NUM_CLASSES = 10


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("preflight")
    digits = write_digits(str(root / "digits"), per_class=10, pixels=32)  # 8 train, 2 val images per class
    ckpt = root / "base.pth"
    torch.save({"state_dict": ResNet18ClassifyAfterLayer4_1(num_classes=NUM_CLASSES).state_dict(),
                "row_order": ROW_ORDER, "class_names": class_names_by_position(str(digits), str(digits), NUM_CLASSES)},
               ckpt)
    return digits, ckpt


def argv(digits: Path, ckpt: Path, save_dir: Path, *extra: str) -> list[str]:
    return ["--images_dir", str(digits), "--label_dir", str(digits), "--classifier_ckpt", str(ckpt),
            "--num_classes", str(NUM_CLASSES), "--base_init_classes", "4", "--class_increment", "2",
            "--image_size", "64", "--num_workers", "0", "--device", "cpu", "--codebook_size", "16",
            "--save_dir", str(save_dir), *extra]


@pytest.mark.parametrize("limit, stored", [(50, 50), (None, 80)])
def test_dry_run_prints_the_budget_and_writes_nothing(setup, tmp_path, capsys, limit, stored):
    digits, ckpt = setup
    before = snapshot(digits.parent)
    extra = ["--dry_run"] + ([] if limit is None else ["--max_buffer_size", str(limit)])
    assert ie.main(argv(digits, ckpt, tmp_path / "new" / "run", *extra)) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "new").exists() and snapshot(digits.parent) == before
    # min(--max_buffer_size, training images) x H x W x M bytes of codes, then labels (2), ids (4), slots (4)
    code_bytes = 2 * 2 * 32
    line = next(line for line in out.splitlines() if "buffer at its largest" in line)
    assert f"{stored:,} examples x {code_bytes:,} B of codes (2x2 x 32 codebooks) = " \
           f"{budget.human(stored * code_bytes)}" in line
    assert line.endswith(f"= {budget.human(stored * (code_bytes + 10))}")
    assert "training examples" in out and re.search(r"training examples\s+80\b", out)
    assert re.search(r"evaluations\s+4 \(base init to 4 classes, then 3 increments\)", out) and "free disk under" in out
    assert "dry run: every check passed; nothing was written" in out


def test_dry_run_makes_the_same_checks_as_a_real_start(setup, tmp_path, capfd):
    digits, ckpt = setup
    capfd.readouterr()
    assert ie.main(argv(digits, ckpt, tmp_path / "run", "--dry_run", "--streaming_max_class", "12")) == 2
    err = capfd.readouterr().err
    assert err.startswith("error:") and "--num_classes" in err and not (tmp_path / "run").exists()


def test_run_that_would_not_fit_on_the_disk_is_refused(setup, tmp_path, capfd, monkeypatch):
    digits, ckpt = setup
    monkeypatch.setattr(budget, "free_bytes", lambda path: 10_000_000)
    capfd.readouterr()
    assert ie.main(argv(digits, ckpt, tmp_path / "run")) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "only 10 MB is free" in err and "--skip_disk_check" in err
    assert not (tmp_path / "run").exists()
    assert ie.main(argv(digits, ckpt, tmp_path / "run", "--skip_disk_check", "--streaming_max_class", "4")) == 0


def test_papers_imagenet_budget():
    table = dict(imagenet_table().rows)
    # 959,665 x 1,568 B = 1,504,754,720 B of codes; labels (int16), ids and class slots (int32) add 10 B each
    assert table["buffer at its largest"] == ("959,665 examples x 1,568 B of codes (7x7 x 32 codebooks) = 1,505 MB, "
                                              "+ labels, ids, class slots 10 MB = 1,514 MB")
    assert table["codebooks"].endswith("524.3 kB")
    assert table["training examples"] == "1,281,167" and table["evaluations"].startswith("10 ")


def test_real_vqa_budgets_refer_to_codes_held_once():
    clevr = dict(vqa_table("CLEVR").rows)
    assert clevr["buffer at its largest"].startswith("699,989 questions x 10 B = 7 MB, referring to 85,000 images'")
    tdiuc = dict(vqa_table("TDIUC").rows)
    assert "7x7x32 = 1,568 B each" in tdiuc["buffer at its largest"]
