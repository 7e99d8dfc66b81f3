"""One run loop for the class-incremental image experiments: ImageNet, CORe50 and the whole-network baseline.

:func:`run_stream` drives a :class:`StreamMethod` (REMIND or fine-tuning or the
feature-level offline baseline through :class:`REMINDStream`; the whole-network
baseline in ``offline_full_network``) over a :class:`StreamSpec`: base
initialisation up to the first evaluation point, then one segment of the stream
per later point, an evaluation after each, its accuracy and prediction files,
a compute record (:mod:`remind.compute`: updates, sample passes, seconds by
phase, examples per second, peak memory) in ``compute.json``, then the
method's checkpoint. A rerun continues after the last complete checkpoint.
:func:`record_accuracies` is the one place base / non-base / seen accuracy is
computed.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from image_classification_experiments.REMINDModel import REMINDModel
from remind import budget, reporting
from remind.autosave import Autosave
from remind.buffer import entry_bytes
from remind.checkpoint import CheckpointError, atomic_torch_save, atomic_write_text, load_state, \
    remove_stale_temporaries, save_state
from remind.compute import RECORD_FILE, ComputeMeter, summary_line
from remind.metrics import topk_accuracy

ACCURACY_KEYS = ("base_classes_top1", "non_base_classes_top1", "seen_classes_top1",
                 "base_classes_top5", "non_base_classes_top5", "seen_classes_top5")


@dataclass(frozen=True)
class StreamSpec:
    """Where a stream is evaluated.

    Attributes:
        points: stream positions after which the learner is evaluated, increasing; ``points[0]`` ends
            the base initialisation (ImageNet: class counts; CORe50: frames).
        start: the first position of the base initialisation (ImageNet: ``--min_class``).
        unit: what a position counts, for logs and plots (``classes`` or ``frames``).
    """
    points: tuple[int, ...]
    start: int = 0
    unit: str = "classes"

    def __post_init__(self):
        if not self.points or list(self.points) != sorted(set(self.points)) or self.points[0] <= self.start:
            raise ValueError(f"evaluation points {self.points} must increase and start after {self.start}")

    @classmethod
    def class_increments(cls, base_init_classes: int, class_increment: int, max_class: int, min_class: int = 0,
                         streaming_min_class: int | None = None) -> "StreamSpec":
        """ImageNet-style points: base init on ``[min_class, base_init_classes)``, then ``class_increment``
        classes at a time from ``streaming_min_class`` (default: the end of base init) to ``max_class``."""
        if class_increment <= 0:
            raise ValueError(f"--class_increment must be positive, got {class_increment}")
        first = base_init_classes if streaming_min_class is None else streaming_min_class
        # a stream resumed past its end would be empty, yet the run wrote a state named for class ``first``
        # (a base init past it is the label files' check: it names the classes they hold)
        if streaming_min_class is not None and streaming_min_class > max_class:
            raise ValueError(f"--streaming_min_class {first} is past the end of the stream (--streaming_max_class "
                             f"{max_class}): the class range [{first}, {max_class}) is reversed; swap or fix them")
        # the points before ``first`` (a run resumed there has evaluated them) and from it on
        earlier = [c for c in range(base_init_classes, first, class_increment)]
        later = [min(c + class_increment, max_class) for c in range(first, max_class, class_increment)]
        return cls(tuple(sorted({base_init_classes, *earlier, first, *later})), min_class, "classes")

    def segments(self, done: int) -> list[tuple[int, int]]:
        """``(start, end)`` of each segment still to learn after position ``done``."""
        return [(max(done, previous), end) for previous, end in zip(self.points, self.points[1:]) if end > done]

    def seen_at(self, evaluations: int) -> list[int]:
        """Positions of the first ``evaluations`` evaluation points (the x values of tables and plots)."""
        return list(self.points[:evaluations])


def new_accuracies() -> dict[str, list]:
    return {k: [] for k in ACCURACY_KEYS}


def record_accuracies(accuracies: dict, probas: np.ndarray, labels: np.ndarray, is_base: np.ndarray,
                      omit_non_base: bool = False) -> None:
    """Append top-1/top-5 on base, non-base and all seen classes (the original's keys) to ``accuracies``.

    A group without test examples gets ``None``. ``omit_non_base`` leaves out the non-base entry, as
    the original ImageNet code does at base initialisation (its non-base lists are one shorter).
    """
    for name, mask in (("base_classes", is_base), ("non_base_classes", ~is_base),
                       ("seen_classes", np.ones_like(is_base))):
        if omit_non_base and name == "non_base_classes":
            continue
        top1, top5 = topk_accuracy(probas[mask], labels[mask], topk=(1, 5)) if mask.any() else (None, None)
        accuracies[f"{name}_top1"].append(top1)
        accuracies[f"{name}_top5"].append(top5)
    base = accuracies["base_classes_top1"][-1]
    print(f"seen top1={accuracies['seen_classes_top1'][-1]:.2f}% top5={accuracies['seen_classes_top5'][-1]:.2f}%"
          f" | base top1={'n/a' if base is None else f'{base:.2f}%'} on {len(labels)} test examples", flush=True)


@dataclass(frozen=True)
class ResultFiles:
    """Names of a run's per-evaluation files, in the original's convention.

    ``{prefix}accuracies_min_trained_{first}_max_trained_{end}.json`` (all accuracy lists so far),
    ``{prefix}preds_min_trained_{first}_max_trained_{end}.pth`` (softmax probabilities), one plot, and
    ``{prefix}compute.json`` (the compute record of every evaluation so far).
    """
    save_dir: Path
    run_name: str
    first: int = 0
    prefix: str = ""
    plot_name: str = "accuracy_curves.png"
    xlabel: str = "classes seen"

    @property
    def compute_file(self) -> Path:
        return self.save_dir / f"{self.prefix}{RECORD_FILE}"

    def accuracy_file(self, end: int) -> Path:
        return self.save_dir / f"{self.prefix}accuracies_min_trained_{self.first}_max_trained_{end}.json"

    def write(self, accuracies: dict, probas: np.ndarray, end: int, positions: list[int]) -> None:
        atomic_write_text(self.accuracy_file(end), json.dumps(accuracies))
        atomic_torch_save(torch.from_numpy(probas),
                          self.save_dir / f"{self.prefix}preds_min_trained_{self.first}_max_trained_{end}.pth")
        reporting.plot_accuracies({self.run_name: accuracies}, positions, self.save_dir / self.plot_name,
                                  xlabel=self.xlabel)


class StreamMethod(Protocol):
    """What :func:`run_stream` drives."""
    compute: ComputeMeter  # counts and times the method's work; its state travels in the checkpoints

    def completed(self, points: tuple[int, ...]) -> int | None: ...  # latest point with a complete checkpoint
    def restore(self, point: int) -> dict: ...                         # load it; returns the accuracies so far
    def begin(self, start: int, end: int) -> None: ...                 # base initialisation on [start, end)
    def learn(self, start: int, end: int) -> None: ...                 # one segment of the stream
    def predict(self, end: int) -> tuple[np.ndarray, np.ndarray]: ...  # (probas, labels) on what is seen by end
    def checkpoint(self, end: int, accuracies: dict) -> None: ...


def run_stream(spec: StreamSpec, method: StreamMethod, files: ResultFiles,
               is_base: Callable[[np.ndarray], np.ndarray], omit_non_base_at_base_init: bool = True,
               seed_from: Callable[[], tuple[int, dict]] | None = None) -> dict:
    """Base init (or resume), then every segment; returns the accuracy lists.

    ``seed_from``, called only when the run has no checkpoint of its own, loads another run's state (the
    original's ``--resume_full_path``) and returns its position and accuracies: the run's own checkpoints win.
    """
    for folder in {files.save_dir, getattr(method, "model_dir", files.save_dir)}:
        for stale in remove_stale_temporaries(folder):
            print(f"removed {stale}, left by a save that was interrupted", flush=True)
    done = method.completed(spec.points)
    if done is not None:
        accuracies = method.restore(done)
    elif seed_from is not None:
        done, accuracies = seed_from()
    else:
        print(f"base initialisation on {spec.unit} {spec.start}-{spec.points[0] - 1}", flush=True)
        with method.compute.phase("base_init"):
            method.begin(spec.start, spec.points[0])
        accuracies = new_accuracies()
        _evaluate(spec, method, files, is_base, accuracies, spec.points[0], omit_non_base_at_base_init)
        done = spec.points[0]
    for start, end in spec.segments(done):
        print(f"\nlearning {spec.unit} {start}-{end - 1}", flush=True)
        method.learn(start, end)
        _evaluate(spec, method, files, is_base, accuracies, end, False)
    return accuracies


def _evaluate(spec, method, files, is_base, accuracies, end: int, omit_non_base: bool) -> None:
    """Evaluate at ``end``; results and the compute record first, then the checkpoint (which carries the
    record), whose presence marks the point done."""
    with method.compute.phase("evaluation"):
        probas, labels = method.predict(end)
    record_accuracies(accuracies, probas, labels, is_base(labels), omit_non_base)
    files.write(accuracies, probas, end, spec.seen_at(len(accuracies["seen_classes_top1"])))
    print(summary_line(method.compute.record(end, spec.unit)), flush=True)
    method.compute.write(files.save_dir, files.compute_file.name)
    with method.compute.phase("checkpoint"):
        method.checkpoint(end, accuracies)


@dataclass(frozen=True)
class OfflineTraining:
    """A fresh F trained offline on the whole buffer (``REMINDModel.fit_offline``)."""
    epochs: int
    batch_size: int = 256
    lr: float = 0.1


PARTIAL = "remind_partial.pth"  # the run state inside an increment (mid-segment checkpoint)
EVAL_CODES = "eval_codes.pth"   # the test examples' codes, computed once


class EvalCodes:
    """The test examples' codes, computed once: after base initialisation G and the codebooks are frozen, so
    an example's codes never change and each evaluation only decodes them and runs F. Kept on disk next to
    the run's checkpoints (78 MB for ImageNet's 50,000 validation images) with the codebooks' fingerprint;
    a resumed run reuses them, a file from other codebooks is ignored.
    """

    def __init__(self, path: Path):
        self.path = path
        self.ids = np.zeros(0, np.int64)
        self.codes: torch.Tensor | None = None
        self.fingerprint: str | None = None

    @staticmethod
    def fingerprint_of(model: REMINDModel) -> str:
        return hashlib.sha256(model.pq.centroids.detach().cpu().numpy().tobytes()).hexdigest()

    def _load(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        if self.path.is_file():
            try:
                tensors, meta = load_state(self.path, "stored test codes")
            except CheckpointError:
                return  # recomputed and rewritten below
            if meta.get("codebooks") == fingerprint:
                self.ids, self.codes = tensors["ids"].numpy().astype(np.int64), tensors["codes"]

    def codes_for(self, model: REMINDModel, loader) -> tuple[torch.Tensor, int]:
        """Codes of every example of ``loader`` (in its order), encoding those not stored yet with G;
        returns them and how many went through G."""
        fingerprint = self.fingerprint_of(model)
        if fingerprint != self.fingerprint:
            self._load(fingerprint)
        wanted = np.asarray(loader.dataset.indices, dtype=np.int64)
        missing = np.nonzero(~np.isin(wanted, self.ids))[0]
        if len(missing):
            subset = DataLoader(Subset(loader.dataset, missing.tolist()), batch_size=loader.batch_size,
                                shuffle=False, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                                pin_memory=loader.pin_memory)
            new_ids, new_codes = model.encode_images(subset)
            self.ids = np.concatenate([self.ids, new_ids])
            self.codes = new_codes if self.codes is None else torch.cat([self.codes, new_codes])
            save_state(self.path, {"ids": torch.from_numpy(self.ids), "codes": self.codes},
                       {"codebooks": fingerprint})
        order = np.argsort(self.ids, kind="stable")
        return self.codes[order[np.searchsorted(self.ids[order], wanted)]], len(missing)


def remaining_batches(loader: DataLoader, skip: int) -> DataLoader:
    """The same (unshuffled) loader without its first ``skip`` batches: the batches that follow are the ones
    the full loader would give, so a resumed stream sees exactly the same batches."""
    if skip == 0:
        return loader
    rest = Subset(loader.dataset, range(min(skip * loader.batch_size, len(loader.dataset)), len(loader.dataset)))
    return DataLoader(rest, batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)


def keep_policy(value: str) -> int | None:
    """``--keep_checkpoints``: a positive number of increment states to keep, or ``all`` (None)."""
    if str(value) == "all":
        return None
    if str(value).isdigit() and int(value) > 0:
        return int(value)
    raise ValueError(f"--keep_checkpoints {value!r} must be a positive integer or all")


class REMINDStream:
    """REMIND, fine-tuning (0 replays) or the feature-level offline baseline as a :class:`StreamMethod`.

    Args:
        model: the image learner.
        train_loader: ``(start, end) ->`` loader of the training examples of stream positions ``[start, end)``.
        test_loader: ``end ->`` loader of the test examples of everything seen by position ``end``.
        model_dir: where ``remind_buffer_<end>.pth`` and ``remind_classifier_F_<end>.pth`` go.
        identity: settings beyond the model's that a resumed run must share (mode, order, seed, ...).
        feature_shape: ``(H, W)`` of G's maps at this run's image size (a checkpoint must match it).
        offline: instead of streaming, store each segment's codes and retrain F (the offline baseline).
        base_training: train F offline on the base-init codes before streaming (CORe50's new head), then
            stream with a fresh optimizer.
        autosave: saves the run state inside an increment (``remind_partial.pth``) on its timer and on
            SIGINT/SIGTERM, between batches of the stream; None: only after each increment.
        keep: increment states (``remind_buffer_<end>.pth``) kept, the latest ones; None keeps all.
        eval_from_images: run G over the test images at every evaluation instead of storing their codes
            once (:class:`EvalCodes`); same predictions, for checking.
        allow_changes: resume a state saved with other settings (``--allow_changed_settings``), recording
            the differences in ``settings_changes.txt`` next to the results.
    """

    def __init__(self, model: REMINDModel, train_loader, test_loader, model_dir: Path, identity: dict,
                 feature_shape: tuple[int, int], offline: OfflineTraining | None = None,
                 base_training: OfflineTraining | None = None, autosave: Autosave | None = None,
                 keep: int | None = None, eval_from_images: bool = False, allow_changes: bool = False):
        self.model, self.train_loader, self.test_loader = model, train_loader, test_loader
        self.model_dir, self.identity, self.feature_shape = Path(model_dir), identity, tuple(feature_shape)
        self.offline, self.base_training = offline, base_training
        self.autosave, self.keep = autosave, keep
        self.eval_codes = None if eval_from_images else EvalCodes(self.model_dir / EVAL_CODES)
        self.allow_changes = allow_changes
        self.accuracies: dict | None = None  # as of the last saved point (what a mid-increment state carries)
        self.resume_at: dict | None = None   # where a mid-increment state stopped: segment, batches, loss

    @property
    def compute(self) -> ComputeMeter:
        return self.model.compute

    def completed(self, points) -> int | None:
        done = [p for p in points if (self.model_dir / f"remind_buffer_{p}.pth").is_file()]
        return max(done) if done else None

    def restore(self, point: int, folder: Path | None = None) -> dict:
        folder = Path(folder or self.model_dir)
        partial = self.model_dir / PARTIAL
        if folder == self.model_dir and partial.is_file() and load_state(partial)[1].get("inc") == point:
            meta = self.model.load_state(partial, self.identity, f"deleting {PARTIAL} makes a rerun resume from "
                                                                 f"remind_buffer_{point}.pth", self.allow_changes)
            self.resume_at = {k: meta[k] for k in ("segment", "batches", "loss_total", "count")}
            print(f"resuming from {partial}: {meta['count']} examples of segment {meta['segment'][0]}-"
                  f"{meta['segment'][1] - 1} already learnt", flush=True)
        else:
            if partial.is_file():  # from before the latest increment state: superseded
                partial.unlink()
            print(f"resuming from {folder}/remind_buffer_{point}.pth", flush=True)
            meta = self.model.resume(point, str(folder), self.identity, self.allow_changes)
        saved = tuple(self.model.replay_buffer.code_shape[:2])
        if saved != self.feature_shape:
            raise CheckpointError(f"{folder} holds codes of {saved[0]}x{saved[1]} feature maps but G gives "
                                  f"{self.feature_shape[0]}x{self.feature_shape[1]} at this --image_size; use the "
                                  "run's --image_size or another --save_dir")
        if meta.get("settings_changed"):
            record = self.model_dir.parent / "settings_changes.txt"
            before = record.read_text() if record.is_file() else ""
            line = f"resumed after {point} with changed settings (--allow_changed_settings): {meta['settings_changed']}"
            atomic_write_text(record, before + line + "\n")
            print(f"warning: {line}; recorded in {record}", flush=True)
        self.accuracies = meta["accuracies"]
        return meta["accuracies"]

    def _train_offline(self, schedule: OfflineTraining, label: str = "offline", phase: str = "offline") -> None:
        loss = self.model.fit_offline(schedule.epochs, schedule.batch_size, schedule.lr, phase=phase)
        print(f"{label}: F trained {schedule.epochs} epochs on {len(self.model.learner)} examples, "
              f"last-epoch loss {loss:.4f}", flush=True)

    def begin(self, start: int, end: int) -> None:
        self.model.fit_pq(self.train_loader(start, end))
        if self.offline is not None:
            self._train_offline(self.offline, phase="base_init")
        elif self.base_training is not None and self.base_training.epochs:
            self._train_offline(self.base_training, "base init", phase="base_init")
            self.model.reset_optimizer()

    def learn(self, start: int, end: int) -> None:
        if self.offline is not None:
            self.model.store_incremental_batch(self.train_loader(start, end))
            self._train_offline(self.offline)
        else:
            loader, first, so_far = self.train_loader(start, end), 0, (0.0, 0)
            if self.resume_at is not None and tuple(self.resume_at["segment"]) == (start, end):
                first, so_far = self.resume_at["batches"], (self.resume_at["loss_total"], self.resume_at["count"])
                loader = remaining_batches(loader, first)
            self.resume_at = None
            hook = None
            if self.autosave is not None:
                def hook(batches: int, loss_total: float, count: int) -> None:
                    self.autosave.tick(lambda: self._save_partial(start, end, batches, loss_total, count))
            loss = self.model.fit_incremental_batch(loader, between_batches=hook, first_batch=first,
                                                    loss_so_far=so_far)
            print(f"mean streaming loss {loss:.4f}", flush=True)

    def _save_partial(self, start: int, end: int, batches: int, loss_total: float, count: int) -> str:
        """The run state after ``batches`` batches of segment ``[start, end)``; returns where it went."""
        path = self.model_dir / PARTIAL
        self.model.save_state(path, {"inc": start, "segment": [start, end], "batches": batches,
                                     "loss_total": loss_total, "count": count, "accuracies": self.accuracies},
                              self.identity)
        return f"{path}, {count} examples into segment {start}-{end - 1}"

    def predict(self, end: int) -> tuple[np.ndarray, np.ndarray]:
        started, loader = time.perf_counter(), self.test_loader(end)
        if self.eval_codes is None:
            _, probas, labels = self.model.predict(loader)
            through_g = len(labels)
        else:
            codes, through_g = self.eval_codes.codes_for(self.model, loader)
            probas = self.model.predict_codes(codes, loader.batch_size)
            labels = np.asarray(loader.dataset.labels)[np.asarray(loader.dataset.indices, dtype=np.int64)]
        print(f"evaluation: {len(labels)} test examples ({through_g} through G), "
              f"{time.perf_counter() - started:.2f} s", flush=True)
        return probas, labels.astype(np.int64)

    def checkpoint(self, end: int, accuracies: dict) -> None:
        """F's file, then the increment's run state (its presence marks the point done), then the older
        states beyond ``keep`` and the superseded mid-increment state are removed."""
        self.model.save(end, str(self.model_dir), {"accuracies": accuracies}, self.identity)
        self.accuracies = accuracies
        (self.model_dir / PARTIAL).unlink(missing_ok=True)
        if self.keep is not None:
            states = sorted((int(p.stem.rsplit("_", 1)[1]), p) for p in self.model_dir.glob("remind_buffer_*.pth")
                            if p.stem.rsplit("_", 1)[1].isdigit())
            for _, old in states[:-self.keep]:
                old.unlink()
        if self.autosave is not None:
            self.autosave.checkpointed(f"{self.model_dir}/remind_buffer_{end}.pth")


def feature_shape(model: REMINDModel, image_size: int, spatial_feat_dim: int | None = None) -> tuple[int, int]:
    """``(H, W)`` of G's maps at ``image_size`` (:meth:`remind.REMIND.map_shape`, channels checked against the
    PQ geometry on the way)."""
    _, height, width = model.map_shape(image_size)
    if spatial_feat_dim is not None and spatial_feat_dim != width:
        raise ValueError(f"G gives {width}x{width} feature maps at --image_size {image_size}, not "
                         f"--spatial_feat_dim {spatial_feat_dim}; drop the flag or fix --image_size")
    return height, width


def stream_budget(title: str, spec: StreamSpec, examples_seen: list[int], evaluated: list[int], model: REMINDModel,
                  map_shape: tuple[int, int], save_dir: Path | None, keep: int | None = 1) -> budget.Budget:
    """The preflight table of a REMIND stream (:mod:`remind.budget`), from the sizes it will reach.

    ``examples_seen[k]`` / ``evaluated[k]``: training examples learnt and test examples predicted at
    ``spec.points[k]``. Per point the run writes ``remind_buffer_<k>.pth`` (buffer, F, momentum, codebooks,
    per-class steps; the latest ``keep`` are kept, all with None), ``remind_classifier_F_<k>.pth`` (F,
    momentum) and the softmax predictions (float32); besides, the test codes once and one mid-increment state.
    """
    config = model.config
    limit = config.max_buffer_size
    stored = [n if limit is None else min(n, limit) for n in examples_seen]
    code_bytes = int(np.prod(map_shape)) * config.num_codebooks
    per_entry = code_bytes + entry_bytes(config.num_classes)
    f_bytes, momentum = budget.module_bytes(model.classifier_F), budget.trainable_bytes(model.classifier_F)
    channels = model.map_channels or model.map_shape(224)[0]  # known once feature_shape has run
    codebooks = config.codebook_size * channels * 4
    run_state = [n * per_entry + f_bytes + momentum + codebooks + 8 * config.num_classes for n in stored]
    f_file = f_bytes + momentum
    preds = [n * config.num_classes * 4 for n in evaluated]
    table = budget.Budget(title, save_dir=save_dir)
    table.add("training examples", examples_seen[-1])
    table.add("test examples (last evaluation)", evaluated[-1])
    split = f"{model.arch} after {model.split_at}: " if hasattr(model, "arch") else ""
    table.add("G's maps", f"{split}{channels} x {' x '.join(map(str, map_shape))} floats -> "
                          f"{' x '.join(map(str, map_shape))} x {config.num_codebooks} = {code_bytes:,} B of codes "
                          "per example")
    table.add("evaluations", f"{len(spec.points)} (base init to {spec.points[0]} {spec.unit}, then "
                             f"{len(spec.points) - 1} increments)")
    largest = max(stored)
    table.add("buffer at its largest", f"{largest:,} examples x {code_bytes:,} B of codes "
                                       f"({'x'.join(map(str, map_shape))} x {config.num_codebooks} codebooks) = "
                                       f"{budget.human(largest * code_bytes)}, + labels, ids, class slots "
                                       f"{budget.human(largest * (per_entry - code_bytes))} = "
                                       f"{budget.human(largest * per_entry)}")
    table.add("codebooks", f"{config.num_codebooks} x {config.codebook_size} centroids of "
                           f"{channels // config.num_codebooks} floats = {budget.human(codebooks)}")
    table.add(f"device memory ({model.device.type})",
              f"buffer codes {budget.human(largest * code_bytes)} + F (weights, gradients, momentum) "
              f"{budget.human(f_bytes + 2 * momentum)} + G {budget.human(budget.module_bytes(model.classifier_G))}"
              " + activations of one step")
    table.add("per checkpoint (largest)", f"remind_buffer {budget.human(max(run_state))}, remind_classifier_F "
                                          f"{budget.human(f_file)}, predictions {budget.human(max(preds))}")
    kept = run_state if keep is None else sorted(run_state)[-keep:]
    # at the fullest: every increment's small files, the kept states, the one being written (its temporary
    # file), the mid-increment state, the test codes
    table.disk_bytes = (len(stored) * f_file + sum(preds) + sum(kept) + 2 * max(run_state)
                        + evaluated[-1] * code_bytes)
    table.add("increment states kept", "all (one per increment)" if keep is None else f"the latest {keep}")
    table.add_disk()
    return table
