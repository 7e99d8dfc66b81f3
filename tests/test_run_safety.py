"""Nothing lost, nothing mixed: one run per folder, resumes checked against every setting of the method,
finished base-init networks never retrained over, path errors as one line (tiny digits, CPU)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from image_classification_experiments import imagenet_experiment as ie
from image_classification_experiments.make_digits_imagefolder import write_digits
from image_classification_experiments.resnet_models import ROW_ORDER, ResNet18ClassifyAfterLayer4_1
from image_classification_experiments.utils_imagenet import class_names_by_position
from remind.lock import FolderLock

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("safety")
    digits = write_digits(str(root / "digits"), per_class=10, pixels=32)
    ckpt = root / "base.pth"
    torch.save({"state_dict": ResNet18ClassifyAfterLayer4_1(num_classes=10).state_dict(), "row_order": ROW_ORDER,
                "class_names": class_names_by_position(str(digits), str(digits), 10)}, ckpt)
    return digits, ckpt


def argv(digits: Path, ckpt: Path, save_dir: Path, *extra: str) -> list[str]:
    return ["--images_dir", str(digits), "--label_dir", str(digits), "--classifier_ckpt", str(ckpt),
            "--num_classes", "10", "--base_init_classes", "4", "--class_increment", "2", "--image_size", "64",
            "--num_workers", "0", "--device", "cpu", "--codebook_size", "16", "--rehearsal_samples", "5",
            "--lr_examples_per_class", "auto", "--save_dir", str(save_dir), *extra]


def one_error_line(capfd) -> str:
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


def test_second_run_into_a_folder_in_use_exits_at_once(setup, tmp_path, capfd):
    digits, ckpt = setup
    save_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from remind.lock import FolderLock; "
                               f"FolderLock({str(save_dir)!r}).__enter__(); print('locked', flush=True); "
                               "time.sleep(120)"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capfd.readouterr()
        assert ie.main(argv(digits, ckpt, save_dir, "--streaming_max_class", "4")) == 2
        line = one_error_line(capfd)
        assert str(save_dir) in line and f"process {holder.pid}" in line
        assert list(save_dir.iterdir()) == []  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died without unlocking: its lock went with it
    assert ie.main(argv(digits, ckpt, save_dir, "--streaming_max_class", "4")) == 0
    with FolderLock(save_dir):  # and this run released it
        pass


def test_resume_with_other_method_settings_is_refused_or_recorded(setup, tmp_path, capfd):
    digits, ckpt = setup
    save_dir = tmp_path / "run"
    assert ie.main(argv(digits, ckpt, save_dir, "--streaming_max_class", "4")) == 0
    before = sorted((p.name, p.stat().st_mtime_ns) for p in save_dir.rglob("*"))
    for flags, needle in ((["--rehearsal_samples", "7"], "replays_per_step: saved 5, now 7"),
                          (["--use_mixup"], "use_mixup: saved False, now True"),
                          (["--seed", "3"], "seed: saved 0, now 3")):
        capfd.readouterr()
        changed = argv(digits, ckpt, save_dir, "--streaming_max_class", "6") + flags
        assert ie.main(changed) == 2
        assert needle in one_error_line(capfd)
        assert sorted((p.name, p.stat().st_mtime_ns) for p in save_dir.rglob("*")) == before
    capfd.readouterr()
    assert ie.main(argv(digits, ckpt, save_dir, "--streaming_max_class", "6", "--rehearsal_samples", "7",
                        "--allow_changed_settings")) == 0
    assert "replays_per_step: saved 5, now 7" in (save_dir / "settings_changes.txt").read_text()
    assert (save_dir / "accuracies_min_trained_0_max_trained_6.json").is_file()


def test_results_folder_that_is_a_file_is_one_line(setup, tmp_path, capfd):
    digits, ckpt = setup
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    capfd.readouterr()
    assert ie.main(argv(digits, ckpt, blocker / "run", "--streaming_max_class", "4")) == 2
    assert str(blocker) in one_error_line(capfd) and blocker.read_text() == "keep"


@pytest.mark.parametrize("script, variable", [("train_base_init_network.sh", "NPROC"),
                                              ("run_imagenet_experiment.sh", "NUM_CLASSES"),
                                              ("run_core50_experiment.sh", "IMAGE_SIZE")])
def test_shell_scripts_refuse_non_numbers_before_any_use(tmp_path, script, variable):
    marker = tmp_path / "ran"
    env = {**os.environ, variable: f"PATH[$(touch {marker})]", "LOG_DIR": str(tmp_path / "logs"),
           "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(REPO / "image_classification_experiments" / script)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"error: {variable}=" in result.stderr
    assert not marker.exists() and not (tmp_path / "logs").exists()


def test_core50_lists_are_not_glob_expanded(tmp_path):
    (tmp_path / "0").write_text("")  # a glob '?' would match this file name
    env = {**os.environ, "SEEDS": "?", "LOG_DIR": str(tmp_path / "logs"), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(REPO / "image_classification_experiments" / "run_core50_experiment.sh")],
                            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and "SEEDS holds ?" in result.stderr


@pytest.mark.parametrize("device", ["tpu", "cuda:0"])
def test_unusable_device_is_one_line_before_anything_is_written(setup, tmp_path, capfd, device):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    digits, ckpt = setup
    args = argv(digits, ckpt, tmp_path / "run")
    args[args.index("--device") + 1] = device
    capfd.readouterr()
    assert ie.main(args) == 2
    assert "--device" in one_error_line(capfd) and not (tmp_path / "run").exists()


def test_unreadable_image_found_up_front_or_named_during_the_run(setup, tmp_path, capfd):
    import shutil

    digits, ckpt = setup
    copy = tmp_path / "digits"
    shutil.copytree(digits, copy)
    import numpy as np
    from image_classification_experiments.utils_imagenet import _scan_folder, load_labels
    samples, _ = _scan_folder(str(copy / "val"))
    broken = Path(samples[int(np.nonzero(load_labels(str(copy), str(copy), "val") < 4)[0][0])][0])  # a base class
    broken.write_bytes(b"")  # a zero-byte image
    capfd.readouterr()
    assert ie.main(argv(copy, ckpt, tmp_path / "run", "--check_images")) == 2
    line = one_error_line(capfd)
    assert "1 images cannot be read" in line and str(broken) in line and not (tmp_path / "run").exists()
    assert ie.main(argv(copy, ckpt, tmp_path / "run2", "--streaming_max_class", "4")) == 2
    err = capfd.readouterr().err  # progress bars, then the one error line; no traceback
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"error: image {broken} cannot be read")


def test_unreadable_image_in_a_loader_worker_is_still_one_line(setup, tmp_path, capfd):
    import shutil

    import numpy as np

    from image_classification_experiments.utils_imagenet import _scan_folder, load_labels
    digits, ckpt = setup
    copy = tmp_path / "digits"
    shutil.copytree(digits, copy)
    samples, _ = _scan_folder(str(copy / "train"))
    broken = Path(samples[int(np.nonzero(load_labels(str(copy), str(copy), "train") < 4)[0][0])][0])
    broken.write_bytes(b"not a png")
    args = argv(copy, ckpt, tmp_path / "run", "--streaming_max_class", "4")
    args[args.index("--num_workers") + 1] = "1"
    capfd.readouterr()
    assert ie.main(args) == 2
    last = capfd.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: image {broken} cannot be read") and "Traceback" not in last
