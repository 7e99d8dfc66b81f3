#!/usr/bin/env python
"""One GPU check of the whole project, prepared to run blind the first time a GPU is lent (see gpu_check.sh).

Sections, each in its own process with a time cap (a failed or timed-out section is recorded with its
error and the others still run; the exit code is 1 if any failed):

* ``tests``: ``pytest tests/test_gpu.py`` on the device (REMIND_TEST_DEVICE), log in OUT/pytest_gpu.log;
* ``bench``: ``benchmarks/bench_stream.py --full`` (ours vs the reference loop, ms per streamed example by
  phase; PQ encode; evaluation; VQA replay batches);
* ``profile``: torch.profiler over steady-state replay steps with the paper's settings: top kernels by
  device time, device-busy vs wall vs CPU-side time per step;
* ``image_stream``: synthetic JPEGs through the real loader (utils_imagenet, several workers), G, PQ and
  the replay step with the paper's settings into a 959,665-entry buffer (pre-filled full), then evaluation
  throughput; projected hours for ImageNet (1.15M streamed examples, 10 evaluations of 50,000 images);
* ``vqa``: the VQA replay step with the real CLEVR_streaming (S-MAC, 14x14x1024) and TDIUC_streaming
  (UpDown, 7x7x2048) configurations; projected hours for CLEVR's 700k and TDIUC's 1.1M questions.

Codebooks in the timing sections are random (timing does not depend on them); where a section trains
codebooks and faiss is missing, a torch k-means stands in (benchmarks/gpu_support.py) and the output says so.

``--smoke`` runs the same code at tiny sizes on the CPU (1-2 minutes on 2 cores), for CI. Writes
``gpu_check.json`` and ``gpu_check.md`` to ``$OUT`` (else results/gpu_check/).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_stream import fill_buffer, random_centroids, sync  # noqa: E402  (random codes, CUDA sync)

# (section, time cap in seconds: full, smoke); the full run's caps sum to 430 s (a child is killed 15 s past its cap)
CAPS = {"tests": (120, 150), "bench": (90, 90), "profile": (40, 60), "image_stream": (120, 90), "vqa": (60, 60)}
SECTIONS = tuple(CAPS)
IMAGENET_STREAM = 1_151_000   # ImageNet-2012 training images of classes 100-999 (the stream after base init)
IMAGENET_VAL, EVALUATIONS = 50_000, 10
IMAGENET_BUFFER = 959_665
VQA_QUESTIONS = {"CLEVR": 699_989, "TDIUC": 1_115_299}
T0 = time.time()


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')} +{time.time() - T0:6.1f}s] {message}", flush=True)


class Partial:
    """A section's result dict, written to its result file after every update (a timed-out child keeps
    what it had measured)."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def update(self, **values) -> None:
        self.data.update(values)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)


# ============================================================================ environment
def environment() -> dict:
    import numpy as np
    import torch
    import torchvision

    from benchmarks.gpu_support import faiss_version
    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "numpy": np.__version__, "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "faiss": faiss_version(), "faiss_present": faiss_version() is not None, "cpu_count": os.cpu_count(),
           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
           "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device_name=torch.cuda.get_device_name(0), device_memory_gib=round(props.total_memory / 2**30, 1),
                   device_capability=f"{props.major}.{props.minor}")
    else:
        env["device_name"] = f"cpu ({platform.processor() or platform.machine()})"
    return env


# ================================================================================ helpers


def paper_model(device: str, max_buffer: int, smoke: bool):
    """REMINDModel with the paper's ImageNet settings (random ResNet-18 split at layer4.0, 32 x 256 PQ, 50
    replays, mixup 0.1, crops, 1000 classes), random codebooks; smoke: 10 classes, 8 replays."""
    from image_classification_experiments.REMINDModel import REMINDModel
    from remind.pq import PQCodec
    num_classes = 100 if smoke else 1000
    model = REMINDModel(num_classes, classifier_ckpt=None, device=device, replays_per_step=8 if smoke else 50,
                        use_mixup=True, mixup_alpha=0.1, use_random_resize_crops=True, max_buffer_size=max_buffer,
                        lr_examples_per_class=1300, seed=0)
    model.start_from(PQCodec(random_centroids(0, 512), device=device), (7, 7, 32))
    return model


