#!/usr/bin/env python
"""Streaming-cost benchmark: REMINDModel's fast path against the original-structure reference loop.

Synthetic inputs of the real shapes (224 px images -> G up to layer4.0 -> 512x7x7
maps, PQ with 32 codebooks x 256 codes, 50 replays, mixup alpha 0.1, crops on,
1000 classes). Measures:

1. time per streamed example, split into G forward, encode, sampling+decoding,
   augmentation, F forward/backward, optimizer and buffer update, for our path and
   for benchmarks/reference_loop.py, interleaved in one run; plus end-to-end time per
   example through ``REMINDModel.fit_incremental_batch`` and the reference's loop;
2. buffer bytes per example at 100k and 1M entries (``ReplayBuffer.nbytes()``)
   against the 1,568 bytes of raw codes;
3. eviction cost per insert into a full buffer of 10k, 100k and 1M entries, ours
   against the reference's dict/list buffer;
4. checkpoint save + load of a 959,665-entry buffer through ``REMINDModel.save`` /
   ``REMINDModel.resume`` (``save_state`` of ``ReplayBuffer.state_dict``, then
   ``load_state`` + ``load_state_dict``);
5. PQ encode of 49 vectors (one 7x7 map) and of 6,272 (a batch of 128 maps):
   faiss and torch.

Timings: ``time.perf_counter``, warm-up first, medians; CUDA is synchronised at
every boundary. ``OMP_WAIT_POLICY`` defaults to PASSIVE, as in the project's run
scripts (see docs/performance.md).

Usage: ``python benchmarks/bench_stream.py [--device cpu|cuda] [--full] [--json out.json]``
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch / faiss start their OpenMP pools

import argparse  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.reference_loop import ReferenceBuffer, ReferenceREMIND  # noqa: E402
from image_classification_experiments.REMINDModel import REMINDModel  # noqa: E402
from image_classification_experiments.resnet_models import ResNet18ClassifyAfterLayer4_1  # noqa: E402
from remind.buffer import ReplayBuffer, SharedCodes  # noqa: E402
from remind.checkpoint import save_state  # noqa: E402
from remind.cli import default_device  # noqa: E402
from remind.learner import StreamingLearner  # noqa: E402
from remind.pq import PQCodec  # noqa: E402

NUM_CLASSES = 1000
NUM_CODEBOOKS, CODEBOOK_SIZE, CHANNELS, SIDE = 32, 256, 512, 7
CODE_SHAPE = (SIDE, SIDE, NUM_CODEBOOKS)
RAW_BYTES = SIDE * SIDE * NUM_CODEBOOKS  # 1,568 bytes of codes per example
IMAGENET_BUFFER = 959_665
PHASES = ("g_forward", "encode", "sample_decode", "augment", "f_forward_backward", "optimizer", "buffer_update")
PER_BATCH_PHASES = ("g_forward", "encode")


# --------------------------------------------------------------------------- timing
class PhaseTimer:
    """Accumulates the time between consecutive ``mark`` calls under each phase's name."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.times: dict[str, list[float]] = defaultdict(list)
        self._last = None

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def start(self) -> None:
        self.sync()
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.times[phase].append(now - self._last)
        self._last = now


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, repeats: int, device: torch.device, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.2f}"


# ------------------------------------------------------------ our step, with phase marks
def instrument(model: REMINDModel, timer: PhaseTimer):
    """Mark phase boundaries by wrapping the parts of the real step on this model's instances.

    The step's code carries no timing hooks: each wrapper runs the part, then marks its phase.
    Returns a function that removes the wrappers.
    """
    wrapped = []

    def wrap(owner, name: str, phase: str) -> None:
        part = getattr(owner, name)

        def timed(*args, **kwargs):
            out = part(*args, **kwargs)
            timer.mark(phase)
            return out

        setattr(owner, name, timed)  # an instance attribute shadows the method until removed
        wrapped.append((owner, name))

    learner = model.learner
    wrap(learner, "decode", "sample_decode")        # draw, gather, decode
    wrap(model, "_augment", "augment")              # crops, mixup
    wrap(learner, "backward", "f_forward_backward")  # F forward, loss, backward
    wrap(learner, "update", "optimizer")
    wrap(learner, "insert", "buffer_update")
    return lambda: [delattr(owner, name) for owner, name in wrapped]


def timed_fast_batch(model: REMINDModel, batch, timer: PhaseTimer) -> None:
    """``REMINDModel.fit_incremental_batch`` on one batch, with phase marks."""
    images, labels, ids = batch
    timer.start()
    maps = model._features(images)
    timer.mark("g_forward")
    batch_codes = model.pq.encode_maps(maps, model.config.pq_backend)
    timer.mark("encode")
    remove = instrument(model, timer)
    for codes, label, example_id in zip(batch_codes, labels.tolist(), ids.tolist()):
        model.replay_step(codes, label, example_id, insert=True)
    remove()


