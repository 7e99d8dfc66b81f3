"""The project on a GPU against the same computations on the CPU (``gpu`` marker).

The device under test is ``REMIND_TEST_DEVICE`` (default ``cuda``; every test is skipped when CUDA is
absent). With ``REMIND_TEST_DEVICE=cpu`` the same tests compare the CPU against itself: that is how
``benchmarks/gpu_check.sh --smoke`` runs every code path on a machine without a GPU (the comparisons are
then exact). Sizes are tiny: the file takes about a minute on 2 CPU cores.

Tolerances, and why. The device computes the same arithmetic in another order (and cuDNN convolutions
use TF32 by default, ``torch.backends.cudnn.allow_tf32``: 10 mantissa bits), so values that go through F
agree to about 1e-3 relative, not bitwise:

* one replay step: the losses within 2e-3 relative; F's weights after the step within 1e-4 of the weights'
  scale (max |w|). One SGD step moves a weight by lr * (grad + wd * w); a 1e-3 relative error in the
  gradient moves the result by ~1e-6 of the weight scale, so 1e-4 leaves room for TF32 and still catches
  a wrong update (a different replay, crop or lambda moves weights by ~1e-3 of their scale);
* table lookups (decode, buffer gather) and integer bookkeeping (buffer slots, ids, evictions): exact;
* PQ codes: equal, except where the two nearest centroids are equidistant within float32 rounding
  (checked for every disagreement, in float64);
* crops and mixup: 1e-5 absolute on unit-scale maps (float32 bmm; cuBLAS matmul TF32 is off by default);
* whole runs (digits stream, resumes, VQA): accuracy within 1 point (images; 200 test images, so
  2 images) or 5 points (VQA: 60 questions, 3 of them), with dropout off so that the two runs differ
  by rounding only (dropout masks come from another generator on the GPU);
* killed and resumed runs on one device: bit for bit on the CPU (as tests/test_kill.py), within the
  stream tolerance on a GPU (cuDNN may pick non-deterministic backward kernels).

Each test prints the differences it measured (``pytest -rA`` shows them), for the GPU check's log.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.gpu_support import patch_pq_training, write_digits_tree  # noqa: E402
from image_classification_experiments import imagenet_experiment as ie  # noqa: E402
from image_classification_experiments import train_base_init_network_from_scratch as base_init  # noqa: E402
from image_classification_experiments.resnet_models import ROW_ORDER, ResNet18ClassifyAfterLayer4_1  # noqa: E402
from image_classification_experiments.utils_imagenet import class_names_by_position, get_data_loader  # noqa: E402
from remind import REMIND, PRESETS, split_torchvision  # noqa: E402
from remind.augment import mixup, random_resized_crop, sample_mixup_lambda  # noqa: E402
from remind.buffer import ReplayBuffer  # noqa: E402
from remind.pq import PQCodec  # noqa: E402
from test_imagenet_experiment import argv_for  # noqa: E402
from test_vqa import data, trainer_argv  # noqa: E402,F401  (data: the tiny VQA dataset fixture)
from vqa_experiments import vqa_trainer  # noqa: E402

DEVICE = os.environ.get("REMIND_TEST_DEVICE", "cuda")
_CUDA_WANTED = torch.device(DEVICE).type == "cuda"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_CUDA_WANTED and not torch.cuda.is_available(),
                       reason=f"REMIND_TEST_DEVICE={DEVICE} but CUDA is not available "
                              "(REMIND_TEST_DEVICE=cpu runs these on the CPU)"),
]

ON_CPU = not _CUDA_WANTED
STREAM_POINTS = 1.0   # accuracy points, image runs
VQA_POINTS = 5.0      # accuracy points, VQA runs


@pytest.fixture(scope="module", autouse=True)
def setting():
    """The torch k-means stands in for faiss where faiss is missing; one CPU thread on a small machine
    (the tiny convolutions oversubscribe 2 cores), as the project's other tests."""
    patch_pq_training()
    threads = torch.get_num_threads()
    if (os.cpu_count() or 1) <= 4:
        torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vqa_trainer.reporting, "git_commit", lambda: "test")
        mp.setattr(ie.reporting, "git_commit", lambda: "test")
        yield
    torch.set_num_threads(threads)