# ================================================================================ sections
def child_env(**extra: str) -> dict:
    """The environment of a child process: this checkout first on PYTHONPATH (it is not pip-installed there)."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **extra}


def run_capped(cmd: list[str], cap: float, env: dict, stdout=None) -> int | None:
    """Run ``cmd`` in its own process group from the checkout; kill the whole group after ``cap`` seconds
    (returns None then), else return its exit code."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.STDOUT if stdout else None,
                            start_new_session=True)
    try:
        return proc.wait(timeout=cap)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def section_tests(args, out_dir: Path, cap: float) -> dict:
    junit = Path(tempfile.mkdtemp(prefix="gpu_check_junit_", dir=args.workdir)) / "junit.xml"
    env = child_env(REMIND_TEST_DEVICE=args.device)
    logfile = out_dir / "pytest_gpu.log"
    cmd = [sys.executable, "-m", "pytest", "tests/test_gpu.py", "-rA", "-p", "no:cacheprovider",
           f"--junitxml={junit}"]
    start = time.perf_counter()
    with open(logfile, "w") as handle:
        rc = run_capped(cmd, cap, env, stdout=handle)
    if rc is None:
        raise TimeoutError(f"pytest ran past its {cap:.0f} s cap (log: {logfile.name})")
    result = {"returncode": rc, "seconds": time.perf_counter() - start, "log": logfile.name,
              "device": args.device}
    if junit.is_file():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        result.update(counts)
        result["failed_tests"] = [case.get("name") for case in suite.iter("testcase")
                                  if case.find("failure") is not None or case.find("error") is not None]
    # the tests print the differences they measured: keep those lines
    result["measured"] = [line.strip() for line in logfile.read_text(errors="replace").splitlines()
                          if line.startswith(f"[{args.device} vs cpu]")][:40]
    if result.get("tests") and result.get("skipped") == result.get("tests"):
        raise RuntimeError(f"every test was skipped (REMIND_TEST_DEVICE={args.device}: is CUDA visible to torch?)")
    if rc != 0:
        raise RuntimeError(f"pytest exit code {rc}: {result.get('failures')} failed, {result.get('errors')} errors "
                           f"({result.get('failed_tests')}); see {logfile.name}")
    return result


def section_bench(args, out_dir: Path, cap: float) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="gpu_check_bench_", dir=args.workdir))
    out_json = workdir / "bench.json"
    if args.smoke:
        flags = ["--steps", "4", "--batch-size", "2", "--stream-buffer", "300", "--sections", "encode", "eval",
                 "stream", "vqa_batch"]
    else:
        # real sizes (a 959,665-entry buffer while streaming, G batches of 128), one round of 128 examples per
        # path and measurement instead of two, to stay inside the cap
        flags = ["--full", "--steps", "128", "--sections", "encode", "eval", "stream", "vqa_batch"]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_stream.py"), "--device", args.device, "--json",
           str(out_json), "--workdir", str(workdir), *flags]
    log("bench: " + " ".join(cmd[1:]))
    rc = run_capped(cmd, cap, child_env())
    if rc is None:
        raise TimeoutError(f"bench_stream.py ran past its {cap:.0f} s cap")
    if rc != 0 or not out_json.is_file():
        raise RuntimeError(f"bench_stream.py exit code {rc}")
    full = json.loads(out_json.read_text())
    stream = full.get("stream", {})
    result = {"command": "bench_stream.py " + " ".join(flags + ["--device", args.device]),
              "sections_skipped_without_faiss": full.get("sections_skipped_without_faiss", []),
              "total_runtime_s": full.get("total_runtime_s")}
    if stream:
        result["phases_ms_median"] = {phase: {w: round(v["median"], 3) for w, v in row.items()}
                                      for phase, row in stream["phases_ms"].items()}
        result["end_to_end_ms_median"] = {w: round(v["median"], 3) for w, v in stream["end_to_end_ms"].items()}
        result["speedup_end_to_end"] = stream.get("speedup_end_to_end")
        result["buffer_entries_while_streaming"] = stream.get("buffer_entries_while_streaming")
    for key in ("encode_ms", "eval", "vqa_batch"):
        if key in full:
            result[key] = full[key]
    return result