class OneBatch:
    """What ``fit_incremental_batch`` needs from a loader: iteration and ``.dataset`` for its length."""

    def __init__(self, batch):
        self.batch = batch
        self.dataset = batch[0]

    def __iter__(self):
        return iter([self.batch])


# ------------------------------------------------------------------ set-up helpers
def random_centroids(seed: int, channels: int = CHANNELS) -> np.ndarray:
    """Random codebooks of the paper's geometry (32 x 256) for ``channels``-channel maps: timing does not
    depend on their values."""
    gen = np.random.default_rng(seed)
    return gen.standard_normal((NUM_CODEBOOKS, CODEBOOK_SIZE, channels // NUM_CODEBOOKS), dtype=np.float32)


def fill_buffer(buffer: ReplayBuffer, count: int, seed: int, chunk: int = 250_000) -> None:
    """``count`` examples of random uint8 codes and labels uniform over the classes, via add_batch in chunks."""
    gen = torch.Generator().manual_seed(seed)
    labels_rng = np.random.default_rng(seed)
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        codes = torch.randint(0, 256, (n, *buffer.code_shape), dtype=torch.uint8, generator=gen)
        buffer.add_batch(codes, labels_rng.integers(0, buffer.num_classes, n), np.arange(start, start + n))


def stream_batch(rng: np.random.Generator, batch_size: int, first_id: int):
    images = torch.from_numpy(rng.standard_normal((batch_size, 3, 224, 224), dtype=np.float32))
    labels = torch.from_numpy(rng.integers(100, NUM_CLASSES, batch_size))
    ids = torch.arange(first_id, first_id + batch_size)
    return images, labels, ids


# ------------------------------------------------------------------------ sections
def bench_encode(device: torch.device, seed: int) -> dict:
    codec = PQCodec(random_centroids(seed), device=device)
    out = {}
    rng = np.random.default_rng(seed)
    for count, repeats in ((49, 200), (6272, 10)):
        vectors = rng.standard_normal((count, CHANNELS), dtype=np.float32)
        on_device = torch.from_numpy(vectors).to(device)
        same = np.array_equal(codec.encode(on_device).cpu().numpy(), codec.encode_faiss(vectors))
        out[str(count)] = {
            "torch_ms": median_time(lambda: codec.encode(on_device), repeats, device) * 1e3,
            "faiss_ms": median_time(lambda: codec.encode_faiss(vectors), repeats, device) * 1e3,
            "codes_identical": bool(same),
        }
    print("\n== PQ encode: faiss (host) vs torch (on %s), median ms" % device)
    print(f"{'vectors':>8} {'faiss':>9} {'torch':>9}  identical codes")
    for count, row in out.items():
        print(f"{count:>8} {row['faiss_ms']:9.3f} {row['torch_ms']:9.3f}  {row['codes_identical']}")
    return out


IMAGENET_VAL = 50_000


def bench_eval(device: torch.device, seed: int, workdir: Path, images: int = 64) -> dict:
    """One evaluation, per test image: from the images (JPEG decode and resize, G, encode, decode, F: every
    evaluation before the stored test codes) vs from stored codes (decode, F: every evaluation after base
    init now), projected to ImageNet's 50,000 validation images (x 10 evaluations in a run)."""
    from PIL import Image

    from image_classification_experiments.utils_imagenet import eval_transform

    model = REMINDModel(NUM_CLASSES, device=str(device), replays_per_step=50)
    model.start_from(PQCodec(random_centroids(seed), device=device), CODE_SHAPE)
    rng = np.random.default_rng(seed)
    jpeg = workdir / "val.jpg"  # ImageNet's typical 500 x 375 JPEG
    Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(jpeg, quality=90)
    transform = eval_transform(224)

    def load_one():
        with Image.open(jpeg) as image:
            return transform(image.convert("RGB"))
    batch = torch.stack([load_one() for _ in range(images)])
    codes = model.pq.encode_maps(model._features(batch.to(device)))
    with torch.no_grad():
        from_images = median_time(lambda: model.predict([(batch, torch.zeros(images, dtype=torch.long))]), 3,
                                  device, warmup=1) / images
        from_codes = median_time(lambda: model.predict_codes(codes, images), 3, device, warmup=1) / images
    jpeg_s = median_time(load_one, 20, device, warmup=2)
    out = {"images": images, "jpeg_decode_ms": jpeg_s * 1e3, "from_images_ms": (from_images + jpeg_s) * 1e3,
           "from_codes_ms": from_codes * 1e3, "speedup": (from_images + jpeg_s) / from_codes,
           "imagenet_val_from_images_s": (from_images + jpeg_s) * IMAGENET_VAL,
           "imagenet_val_from_codes_s": from_codes * IMAGENET_VAL}
    print(f"\n== One evaluation on {device}, per test image (batches of {images})")
    print(f"from the images (JPEG decode {out['jpeg_decode_ms']:.2f} ms, one core + G, encode, decode, F): "
          f"{out['from_images_ms']:.2f} ms -> {out['imagenet_val_from_images_s'] / 60:.1f} min for 50,000")
    print(f"from stored codes (decode, F): {out['from_codes_ms']:.2f} ms -> "
          f"{out['imagenet_val_from_codes_s'] / 60:.1f} min for 50,000 ({out['speedup']:.1f}x)")
    return out


def bench_stream(args, device: torch.device, workdir: Path) -> dict:
    seed = args.seed
    torch.manual_seed(seed)
    network = ResNet18ClassifyAfterLayer4_1(num_classes=NUM_CLASSES)
    ckpt = workdir / "base_init_random.pth"
    torch.save({"state_dict": network.state_dict()}, ckpt)
    model = REMINDModel(NUM_CLASSES, classifier_ckpt=str(ckpt), replays_per_step=50, use_mixup=True, mixup_alpha=0.1,
                        use_random_resize_crops=True, max_buffer_size=args.stream_buffer, device=str(device),
                        seed=seed)
    centroids = random_centroids(seed)
    model.start_from(PQCodec(centroids, device=device), CODE_SHAPE)
    fill_buffer(model.replay_buffer, args.stream_buffer, seed)
    buf = model.replay_buffer
    reference = ReferenceREMIND(network, copy.deepcopy(model.classifier_F), centroids, NUM_CLASSES, num_samples=50,
                                use_mixup=True, mixup_alpha=0.1, use_random_resize_crops=True,
                                max_buffer_size=args.stream_buffer, device=device, seed=seed)
    # a copy: the fast buffer reuses evicted slots, the reference's items must not change under it
    reference.buffer.add_base_init(buf.codes[:buf.size].cpu().numpy().copy(), buf.labels[:buf.size], buf.ids[:buf.size])
    ref_rng = np.random.default_rng(seed)  # the same draws as model.rng until the first eviction
    model.classifier_F.train()
    reference.classifier_F.train()
    data_rng = np.random.default_rng(seed + 7)
    next_id = 10_000_000

    def batch(size):
        nonlocal next_id
        b = stream_batch(data_rng, size, next_id)
        next_id += size
        return b

    bs = args.batch_size
    # warm-up: G and encode at the measured batch size, then two streamed examples per path
    warm = batch(bs)
    model.pq.encode_maps(model._features(warm[0]), model.config.pq_backend)
    reference.encode(reference.extract(warm[0]))
    timed_fast_batch(model, batch(2), PhaseTimer(device))
    reference.timer = PhaseTimer(device)
    reference.timer.start()
    reference.fit_incremental_batch([batch(2)], ref_rng)
    model.fit_incremental_batch(OneBatch(batch(2)), verbose=False)
    reference.timer = None
    reference.fit_incremental_batch([batch(2)], ref_rng)

    timers = {"ours": PhaseTimer(device), "reference": PhaseTimer(device)}
    e2e = {"ours": [], "reference": []}

    def run_timed(which):
        b = batch(bs)
        if which == "ours":
            timed_fast_batch(model, b, timers["ours"])
        else:
            reference.timer = timers["reference"]
            reference.timer.start()
            reference.fit_incremental_batch([b], ref_rng)
            reference.timer = None

    def run_e2e(which):
        b = batch(bs)
        sync(device)
        start = time.perf_counter()
        if which == "ours":
            model.fit_incremental_batch(OneBatch(b), verbose=False)
        else:
            reference.fit_incremental_batch([b], ref_rng)
        sync(device)
        e2e[which].append((time.perf_counter() - start) / bs)

    rounds = max(1, args.steps // bs)
    started = time.perf_counter()
    for r in range(rounds):
        order = ("ours", "reference") if r % 2 == 0 else ("reference", "ours")
        for which in order:
            run_timed(which)
        for which in reversed(order):
            run_e2e(which)
        print(f"  round {r + 1}/{rounds}: {time.perf_counter() - started:.1f} s", flush=True)
    steps = rounds * bs

    result = {"streamed_examples_per_path_per_measurement": steps, "g_batch_size": bs,
              "buffer_entries_while_streaming": args.stream_buffer, "phases_ms": {}, "end_to_end_ms": {}}
    table = []
    for phase in PHASES:
        row = {}
        for which, timer in timers.items():
            values = np.asarray(timer.times[phase])
            if phase in PER_BATCH_PHASES:
                values = values / bs
            assert len(values) == (rounds if phase in PER_BATCH_PHASES else steps), (phase, which, len(values))
            row[which] = {"median": float(np.median(values)) * 1e3, "mean": float(np.mean(values)) * 1e3}
        result["phases_ms"][phase] = row
        table.append((phase, row))
    totals = {which: sum(result["phases_ms"][p][which]["median"] for p in PHASES) for which in timers}
    totals_mean = {which: sum(result["phases_ms"][p][which]["mean"] for p in PHASES) for which in timers}
    for which in e2e:
        result["end_to_end_ms"][which] = {"median": float(np.median(e2e[which])) * 1e3,
                                          "mean": float(np.mean(e2e[which])) * 1e3,
                                          "per_batch": [v * 1e3 for v in e2e[which]]}
    result["phase_sum_median_ms"] = totals
    result["phase_sum_mean_ms"] = totals_mean
    result["speedup_end_to_end"] = result["end_to_end_ms"]["reference"]["median"] / \
        result["end_to_end_ms"]["ours"]["median"]
    result["speedup_phase_sum"] = totals["reference"] / totals["ours"]

    print(f"\n== Time per streamed example on {device} ({steps} examples per path per measurement, "
          f"G batches of {bs}, {args.stream_buffer:,}-entry full buffer, r=50, mixup 0.1, crops on; "
          "G and encode: batch time / batch size)")
    print(f"{'phase':<20} {'ours ms':>9} {'ref ms':>9} {'ref/ours':>9}   (medians; means: ours / ref)")
    for phase, row in table:
        o, r = row["ours"]["median"], row["reference"]["median"]
        print(f"{phase:<20} {o:9.2f} {r:9.2f} {r / o if o > 0 else float('nan'):9.2f}   "
              f"({row['ours']['mean']:.2f} / {row['reference']['mean']:.2f})")
    print(f"{'sum of medians':<20} {totals['ours']:9.2f} {totals['reference']:9.2f} "
          f"{totals['reference'] / totals['ours']:9.2f}")
    eo, er = result["end_to_end_ms"]["ours"]["median"], result["end_to_end_ms"]["reference"]["median"]
    print(f"{'end to end':<20} {eo:9.2f} {er:9.2f} {er / eo:9.2f}   (fit_incremental_batch, no phase syncs; "
          f"median of {len(e2e['ours'])} batches)")
    del model, reference, network
    gc.collect()
    return result


def time_inserts(fn, count: int, device: torch.device) -> np.ndarray:
    times = np.empty(count)
    for k in range(count):
        sync(device)
        start = time.perf_counter()
        fn(k)
        sync(device)
        times[k] = time.perf_counter() - start
    return times


def bench_buffers(args, device: torch.device) -> tuple[dict, dict, ReplayBuffer]:
    """Bytes per example and eviction cost; returns the largest buffer for the checkpoint section."""
    sizes = (10_000, 100_000, 1_000_000)
    ref_inserts = {10_000: 2000, 100_000: 500, 1_000_000: 100}
    rng = np.random.default_rng(args.seed + 11)
    pool = [torch.randint(0, 256, CODE_SHAPE, dtype=torch.uint8).to(device) for _ in range(16)]
    pool_np = [p.cpu().numpy() for p in pool]
    bytes_result, evict_result = {}, {}
    largest = None
    for size in sizes:
        start = time.perf_counter()
        buffer = ReplayBuffer(CODE_SHAPE, NUM_CLASSES, max_size=size, device=device)
        fill_buffer(buffer, size, args.seed + size)
        fill_s = time.perf_counter() - start
        if size >= 100_000:
            nbytes = buffer.nbytes()
            bytes_result[str(size)] = {"bytes": nbytes, "bytes_per_example": nbytes / size,
                                       "ratio_to_raw_1568": nbytes / size / RAW_BYTES}
        # ours: insert into the full buffer (each insert evicts)
        labels = rng.integers(0, NUM_CLASSES, args.inserts)
        ours = time_inserts(lambda k: buffer.insert(pool[k % 16], int(labels[k]), 20_000_000 + k, rng),
                            args.inserts, device)
        if size <= 100_000:
            buffer.check_invariants()
        # reference: the original's dict/list buffer with the same contents (codes as views of one host array)
        start = time.perf_counter()
        ref = ReferenceBuffer(max_size=size, seed=args.seed)
        host_codes = buffer.codes[:size].cpu().numpy()
        ref.add_base_init(host_codes, buffer.labels[:size], buffer.ids[:size])
        ref_build_s = time.perf_counter() - start
        n_ref = ref_inserts[size]
        ref_labels = rng.integers(0, NUM_CLASSES, n_ref)
        reference = time_inserts(lambda k: ref.update(pool_np[k % 16], int(ref_labels[k]), 30_000_000 + k),
                                 n_ref, torch.device("cpu"))
        assert len(ref.replay_order) == size
        evict_result[str(size)] = {
            "ours_us_median": float(np.median(ours)) * 1e6, "ours_us_mean": float(np.mean(ours)) * 1e6,
            "ours_us_p99": float(np.percentile(ours, 99)) * 1e6, "ours_inserts": args.inserts,
            "reference_us_median": float(np.median(reference)) * 1e6,
            "reference_us_mean": float(np.mean(reference)) * 1e6, "reference_inserts": n_ref,
            "fill_s": fill_s, "reference_build_s": ref_build_s}
        del ref, host_codes
        gc.collect()
        if size == sizes[-1]:
            largest = buffer
        else:
            del buffer
        gc.collect()
        print(f"  buffer {size:,}: filled in {fill_s:.1f} s, reference dict built in {ref_build_s:.1f} s", flush=True)

    print(f"\n== Buffer memory (ReplayBuffer.nbytes(), max_size = entries, {NUM_CLASSES} classes)")
    print(f"{'entries':>10} {'bytes/example':>14} {'raw codes':>10} {'ratio':>7}")
    for size, row in bytes_result.items():
        print(f"{int(size):>10,} {row['bytes_per_example']:14.1f} {RAW_BYTES:>10} {row['ratio_to_raw_1568']:7.4f}")
    print("\n== Insert into a full buffer (evicts a random example of the largest class), microseconds per insert")
    print(f"{'entries':>10} {'ours med':>9} {'ours mean':>10} {'ours p99':>9} {'ref med':>10} {'ref mean':>10} "
          f"{'ref/ours':>9}")
    for size, row in evict_result.items():
        print(f"{int(size):>10,} {row['ours_us_median']:9.1f} {row['ours_us_mean']:10.1f} {row['ours_us_p99']:9.1f} "
              f"{row['reference_us_median']:10.1f} {row['reference_us_mean']:10.1f} "
              f"{row['reference_us_median'] / row['ours_us_median']:9.1f}")
    return bytes_result, evict_result, largest


def bench_checkpoint(args, device: torch.device, holder: list, workdir: Path) -> dict:
    """REMINDModel.save then REMINDModel.resume (F + optimizer file, then the buffer file via save_state).

    ``holder`` holds the source buffer; it is emptied so the source's memory can go.
    """
    source = holder.pop()
    entries = min(args.ckpt_entries, source.size)
    model = REMINDModel(NUM_CLASSES, replays_per_step=50, use_mixup=True, max_buffer_size=IMAGENET_BUFFER,
                        device=str(device), seed=args.seed)
    model.start_from(PQCodec(random_centroids(args.seed), device=device), CODE_SHAPE)
    model.replay_buffer.add_batch(source.codes[:entries], source.labels[:entries], source.ids[:entries])
    del source
    gc.collect()
    folder = workdir / "ckpt"
    sync(device)
    start = time.perf_counter()
    model.save(1, str(folder))
    sync(device)
    save_s = time.perf_counter() - start
    file_bytes = sum(f.stat().st_size for f in folder.iterdir())
    check_rows = torch.from_numpy(np.random.default_rng(args.seed).choice(entries, 1000, replace=False)).to(device)
    saved_codes = model.replay_buffer.codes.index_select(0, check_rows)
    saved_ids = model.replay_buffer.ids[:entries].copy()
    model.learner = None
    gc.collect()
    start = time.perf_counter()
    model.resume(1, str(folder))
    sync(device)
    load_s = time.perf_counter() - start
    assert model.replay_buffer.size == entries
    assert torch.equal(model.replay_buffer.codes.index_select(0, check_rows), saved_codes)
    assert np.array_equal(model.replay_buffer.ids[:entries], saved_ids)
    scale = IMAGENET_BUFFER / entries
    result = {"entries_measured": entries, "scaled_to": IMAGENET_BUFFER, "scale_factor": scale,
              "scaled": entries != IMAGENET_BUFFER, "save_s": save_s, "load_s": load_s,
              "file_bytes": file_bytes, "save_load_s_at_959665": (save_s + load_s) * scale}
    print(f"\n== Checkpoint: REMINDModel.save + resume, {entries:,}-entry buffer "
          f"({'measured at full size' if scale == 1 else f'scaled x{scale:.2f} to {IMAGENET_BUFFER:,}'}; "
          f"files {file_bytes / 1e9:.2f} GB in {folder.parent})")
    print(f"save {save_s:.2f} s, load {load_s:.2f} s, total {save_s + load_s:.2f} s"
          + ("" if scale == 1 else f" -> {(save_s + load_s) * scale:.2f} s at {IMAGENET_BUFFER:,}")
          + "  (load reads the file just written: page cache, not cold disk)")
    for f in folder.iterdir():
        f.unlink()
    del model, saved_codes
    gc.collect()
    return result


# ------------------------------------------------------------------------------ main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--full", action="store_true",
                        help="real sizes: 256 streamed examples per path per measurement in G batches of 128, "
                             "a 959,665-entry buffer while streaming, the checkpoint at 959,665 entries")
    parser.add_argument("--steps", type=int, default=None,
                        help="streamed examples per path per measurement (default 40; --full 256)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per G batch (default 10; --full 128)")
    parser.add_argument("--stream-buffer", type=int, default=None,
                        help="entries of the full buffer while streaming (default 20,000; --full 959,665)")
    parser.add_argument("--ckpt-entries", type=int, default=None,
                        help=f"buffer entries for the checkpoint timing, scaled to {IMAGENET_BUFFER:,} "
                             f"(default {IMAGENET_BUFFER:,})")
    parser.add_argument("--inserts", type=int, default=2000, help="timed inserts per buffer size (ours)")
    sections = ["vqa", "vqa_batch", "vqa_buffer", "encode", "eval", "stream", "buffer", "checkpoint"]
    parser.add_argument("--sections", nargs="+", default=sections, choices=sections)
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.steps = args.steps or (256 if args.full else 40)
    args.batch_size = args.batch_size or (128 if args.full else 10)
    args.batch_size = min(args.batch_size, args.steps)
    args.stream_buffer = args.stream_buffer or (IMAGENET_BUFFER if args.full else 20_000)
    args.ckpt_entries = args.ckpt_entries or IMAGENET_BUFFER
    return args


# (name, feature map (C, H, W) of the frozen trunk, images in the dataset's train+val splits)
VQA_FEATURES = {"CLEVR (ResNet-101 layer3)": ((1024, 14, 14), 85_000),
                "TDIUC (ResNet-152 layer4)": ((2048, 7, 7), 167_437)}


def bench_vqa_disk(workdir: Path, seed: int, images: int = 16) -> dict:
    """Bytes on disk per image: uint8 PQ codes (32 codebooks) as .npy vs float32 features as .npy."""
    rng = np.random.default_rng(seed)
    out = {}
    print("\n== VQA features on disk, bytes per image (measured on .npy files of "
          f"{images} synthetic images; codebooks counted once per dataset)")
    print(f"{'dataset':<28} {'float32':>10} {'codes':>8} {'ratio':>7} {'codebooks':>10} {'dataset, float32':>17} "
          f"{'dataset, codes':>15}")
    for name, ((channels, height, width), count) in VQA_FEATURES.items():
        maps = torch.from_numpy(rng.standard_normal((images, channels, height, width), dtype=np.float32))
        vectors = maps.permute(0, 2, 3, 1).reshape(-1, channels).numpy()
        codec = PQCodec.train(vectors, NUM_CODEBOOKS, CODEBOOK_SIZE)
        codes = codec.encode_maps(maps).numpy()
        np.save(workdir / "codes.npy", codes)
        np.save(workdir / "floats.npy", maps.numpy())
        np.save(workdir / "codebooks.npy", codec.centroids.numpy())
        per_code = (workdir / "codes.npy").stat().st_size / images
        per_float = (workdir / "floats.npy").stat().st_size / images
        books = (workdir / "codebooks.npy").stat().st_size
        out[name] = {"float32_bytes_per_image": per_float, "code_bytes_per_image": per_code,
                     "ratio": per_float / per_code, "codebook_bytes": books, "images": count,
                     "dataset_float32_gb": per_float * count / 1e9,
                     "dataset_codes_gb": (per_code * count + books) / 1e9}
        row = out[name]
        print(f"{name:<28} {per_float:>10,.0f} {per_code:>8,.0f} {row['ratio']:>6.0f}x {books:>10,} "
              f"{row['dataset_float32_gb']:>14.1f} GB {row['dataset_codes_gb']:>12.2f} GB")
    return out


def bench_vqa_batch(device: torch.device, workdir: Path, seed: int, stored: int = 400, repeats: int = 20) -> dict:
    """Time to build one VQA replay batch (the new question + 50 replays) as float feature maps on ``device``.

    Ours: the streaming learner draws 50 replays from a reference buffer, gathers their codes through
    their images (held once, on ``device``) and decodes the 51 rows by table lookup.
    Reference, as the original: one read per item from float32 features on disk (a memory-mapped .npy
    standing in for its h5 file, warm in the page cache after the first round), a collate copy, a copy
    into a fresh tensor on the device (``merge_data``) and a reorder by question length.
    """
    rng = np.random.default_rng(seed)
    out = {}
    print(f"\n== VQA replay batch (51 maps) from {stored} stored images, ms (median of {repeats}; "
          "reference reads a warm page cache, not a cold disk)")
    print(f"{'dataset':<28} {'ours':>8} {'reference':>10} {'ratio':>7}")
    for name, ((channels, height, width), _) in VQA_FEATURES.items():
        codec = PQCodec(random_centroids(seed, channels), device=device)
        codes = torch.from_numpy(rng.integers(0, CODEBOOK_SIZE, (stored, height, width, NUM_CODEBOOKS),
                                              dtype=np.uint8))
        path = workdir / "vqa_floats.npy"
        floats = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(stored, height * width, channels))
        for start in range(0, stored, 50):  # the features the codes stand for
            floats[start:start + 50] = codec.decode_maps(codes[start:start + 50]).flatten(2).transpose(1, 2).cpu()
        floats.flush()
        del floats
        features = np.load(path, mmap_mode="r")
        qlen = torch.from_numpy(rng.integers(4, 40, 51))

        image_codes = codes.to(device)
        buffer = ReplayBuffer((height, width, NUM_CODEBOOKS), num_classes=100, device=device,
                              shared_codes=SharedCodes(image_codes, np.arange(stored)))
        learner = StreamingLearner(torch.nn.Identity(), None, codec, buffer, np.random.default_rng(seed),
                                   replays_per_step=50, insert_first=True)
        learner.store(None, rng.integers(0, 100, stored), np.arange(stored))

        def ours():  # the learner's draw, gather through each question's image, decode
            return learner.decode(image_codes[0], 0, 0, learner.draw()).maps

        def reference():
            rows = rng.choice(stored, 51, replace=False)
            items = [torch.from_numpy(np.array(features[r])) for r in rows]  # __getitem__, one read per item
            collated = torch.stack(items)                                       # default_collate
            merged = torch.zeros(collated.shape, device=device)                 # merge_data
            merged[:] = collated.to(device)
            order = torch.sort(qlen.to(device), descending=True)[1]
            merged = merged.index_select(0, order)
            return merged.transpose(1, 2).reshape(51, channels, height, width)

        t_ours = median_time(ours, repeats, device)
        t_ref = median_time(reference, repeats, device)
        out[name] = {"ours_ms": t_ours * 1e3, "reference_ms": t_ref * 1e3, "ratio": t_ref / t_ours}
        print(f"{name:<28} {t_ours * 1e3:>8.2f} {t_ref * 1e3:>10.2f} {t_ref / t_ours:>6.2f}x")
        path.unlink()  # the open memory map stays valid until the next dataset rebinds it
    return out


# (name, training questions, training images, answers the classifier covers, code map (H, W))
VQA_REAL_SIZES = {"CLEVR": (699_989, 70_000, 28, (14, 14)), "TDIUC": (1_115_299, 110_739, 1480, (7, 7))}


def bench_vqa_buffer(device: torch.device, workdir: Path, seed: int, evictions: int = 20_000) -> dict:
    """Bytes a VQA replay buffer adds per stored question, beyond the codes held once per image.

    Question tables of the real sizes with synthetic content (image of each question, answer); the
    buffer holds every training question (the default, unlimited REMIND run), on ``device``; then a
    limited buffer of the same size takes ``evictions`` more inserts with random eviction. The
    checkpoint figure is the size of the buffer's state written with ``save_state``.
    """
    rng = np.random.default_rng(seed)
    out = {}
    print("\n== VQA buffer at the real sizes: bytes per stored question (references to per-image codes)")
    print(f"{'dataset':<7} {'questions':>10} {'device B/q':>11} {'ckpt B/q':>9} {'copied codes B/q':>17} "
          f"{'store s':>8} {'insert us':>10}")
    for name, (questions, images, answers, (height, width)) in VQA_REAL_SIZES.items():
        image_codes = torch.zeros((images, height, width, NUM_CODEBOOKS), dtype=torch.uint8, device=device)
        image_of = rng.integers(0, images, questions)
        labels = rng.integers(0, answers, questions)
        buffer = ReplayBuffer((height, width, NUM_CODEBOOKS), answers, max_size=questions, device=device,
                              shared_codes=SharedCodes(image_codes, image_of))
        learner = StreamingLearner(torch.nn.Identity(), None, PQCodec(random_centroids(seed, 512), device=device),
                                   buffer, np.random.default_rng(seed), replays_per_step=50, insert_first=True)
        start = time.perf_counter()
        learner.store(None, labels, np.arange(questions))
        store_s = time.perf_counter() - start
        # a full buffer: every further question evicts one of the most frequent answer
        start = time.perf_counter()
        for k in range(evictions):
            learner.insert(None, int(labels[k]), k)
        insert_us = (time.perf_counter() - start) / evictions * 1e6
        device_bytes = buffer.nbytes() / questions
        path = workdir / "vqa_buffer_state.pth"
        save_state(path, {"buffer": buffer.state_dict()}, {})
        ckpt_bytes = path.stat().st_size / questions
        path.unlink()
        copied = height * width * NUM_CODEBOOKS
        out[name] = {"questions": questions, "images": images, "vqa_buffer_bytes_per_question": device_bytes,
                     "vqa_checkpoint_bytes_per_question": ckpt_bytes, "copied_codes_bytes_per_question": copied,
                     "store_s": store_s, "insert_with_eviction_us": insert_us}
        print(f"{name:<7} {questions:>10,} {device_bytes:>11.2f} {ckpt_bytes:>9.2f} {copied:>17,} "
              f"{store_s:>8.2f} {insert_us:>10.1f}")
        del buffer, learner, image_codes
        gc.collect()
    out["vqa_buffer_bytes_per_question"] = max(v["vqa_buffer_bytes_per_question"] for v in out.values())
    out["vqa_checkpoint_bytes_per_question"] = max(v["vqa_checkpoint_bytes_per_question"]
                                                   for k, v in out.items() if isinstance(v, dict))
    return out



# sections that use faiss: PQ training (vqa), faiss's encoder (encode), the reference loop's host PQ (stream)
NEEDS_FAISS = ("vqa", "encode", "stream")


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    try:
        import faiss
        faiss_version = faiss.__version__
    except ImportError:  # e.g. a GPU machine without the wheel: the sections that need faiss are left out
        faiss_version = None
    skipped = [s for s in args.sections if s in NEEDS_FAISS] if faiss_version is None else []
    if skipped:
        print(f"faiss is not installed: sections {', '.join(skipped)} need it (PQ training, faiss encode, the "
              "reference loop's host PQ) and are left out", flush=True)
        args.sections = [s for s in args.sections if s not in NEEDS_FAISS]

    began = time.perf_counter()
    out = {"device": str(device) if device.type != "cuda" else f"cuda ({torch.cuda.get_device_name(device)})",
           "mode": "full" if args.full else "default",
           "sections_skipped_without_faiss": skipped,
           "config": {"torch": torch.__version__, "faiss": faiss_version, "numpy": np.__version__,
                      "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
                      "cpu_count": os.cpu_count(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
                      "num_classes": NUM_CLASSES, "num_samples": 50, "mixup_alpha": 0.1, "crops": True,
                      "code_shape": list(CODE_SHAPE), "codebook_size": CODEBOOK_SIZE, "image_size": 224}}
    print(f"device {out['device']}, torch {torch.__version__}, faiss {faiss_version}, "
          f"{torch.get_num_threads()} torch threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"mode {out['mode']}")
    with tempfile.TemporaryDirectory(prefix="remind_bench_", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        if "vqa" in args.sections:
            out["vqa_disk"] = bench_vqa_disk(workdir, args.seed)
        if "vqa_batch" in args.sections:
            out["vqa_batch"] = bench_vqa_batch(device, workdir, args.seed)
        if "vqa_buffer" in args.sections:
            out["vqa_buffer"] = bench_vqa_buffer(device, workdir, args.seed)
            for key in ("vqa_buffer_bytes_per_question", "vqa_checkpoint_bytes_per_question"):
                out[key] = out["vqa_buffer"][key]
        if "encode" in args.sections:
            out["encode_ms"] = bench_encode(device, args.seed)
        if "eval" in args.sections:
            out["eval"] = bench_eval(device, args.seed, workdir)
        if "stream" in args.sections:
            out["stream"] = bench_stream(args, device, workdir)
            out["speedup_vs_reference"] = out["stream"]["speedup_end_to_end"]
        if "buffer" in args.sections or "checkpoint" in args.sections:
            bytes_result, evict_result, largest = bench_buffers(args, device)
            out["buffer_bytes"] = bytes_result
            out["buffer_bytes_ratio_1M"] = bytes_result["1000000"]["ratio_to_raw_1568"]
            out["eviction_us"] = {size: row["ours_us_median"] for size, row in evict_result.items()}
            out["eviction_us_reference"] = {size: row["reference_us_median"] for size, row in evict_result.items()}
            out["eviction"] = evict_result
            if "checkpoint" in args.sections:
                holder = [largest]
                del largest
                out["checkpoint"] = bench_checkpoint(args, device, holder, workdir)
                largest = None
                out["checkpoint_save_load_s"] = out["checkpoint"]["save_load_s_at_959665"]
            del largest
            gc.collect()
    out["total_runtime_s"] = time.perf_counter() - began

    print("\n== Summary")
    for key in ("device", "speedup_vs_reference", "buffer_bytes_ratio_1M", "vqa_buffer_bytes_per_question",
                "vqa_checkpoint_bytes_per_question", "eviction_us", "eviction_us_reference",
                "checkpoint_save_load_s"):
        if key in out:
            value = out[key]
            if isinstance(value, float):
                value = round(value, 4)
            elif isinstance(value, dict):
                value = {k: round(v, 2) for k, v in value.items()}
            print(f"{key}: {value}")
    print(f"total runtime {out['total_runtime_s']:.0f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