def report(name: str, **values) -> None:
    print(f"[{DEVICE} vs cpu] {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)


def rel_max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


# ------------------------------------------------------------------ 1. one replay step
SMALL = dict(lr_examples_per_class=20, replays_per_step=6, num_codebooks=8, codebook_size=16)


def _learner(device: str, G, F, centroids, codes, labels):
    learner = REMIND(copy.deepcopy(G), copy.deepcopy(F), PRESETS["digits_demo"], device=device, **SMALL)
    learner.start_from(PQCodec(centroids), tuple(codes.shape[1:]))
    learner.replay_buffer.add_batch(codes, labels, np.arange(len(labels)))
    return learner


def _split_and_stored(seed: int):
    """The paper's split of a random ResNet-18 at 64 px, random codebooks, and 30 stored examples' codes."""
    torch.manual_seed(0)
    G, F = split_torchvision("resnet18", "layer4.0", num_classes=10, image_size=64)
    gen = np.random.default_rng(seed)
    centroids = gen.standard_normal((8, 16, 64)).astype(np.float32)
    codes = torch.from_numpy(gen.integers(0, 16, (30, 2, 2, 8), dtype=np.uint8))
    return G, F, centroids, codes, gen.integers(0, 10, 30)


def test_replay_step_matches_cpu():
    G, F, centroids, codes, labels = _split_and_stored(0)
    dev, cpu = (_learner(d, G, F, centroids, codes, labels) for d in (DEVICE, "cpu"))
    for k in range(3):  # three steps: momentum enters from the second
        new = codes[k]
        loss_dev = dev.replay_step(new, int(labels[k]), 100 + k, insert=True)
        loss_cpu = cpu.replay_step(new, int(labels[k]), 100 + k, insert=True)
        assert torch.isfinite(loss_dev)
        torch.testing.assert_close(loss_dev.cpu(), loss_cpu, rtol=2e-3, atol=1e-6)
    worst = 0.0
    for (name, w_dev), (_, w_cpu) in zip(dev.head.state_dict().items(), cpu.head.state_dict().items()):
        if not w_cpu.is_floating_point():
            assert torch.equal(w_dev.cpu(), w_cpu), name
            continue
        scale = float(w_cpu.abs().max())
        diff = float((w_dev.cpu() - w_cpu).abs().max())
        worst = max(worst, diff / max(scale, 1e-12))
        assert diff <= 1e-4 * scale + 1e-7, (name, diff, scale)
    assert np.array_equal(dev.replay_buffer.ids[:dev.replay_buffer.size], cpu.replay_buffer.ids[:cpu.replay_buffer.size])
    assert dev.rng.bit_generator.state == cpu.rng.bit_generator.state  # the same draws were taken
    report("replay step", loss_dev=float(loss_dev), loss_cpu=float(loss_cpu), worst_weight_diff_over_scale=worst)


# ------------------------------------------------------------------ 2. PQ encoder
def test_torch_pq_encoder_gives_the_cpu_codes():
    gen = np.random.default_rng(1)
    centroids = gen.standard_normal((32, 256, 16)).astype(np.float32)
    maps = torch.from_numpy(gen.standard_normal((16, 512, 7, 7)).astype(np.float32))
    codes_dev = PQCodec(centroids, device=DEVICE).encode_maps(maps.to(DEVICE), "torch").cpu()
    codes_cpu = PQCodec(centroids).encode_maps(maps, "torch")
    assert codes_dev.dtype == torch.uint8 and codes_dev.shape == codes_cpu.shape == (16, 7, 7, 32)
    differ = torch.nonzero(codes_dev != codes_cpu)
    # each disagreement: both centroids at the same distance within float32 rounding of the distance
    vectors = maps.permute(0, 2, 3, 1).reshape(16, 7, 7, 32, 16).double()
    cents = torch.from_numpy(centroids).double()
    for b, y, x, m in differ.tolist():
        sub = vectors[b, y, x, m]
        d_dev = float(((sub - cents[m, int(codes_dev[b, y, x, m])]) ** 2).sum())
        d_cpu = float(((sub - cents[m, int(codes_cpu[b, y, x, m])]) ** 2).sum())
        scale = float((sub ** 2).sum() + (cents[m] ** 2).sum(-1).max())
        assert abs(d_dev - d_cpu) <= 1e-5 * scale, (b, y, x, m, d_dev, d_cpu)
    assert len(differ) <= 1e-3 * codes_cpu.numel()
    report("PQ encode", codes=codes_cpu.numel(), disagreements=len(differ))


# ---------------------------------------------- 3. decode, buffer, crops and mixup
def test_decode_buffer_crops_and_mixup_match_cpu():
    gen = np.random.default_rng(2)
    centroids = gen.standard_normal((8, 16, 64)).astype(np.float32)
    codes = torch.from_numpy(gen.integers(0, 16, (80, 4, 4, 8), dtype=np.uint8))
    labels = gen.integers(0, 5, 80)
    codec_dev, codec_cpu = PQCodec(centroids, device=DEVICE), PQCodec(centroids)
    assert torch.equal(codec_dev.decode_maps(codes).cpu(), codec_cpu.decode_maps(codes))

    buffers, rngs = {}, {}
    for name, device in (("dev", DEVICE), ("cpu", "cpu")):
        buffer = ReplayBuffer((4, 4, 8), num_classes=5, max_size=40, device=device)
        buffer.add_batch(codes[:30], labels[:30], np.arange(30))
        rng = np.random.default_rng(3)
        evicted = [buffer.insert(codes[k], int(labels[k]), k, rng) for k in range(30, 80)]  # full from 40
        buffer.check_invariants()
        buffers[name], rngs[name] = (buffer, evicted), rng
    (dev, ev_dev), (cpu, ev_cpu) = buffers["dev"], buffers["cpu"]
    assert ev_dev == ev_cpu and sum(e is not None for e in ev_cpu) == 40
    assert dev.codes.device.type == torch.device(DEVICE).type
    assert dev.size == cpu.size == 40
    assert torch.equal(dev.codes[:40].cpu(), cpu.codes[:40])
    assert np.array_equal(dev.labels[:40], cpu.labels[:40]) and np.array_equal(dev.ids[:40], cpu.ids[:40])
    slots_dev, slots_cpu = dev.sample(12, rngs["dev"]), cpu.sample(12, rngs["cpu"])
    assert np.array_equal(slots_dev, slots_cpu)
    (c_dev, l_dev), (c_cpu, l_cpu) = dev.gather(slots_dev), cpu.gather(slots_cpu)
    assert torch.equal(c_dev.cpu(), c_cpu) and torch.equal(l_dev.cpu(), l_cpu)

    # crops (from the decoder's channels-last view, as the learner feeds them) and mixup, same draws
    maps_dev = codec_dev.decode_maps(c_dev, contiguous=False)
    maps_cpu = codec_cpu.decode_maps(c_cpu, contiguous=False)
    crop_dev = random_resized_crop(maps_dev, np.random.default_rng(4))
    crop_cpu = random_resized_crop(maps_cpu, np.random.default_rng(4))
    torch.testing.assert_close(crop_dev.cpu(), crop_cpu, rtol=0, atol=1e-5)
    lam = sample_mixup_lambda(np.random.default_rng(5), 0.1)
    mixed_dev, mixed_cpu = mixup(crop_dev[:6], crop_dev[6:], lam), mixup(crop_cpu[:6], crop_cpu[6:], lam)
    torch.testing.assert_close(mixed_dev.cpu(), mixed_cpu, rtol=0, atol=1e-5)
    report("decode/buffer/crops/mixup", crop_max_abs_diff=float((crop_dev.cpu() - crop_cpu).abs().max()),
           mixup_max_abs_diff=float((mixed_dev.cpu() - mixed_cpu).abs().max()))


# ------------------------------------------------- image runs: shared data and base init
@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """40 digits per class, half of them test images: 200 test images at 10 classes (1 point = 2 images)."""
    return write_digits_tree(str(tmp_path_factory.mktemp("gpu_digits") / "digits"), val_fraction=0.5, per_class=40,
                             pixels=32, seed=0)


def base_init_argv(digits: Path, save_dir: Path, device: str) -> list[str]:
    return ["--data", str(digits), "--save_dir", str(save_dir), "--ckpt_file", "net.pth", "--image_size", "32",
            "--base_max_class", "4", "--num_classes", "10", "-b", "16", "-j", "0", "--epochs", "1",
            "--device", device, "--print-freq", "1000"]


@pytest.fixture(scope="module")
def base_cpu(digits, tmp_path_factory) -> Path:
    """One base-init epoch on the CPU: the reference of the base-init test and the stream's checkpoint."""
    save_dir = tmp_path_factory.mktemp("base_cpu")
    assert base_init.main(base_init_argv(digits, save_dir, "cpu")) == 0
    return save_dir


@pytest.fixture(scope="module")
def ckpt(digits, tmp_path_factory) -> Path:
    """The stream's base-init network: random weights, BatchNorm statistics of the base-init images.

    (A network trained for a few steps keeps nearly initial BatchNorm statistics, so G in eval mode blows
    its maps up and the stream diverges: losses of 1e9, where rounding differences would decide every
    prediction. Random convolutions with calibrated statistics give a stable stream, losses about 2.)
    """
    torch.manual_seed(0)
    network = ResNet18ClassifyAfterLayer4_1(num_classes=10)
    norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
    network.train()
    with torch.no_grad():
        for images, _, _ in get_data_loader(str(digits), str(digits), "train", 0, 4, batch_size=40, image_size=64,
                                            num_workers=0):
            network(images)
    for norm in norms:
        norm.momentum = 0.1
    path = tmp_path_factory.mktemp("base_stream") / "base.pth"
    torch.save({"state_dict": network.state_dict(), "arch": "ResNet18ClassifyAfterLayer4_1", "row_order": ROW_ORDER,
                "class_names": class_names_by_position(str(digits), str(digits), 10)}, path)
    return path


def stream_argv(digits: Path, ckpt: Path, save_dir: Path, device: str, *extra: str) -> list[str]:
    return argv_for(digits, ckpt, save_dir, "--device", device, "--checkpoint_every_minutes", "0", *extra)


def final_top1(save_dir: Path) -> float:
    return json.loads((save_dir / "accuracies_min_trained_0_max_trained_10.json").read_text())["seen_classes_top1"][-1]


@pytest.fixture(scope="module")
def stream_cpu(digits, ckpt, tmp_path_factory) -> Path:
    save_dir = tmp_path_factory.mktemp("stream_cpu") / "run"
    assert ie.main(stream_argv(digits, ckpt, save_dir, "cpu")) == 0
    return save_dir


def test_base_init_epoch_on_the_device(digits, base_cpu, tmp_path):
    assert base_init.main(base_init_argv(digits, tmp_path, DEVICE)) == 0
    dev = torch.load(tmp_path / "net.pth", weights_only=True, map_location="cpu")
    cpu = torch.load(base_cpu / "net.pth", weights_only=True, map_location="cpu")
    assert dev["epoch"] == cpu["epoch"] == 1
    worst = 0.0
    for name, w_cpu in cpu["state_dict"].items():
        w_dev = dev["state_dict"][name]
        assert w_dev.device.type == "cpu" and w_dev.dtype == w_cpu.dtype and torch.isfinite(w_dev.float()).all()
        if w_cpu.is_floating_point() and w_cpu.numel():
            worst = max(worst, rel_max_diff(w_dev, w_cpu))
        else:
            assert torch.equal(w_dev, w_cpu), name
    # 5 SGD steps at lr 0.1 with BatchNorm: rounding (TF32 convolutions) grows, but stays far below a
    # different data order or augmentation (which moves weights by tens of percent of their scale)
    assert worst <= (0.0 if ON_CPU else 0.05), worst
    report("base-init epoch", worst_weight_diff_over_scale=worst, best_acc1_dev=dev["best_acc1"],
           best_acc1_cpu=cpu["best_acc1"])


# --------------------------------------------------------- 4. a digits stream on the device
def test_digits_stream_matches_cpu(digits, ckpt, stream_cpu, tmp_path):
    save_dir = tmp_path / "run"
    assert ie.main(stream_argv(digits, ckpt, save_dir, DEVICE)) == 0
    dev, cpu = final_top1(save_dir), final_top1(stream_cpu)
    curve = lambda d: json.loads((d / "accuracies_min_trained_0_max_trained_10.json").read_text())["seen_classes_top1"]  # noqa: E731
    report("digits stream", seen_top1_dev=curve(save_dir), seen_top1_cpu=curve(stream_cpu))
    assert abs(dev - cpu) <= STREAM_POINTS, (dev, cpu)
    assert cpu > 20.0  # the stream learns something (10 classes: chance is 10%)


# -------------------------------------------- 6. checkpoints cross devices (library and run)
def test_checkpoint_written_on_one_device_resumes_on_the_other(tmp_path):
    G, F, centroids, codes, labels = _split_and_stored(6)
    for src, dst in ((DEVICE, "cpu"), ("cpu", DEVICE)):
        a = _learner(src, G, F, centroids, codes, labels)
        for k in range(2):
            a.replay_step(codes[k], int(labels[k]), 200 + k, insert=True)
        path = tmp_path / f"{src}_to_{dst}.pth"
        a.save_checkpoint(path)
        b = REMIND(copy.deepcopy(G), copy.deepcopy(F), PRESETS["digits_demo"], device=dst, **SMALL)
        b.load_checkpoint(path)
        assert b.replay_buffer.codes.device.type == torch.device(dst).type
        assert b.pq.centroids.device.type == torch.device(dst).type
        for (name, wa), (_, wb) in zip(a.head.state_dict().items(), b.head.state_dict().items()):
            assert wb.device.type == torch.device(dst).type and torch.equal(wa.cpu(), wb.cpu()), name
        for state in b.optimizer.state.values():
            assert all(v.device.type == torch.device(dst).type for v in state.values() if torch.is_tensor(v))
        assert torch.equal(a.replay_buffer.codes[:a.replay_buffer.size].cpu(), b.replay_buffer.codes[:b.replay_buffer.size].cpu())
        assert a.rng.bit_generator.state == b.rng.bit_generator.state
        assert np.array_equal(a.class_steps, b.class_steps)
        # and both go on to the same next step
        loss_a = a.replay_step(codes[5], int(labels[5]), 300, insert=True)
        loss_b = b.replay_step(codes[5], int(labels[5]), 300, insert=True)
        torch.testing.assert_close(loss_a.cpu(), loss_b.cpu(), rtol=2e-3, atol=1e-6)
        report(f"checkpoint {src} -> {dst}", loss_a=float(loss_a), loss_b=float(loss_b))


def test_run_resumes_across_devices(digits, ckpt, stream_cpu, tmp_path):
    """The experiment stopped at 6 classes on one device, rerun on the other to the end."""
    results = {}
    for k, (first, then) in enumerate(((DEVICE, "cpu"), ("cpu", DEVICE))):
        save_dir = tmp_path / f"{k}_{first}_then_{then}"
        assert ie.main(stream_argv(digits, ckpt, save_dir, first, "--streaming_max_class", "6")) == 0
        assert (save_dir / "remind_model" / "remind_buffer_6.pth").is_file()
        assert ie.main(stream_argv(digits, ckpt, save_dir, then)) == 0
        results[f"{first}_then_{then}_{k}"] = final_top1(save_dir)
    report("resume across devices", **results, uninterrupted_cpu=final_top1(stream_cpu))
    for value in results.values():
        assert abs(value - final_top1(stream_cpu)) <= STREAM_POINTS


# ---------------------------------------------------------------------- 5. a VQA stream
@pytest.mark.parametrize("dataset", ["clevr", "tdiuc"])
def test_vqa_stream_matches_cpu(data, tmp_path, dataset):  # noqa: F811  (data: test_vqa's fixture)
    no_dropout = {"clevr": ["--set", "mac_dropout=0"],
                  "tdiuc": ["--set", "attention_dropout=false", "--set", "classifier_dropout=false"]}[dataset]
    overall = {}
    for device in (DEVICE, "cpu"):
        out = tmp_path / device
        argv = trainer_argv(data, dataset, "qtype", "stream_with_rehearsal", out, *no_dropout, "--device", device)
        assert vqa_trainer.main(argv) == 0
        overall[device] = json.loads((out / "summary.json").read_text())["overall"]
    report(f"VQA {dataset} stream", overall_dev=overall[DEVICE], overall_cpu=overall["cpu"])
    assert abs(overall[DEVICE][-1] - overall["cpu"][-1]) <= VQA_POINTS


# ------------------------------------------------------- 7. killed on the device, resumed
def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return subprocess.Popen([sys.executable, "-m", "benchmarks.gpu_support",
                             "image_classification_experiments.imagenet_experiment", *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_killed_run_on_the_device_resumes_like_an_uninterrupted_one(digits, ckpt, tmp_path):
    extra = ("--batch_size", "3", "--class_increment", "3")
    reference = tmp_path / "uninterrupted"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses: the same kernels, so (on the CPU) the same bits
    try:
        assert ie.main(stream_argv(digits, ckpt, reference, DEVICE, *extra)) == 0
    finally:
        torch.set_num_threads(threads)
    save_dir = tmp_path / "killed"
    partial = save_dir / "remind_model" / "remind_partial.pth"
    args = argv_for(digits, ckpt, save_dir, "--device", DEVICE, "--checkpoint_every_minutes", "0.002", *extra)
    proc = _start(args)
    deadline, killed = time.monotonic() + 300, False
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.exists():  # a mid-increment state was written: kill at once
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.002)
    out, _ = proc.communicate(timeout=300)
    assert killed and proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{out[-2000:]}"
    resumed = _start(args)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    assert "remind_partial.pth: " in out, out[-3000:]  # it went on from inside an increment
    name = "accuracies_min_trained_0_max_trained_10.json"
    got, want = json.loads((save_dir / name).read_text()), json.loads((reference / name).read_text())
    preds = [torch.load(d / "preds_min_trained_0_max_trained_10.pth", weights_only=True) for d in (save_dir, reference)]
    report("killed and resumed", seen_top1_resumed=got["seen_classes_top1"],
           seen_top1_uninterrupted=want["seen_classes_top1"],
           preds_max_abs_diff=float((preds[0] - preds[1]).abs().max()))
    if ON_CPU:
        assert got == want and torch.equal(preds[0], preds[1])
    else:
        assert abs(got["seen_classes_top1"][-1] - want["seen_classes_top1"][-1]) <= STREAM_POINTS
    assert not partial.exists() and not list(save_dir.rglob("*.tmp"))