def steady_steps(model, steps: int, seed: int = 0):
    """``steps`` replay steps on random new codes with insertion (what streaming does after G and encode)."""
    import numpy as np
    import torch
    gen = np.random.default_rng(seed)
    model.classifier_F.train()
    codes = torch.randint(0, 256, (steps, 7, 7, 32), dtype=torch.uint8, device=model.device)
    labels = gen.integers(0, model.num_classes, steps)
    for k in range(steps):
        model.replay_step(codes[k], int(labels[k]), 50_000_000 + k + seed * steps, insert=True)


def section_profile(args, partial: Partial, deadline: float) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    device = args.device
    cuda = torch.device(device).type == "cuda"
    buffer_entries = 2_000 if args.smoke else max(1000, int(100_000 * args.scale))
    model = paper_model(device, buffer_entries, args.smoke)
    fill_buffer(model.replay_buffer, buffer_entries, seed=0)
    warm, steps = (2, 3) if args.smoke else (20, 10)
    steady_steps(model, warm, seed=1)
    sync(device)
    start = time.perf_counter()
    steady_steps(model, steps, seed=2)
    sync(device)
    wall = (time.perf_counter() - start) / steps
    partial.update(buffer_entries=buffer_entries, steps=steps, wall_ms_per_step_unprofiled=wall * 1e3)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        steady_steps(model, steps, seed=3)
        sync(device)
    events = prof.key_averages()

    def dev_self(e):
        for name in ("self_device_time_total", "self_cuda_time_total"):
            if hasattr(e, name):
                return float(getattr(e, name))
        return 0.0

    def dev_total(e):
        for name in ("device_time_total", "cuda_time_total"):
            if hasattr(e, name):
                return float(getattr(e, name))
        return 0.0

    key = dev_self if cuda else (lambda e: float(e.self_cpu_time_total))
    top = sorted(events, key=key, reverse=True)[:15]
    result = {"steps_profiled": steps,
              "top_by_" + ("device" if cuda else "cpu") + "_self_time": [
                  {"name": e.key[:80], "calls": int(e.count), "self_ms_per_step": key(e) / 1e3 / steps,
                   "device_total_ms_per_step": dev_total(e) / 1e3 / steps} for e in top],
              "cpu_self_ms_per_step": sum(float(e.self_cpu_time_total) for e in events) / 1e3 / steps,
              "wall_ms_per_step_unprofiled": wall * 1e3}
    if cuda:
        busy = sum(dev_self(e) for e in events) / 1e3 / steps
        result.update(device_busy_ms_per_step=busy, device_busy_fraction=busy / (wall * 1e3))
    partial.update(**result)
    return partial.data


class StopStream(Exception):
    pass


def _write_jpeg(job):
    import numpy as np
    from PIL import Image
    path, seed = job
    gen = np.random.default_rng(seed)
    # smooth content plus grain: about the size of an ImageNet JPEG (500 x 375, ~100 KB at quality 90)
    small = Image.fromarray(gen.integers(0, 256, (24, 32, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
    pixels = np.asarray(small, dtype=np.int16) + gen.integers(-12, 13, (375, 500, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return Path(path).stat().st_size


def write_jpeg_tree(root: Path, classes: int, train_per_class: int, val_per_class: int, workers: int) -> dict:
    from multiprocessing import Pool

    from image_classification_experiments.make_numpy_imagenet_label_files import make_label_files
    jobs = []
    for split, per in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs += [(str(folder / f"{c}_{k}.JPEG"), (split == "val") * 10**7 + c * 1000 + k) for k in range(per)]
    start = time.perf_counter()
    with Pool(max(1, workers)) as pool:
        sizes = pool.map(_write_jpeg, jobs, chunksize=16)
    (root / "class_order.txt").write_text("\n".join(f"n{c:08d}" for c in range(classes)) + "\n")
    make_label_files(str(root), str(root / "class_order.txt"), str(root / "imagenet_indices"))
    return {"images": len(jobs), "mean_jpeg_bytes": sum(sizes) / len(sizes), "write_s": time.perf_counter() - start}


def section_image_stream(args, partial: Partial, deadline: float) -> dict:
    device = args.device
    workers = 2 if args.smoke else max(2, min(12, (os.cpu_count() or 4) - 2))
    classes, train_per, val_per = (100, 1, 1) if args.smoke else (max(10, int(1000 * args.scale)), 3, 1)
    capacity = 400 if args.smoke else max(1000, int(IMAGENET_BUFFER * args.scale))
    batch = 16 if args.smoke else 128
    root = Path(tempfile.mkdtemp(prefix="gpu_check_jpeg_"))
    try:
        return _image_stream(args, partial, deadline, root, device, workers, classes, train_per, val_per, capacity,
                             batch)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _image_stream(args, partial, deadline, root, device, workers, classes, train_per, val_per, capacity, batch):
    import torch

    from image_classification_experiments.utils_imagenet import get_data_loader
    partial.update(jpeg_tree=write_jpeg_tree(root, classes, train_per, val_per, os.cpu_count() or 2),
                   loader_workers=workers, batch_size=batch, image_size=224, num_classes=classes,
                   buffer_capacity=capacity, codebooks="random (timing does not depend on them)")
    log(f"image_stream: {partial.data['jpeg_tree']['images']} JPEGs written")
    model = paper_model(device, capacity, args.smoke)
    started = time.perf_counter()
    fill_buffer(model.replay_buffer, capacity, seed=0)
    sync(device)
    fill_s = time.perf_counter() - started
    partial.update(buffer_prefilled=model.replay_buffer.size, buffer_fill_s=fill_s,
                   buffer_note="pre-filled to capacity with random codes: every streamed example evicts one")
    log(f"image_stream: buffer pre-filled with {model.replay_buffer.size:,} entries in {fill_s:.1f} s")
    loader = get_data_loader(str(root), str(root), "train", 0, classes, batch_size=batch, image_size=224,
                             num_workers=workers)
    marks = []
    stream_budget = deadline - time.time() - (10 if args.smoke else 35)  # leave time for the evaluation

    def between(batches, total, count):
        sync(device)
        marks.append((time.perf_counter(), count))
        if time.time() - began > stream_budget:
            raise StopStream

    began = time.time()
    start = time.perf_counter()
    try:
        model.fit_incremental_batch(loader, verbose=False, between_batches=between)
        stopped = False
    except StopStream:
        stopped = True
    first_batch_s = marks[0][0] - start if marks else None
    if len(marks) >= 2:
        steady = (marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0])
    else:
        steady = marks[-1][1] / (marks[-1][0] - start) if marks else None
    streamed = marks[-1][1] if marks else 0
    hours_stream = IMAGENET_STREAM / steady / 3600 if steady else None
    partial.update(streamed_examples=streamed, stopped_at_time_cap=stopped, first_batch_s=first_batch_s,
                   examples_per_s_steady=steady, examples_per_s_overall=streamed / (marks[-1][0] - start)
                   if marks else None, projected_stream_hours_imagenet=hours_stream)
    # the run's own compute record (remind/compute.py): where the stream's seconds went, device synchronised
    partial.update(compute_record=model.compute.snapshot())
    log(f"image_stream: {streamed} examples streamed, {steady or 0:.1f} examples/s after the first batch")

    # evaluation: from the images (G, encode, decode, F) and from stored codes (decode, F)
    val = get_data_loader(str(root), str(root), "val", 0, classes, batch_size=256 if not args.smoke else 32,
                          image_size=224, num_workers=workers)
    sync(device)
    start = time.perf_counter()
    _, _, labels = model.predict(val)
    sync(device)
    from_images = len(labels) / (time.perf_counter() - start)
    ids, codes = model.encode_images(val)
    codes = codes.to(device)
    model.predict_codes(codes, 256)  # warm-up
    sync(device)
    start = time.perf_counter()
    repeats = 3
    for _ in range(repeats):
        model.predict_codes(codes, 256)
    sync(device)
    from_codes = repeats * len(codes) / (time.perf_counter() - start)
    eval_codes_h = (IMAGENET_VAL / from_images + EVALUATIONS * IMAGENET_VAL / from_codes) / 3600
    eval_images_h = EVALUATIONS * IMAGENET_VAL / from_images / 3600
    partial.update(eval_images=len(labels), eval_images_per_s_from_images=from_images,
                   eval_images_per_s_from_codes=from_codes,
                   projected_eval_hours_stored_codes=eval_codes_h, projected_eval_hours_from_images=eval_images_h,
                   projected_total_hours_imagenet=(hours_stream + eval_codes_h) if hours_stream else None,
                   projection_note=f"{IMAGENET_STREAM:,} streamed examples at the steady rate, plus "
                                   f"{EVALUATIONS} evaluations of {IMAGENET_VAL:,} images (the default: test images "
                                   "encoded once, then decode + F per evaluation; --eval_from_images: G every time); "
                                   "base init, checkpoints and a cold disk not included",
                   peak_device_memory_gib=(torch.cuda.max_memory_allocated() / 2**30) if device.startswith("cuda")
                   else None)
    return partial.data


def section_vqa(args, partial: Partial, deadline: float) -> dict:
    import numpy as np
    import torch

    from remind.buffer import ReplayBuffer, SharedCodes
    from remind.learner import StreamingLearner
    from remind.pq import PQCodec
    from vqa_experiments.configs import get_config
    from vqa_experiments.vqa_models import build_model

    device = args.device
    # (config, map (C, H, W), vocabulary, longest question): CLEVR's ~90 words, TDIUC's ~10k (estimates)
    setups = {"CLEVR": ("CLEVR_streaming", (1024, 14, 14), 90, 45),
              "TDIUC": ("TDIUC_streaming", (2048, 7, 7), 10_000, 25)}
    for index, (name, (config_name, (channels, height, width), ntoken, longest)) in enumerate(setups.items()):
        config = get_config(config_name)
        if args.smoke:  # the same code on small models and maps
            config = dataclasses.replace(config, mac_dim=32, mac_max_step=2, emb_dim=16, lstm_out=32, num_hidden=32,
                                         attention_hidden=32, num_classes=min(config.num_classes, 50))
            channels, height, width = channels // 8, 4, 4
        gen = np.random.default_rng(index)
        torch.manual_seed(index)
        images, questions = (50, 400) if args.smoke else (max(20, int(2000 * args.scale)), max(200, int(20000 * args.scale)))
        net = build_model(config, ntoken, channels).to(device)
        optimizer = torch.optim.Adamax([p for p in net.parameters() if p.requires_grad], lr=config.lr)
        codec = PQCodec(random_centroids(index, channels), device=device)
        codes = torch.randint(0, 256, (images, height, width, 32), dtype=torch.uint8, device=device)
        image_of = torch.from_numpy(gen.integers(0, images, questions)).to(device)
        qlen = torch.from_numpy(gen.integers(4, longest + 1, questions))  # on the CPU, as the trainer (packing)
        tokens = torch.full((questions, longest), ntoken, dtype=torch.long)
        for q in range(questions):
            tokens[q, :qlen[q]] = torch.from_numpy(gen.integers(0, ntoken, int(qlen[q])))
        tokens = tokens.to(device)
        answers = gen.integers(0, config.num_classes, questions)
        buffer = ReplayBuffer((height, width, 32), config.num_classes, device=device,
                              shared_codes=SharedCodes(codes, image_of))
        learner = StreamingLearner(net, optimizer, codec, buffer, np.random.default_rng(index),
                                   replays_per_step=config.replays_per_step, insert_first=True)
        stored = questions // 2
        learner.store(None, answers[:stored], np.arange(stored))
        criterion = torch.nn.CrossEntropyLoss()

        def loss_fn(batch):  # as VQAModel.replay_loss: the batch's questions, normalised maps, answers
            net.train()
            rows = torch.from_numpy(batch.ids)
            maps = batch.maps / (batch.maps.norm(dim=1, keepdim=True) + 1e-8) if config.imnorm else batch.maps
            return criterion(net(tokens.index_select(0, rows.to(device)), maps, qlen.index_select(0, rows)),
                             batch.labels)

        def step(k):
            row = stored + k
            learner.step(codes[int(image_of[row])], int(answers[row]), row, loss_fn)

        share = (deadline - time.time() - 3) / (len(setups) - index)
        section_end = time.time() + share
        warm = 2 if args.smoke else 5
        for k in range(warm):  # fewer when a step is slow (a CPU running the full-size models)
            step(k)
            if time.time() > section_end - 0.6 * share:
                break
        sync(device)
        times, k = [], k + 1
        while k < questions - stored and (not times or time.time() < section_end) \
                and len(times) < (10 if args.smoke else 200):
            start = time.perf_counter()
            step(k)
            sync(device)
            times.append(time.perf_counter() - start)
            k += 1
        median = float(np.median(times))
        partial.update(**{name: {
            "config": config_name, "model": config.model, "map": [channels, height, width],
            "replays_per_step": config.replays_per_step, "vocabulary_assumed": ntoken, "warm_up_steps": k - len(times),
            "steps_timed": len(times),
            "ms_per_step_median": median * 1e3, "ms_per_step_mean": float(np.mean(times)) * 1e3,
            "parameters": sum(p.numel() for p in net.parameters()),
            "projected_stream_hours": VQA_QUESTIONS[name] * median / 3600,
            "note": "replay step only (decode, S-MAC/UpDown forward and backward, Adamax, insert); no evaluation, "
                    "no EMA" + ("; smoke: shrunken model and maps" if args.smoke else "")}})
        log(f"vqa: {name} {median * 1e3:.1f} ms per step -> {VQA_QUESTIONS[name] * median / 3600:.2f} h")
        del net, optimizer, learner, buffer, codes
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return partial.data


CHILD_SECTIONS = {"profile": section_profile, "image_stream": section_image_stream, "vqa": section_vqa}


# ================================================================================ driver
def run_child(args, name: str, cap: float, workdir: Path) -> dict:
    result_file = workdir / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--result", str(result_file),
           "--device", args.device, "--budget", str(cap), "--scale", str(args.scale)] + (["--smoke"] if args.smoke else [])
    rc = run_capped(cmd, cap + 15, child_env())  # the child watches its own budget; this is the hard stop
    data = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if rc is None:
        raise PartialError(f"killed after {cap + 15:.0f} s (cap {cap:.0f} s)", data)
    if rc != 0:
        raise PartialError(data.pop("_error", f"exit code {rc}"), data)
    return data


class PartialError(Exception):
    def __init__(self, message: str, partial: dict):
        super().__init__(message)
        self.partial = partial


def child_main(args) -> int:
    import torch
    partial = Partial(Path(args.result))
    deadline = time.time() + args.budget - 5
    if args.smoke and (os.cpu_count() or 1) <= 4:
        torch.set_num_threads(1)  # tiny ops on a small shared CPU: more threads only spin against each other
    if not args.smoke and torch.device(args.device).type == "cuda":
        torch.backends.cudnn.benchmark = False  # as the experiments (only the base-init trainer turns it on)
    try:
        CHILD_SECTIONS[args.child](args, partial, deadline)
        return 0
    except Exception as exc:
        traceback.print_exc()
        partial.update(_error=f"{type(exc).__name__}: {str(exc)[:500]}")
        return 1


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown(report: dict) -> str:
    env, sections = report["environment"], report["sections"]
    lines = [f"# GPU check ({report['mode']})", "",
             f"{report['started']}, {report['total_s']:.0f} s in all; device under test `{report['device']}`.", "",
             "| environment | |", "|---|---|"]
    for key in ("device_name", "device_memory_gib", "torch", "torchvision", "cuda", "cudnn", "faiss_present", "faiss",
                "python", "cpu_count", "cudnn_allow_tf32"):
        lines.append(f"| {key} | {fmt(env.get(key))} |")
    if not env.get("faiss_present"):
        lines += ["", "faiss was not installed: PQ codebooks the tests train come from a torch k-means "
                      "(benchmarks/gpu_support.py); bench_stream's faiss sections (stream vs reference, encode, vqa) "
                      "were left out."]
    lines += ["", "| section | status | seconds | note |", "|---|---|---|---|"]
    for name, sec in sections.items():
        lines.append(f"| {name} | {sec['status']} | {sec['seconds']:.0f} | {(sec.get('error') or '')[:160]} |")
    tests = sections.get("tests", {}).get("result", {})
    if tests:
        lines += ["", f"**tests/test_gpu.py**: {tests.get('passed')} passed, {tests.get('failures')} failed, "
                      f"{tests.get('errors')} errors, {tests.get('skipped')} skipped "
                      f"({fmt(tests.get('seconds'), 0)} s; log `{tests.get('log')}`)", ""]
        lines += [f"- {m}" for m in tests.get("measured", [])]
    bench = sections.get("bench", {}).get("result", {})
    if bench.get("phases_ms_median"):
        lines += ["", f"**bench_stream** (`{bench['command']}`), ms per streamed example (medians):", "",
                  "| phase | ours | reference | ref/ours |", "|---|---|---|---|"]
        for phase, row in bench["phases_ms_median"].items():
            o, r = row.get("ours"), row.get("reference")
            lines.append(f"| {phase} | {fmt(o, 3)} | {fmt(r, 3)} | {fmt(r / o if o else None)} |")
        e2e = bench["end_to_end_ms_median"]
        lines.append(f"| **end to end** | {fmt(e2e.get('ours'), 3)} | {fmt(e2e.get('reference'), 3)} | "
                     f"{fmt(bench.get('speedup_end_to_end'))} |")
    prof = sections.get("profile", {}).get("result", {})
    if prof:
        lines += ["", f"**profile** ({prof.get('steps_profiled')} steady replay steps, "
                      f"{fmt(prof.get('buffer_entries'), 0)}-entry buffer): wall "
                      f"{fmt(prof.get('wall_ms_per_step_unprofiled'))} ms/step, device busy "
                      f"{fmt(prof.get('device_busy_ms_per_step'))} ms/step "
                      f"({fmt(prof.get('device_busy_fraction'))}), CPU-side op time "
                      f"{fmt(prof.get('cpu_self_ms_per_step'))} ms/step", "",
                  "| op / kernel | calls | self ms per step |", "|---|---|---|"]
        top = next((v for k, v in prof.items() if k.startswith("top_by_")), [])
        for row in top[:12]:
            lines.append(f"| `{row['name'][:70]}` | {row['calls']} | {fmt(row['self_ms_per_step'], 3)} |")
    image = sections.get("image_stream", {}).get("result", {})
    if image:
        lines += ["", "**image stream** (synthetic JPEGs through the real loader, paper settings): "
                      f"{fmt(image.get('streamed_examples'), 0)} examples, {fmt(image.get('loader_workers'), 0)} "
                      f"workers, buffer {fmt(image.get('buffer_prefilled'), 0)}/{fmt(image.get('buffer_capacity'), 0)}"
                      f"; {fmt(image.get('examples_per_s_steady'), 1)} examples/s steady "
                      f"-> {fmt(image.get('projected_stream_hours_imagenet'))} h for ImageNet's stream; evaluation "
                      f"{fmt(image.get('eval_images_per_s_from_images'), 0)} images/s from images, "
                      f"{fmt(image.get('eval_images_per_s_from_codes'), 0)} from codes -> "
                      f"{fmt(image.get('projected_eval_hours_stored_codes'))} h for 10 x 50,000; total "
                      f"{fmt(image.get('projected_total_hours_imagenet'))} h."]
        record = image.get("compute_record")
        if record:
            seconds = record["seconds"]
            per = 1000.0 / max(record["examples_streamed"], 1)
            lines += ["", f"Its compute record: {record['examples_streamed']:,} examples, "
                          f"{record['optimizer_updates']:,} updates, {record['sample_passes']:,} rows through F; "
                          f"ms per example: data {seconds['data'] * per:.2f}, G + encode {seconds['trunk'] * per:.2f}, "
                          f"replay {seconds['replay'] * per:.2f}; peak memory "
                          f"{record['peak_memory_bytes'] / 2**30:.2f} GiB ({record['peak_memory_kind']})."]
    vqa = sections.get("vqa", {}).get("result", {})
    if vqa:
        lines += ["", "| VQA replay step | model | map | ms per step | projected hours |", "|---|---|---|---|---|"]
        for name, row in vqa.items():
            if isinstance(row, dict):
                lines.append(f"| {name} ({row['config']}) | {row['model']} | {'x'.join(map(str, row['map']))} | "
                             f"{fmt(row['ms_per_step_median'])} | {fmt(row['projected_stream_hours'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (CI)")
    parser.add_argument("--device", default=None, help="device under test (default: cuda; cpu with --smoke)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT, else results/gpu_check)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--child", choices=sorted(CHILD_SECTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="full mode only: scale the image, buffer and question counts (to try the full-size "
                             "code on a CPU: --device cpu --scale 0.02)")
    args = parser.parse_args(argv)
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    if args.child:
        return child_main(args)

    out_dir = args.out or Path(os.environ.get("OUT") or ROOT / "results" / "gpu_check")
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = "smoke" if args.smoke else "full"
    log(f"mode {mode}, device {args.device}, output {out_dir}")
    if args.scale != 1.0 and not args.smoke:
        mode += f" (scale {args.scale})"
    report = {"mode": mode, "device": args.device, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "environment": {}, "sections": {}}
    try:
        report["environment"] = environment()
        log("environment: " + json.dumps(report["environment"]))
    except Exception as exc:
        report["environment"] = {"error": f"{type(exc).__name__}: {exc}"}
    workdir = args.workdir = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    for name in args.sections:
        cap = CAPS[name][1 if args.smoke else 0]
        log(f"section {name} (cap {cap} s)")
        start = time.perf_counter()
        entry = {"status": "ok", "cap_s": cap}
        try:
            if name == "tests":
                entry["result"] = section_tests(args, out_dir, cap)
            elif name == "bench":
                entry["result"] = section_bench(args, out_dir, cap)
            else:
                entry["result"] = run_child(args, name, cap, workdir)
        except PartialError as exc:
            entry.update(status="failed", error=str(exc), result=exc.partial)
        except Exception as exc:
            traceback.print_exc()
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        entry["seconds"] = time.perf_counter() - start
        report["sections"][name] = entry
        log(f"section {name}: {entry['status']} in {entry['seconds']:.1f} s"
            + (f" ({entry['error']})" if entry.get("error") else ""))
        report["total_s"] = time.time() - T0
        (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))  # after every section
    shutil.rmtree(workdir, ignore_errors=True)
    report["failed_sections"] = [n for n, s in report["sections"].items() if s["status"] != "ok"]
    report["total_s"] = time.time() - T0
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    text = markdown(report)
    (out_dir / "gpu_check.md").write_text(text)
    print("\n" + text, flush=True)
    log(f"wrote {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.md'}; failed sections: "
        f"{report['failed_sections'] or 'none'}")
    return 1 if report["failed_sections"] else 0


if __name__ == "__main__":
    sys.exit(main())
