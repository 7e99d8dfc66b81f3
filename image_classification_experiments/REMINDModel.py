"""The REMIND learner for class-incremental image classification: the image adapter of remind.learner.

G (frozen trunk) -> PQ codes -> replay buffer; every streamed example takes one
SGD step on F over itself plus ``num_samples`` decoded replays, through the
shared :class:`remind.learner.StreamingLearner`. What is particular to images
lives here: the G/F split of one ResNet, the per-class step learning rate,
feature-map random resized crops and mixup, and the offline baseline
(:meth:`REMINDModel.fit_offline`: every example's codes stored, a fresh F
retrained for several epochs on the whole buffer). All random draws (replay
sampling, eviction, crops, mixup, offline shuffles) come from the learner's one
numpy Generator, checkpointed with it, so a resumed run continues the same sequence.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from image_classification_experiments.configs import REMINDConfig
from image_classification_experiments.resnet_models import build_plastic, build_trunk
from remind.augment import mixup, random_resized_crop, sample_mixup_lambda
from remind.buffer import ReplayBuffer
from remind.checkpoint import CheckpointError, atomic_torch_save, load_run_state, safe_load, save_run_state
from remind.cli import default_device
from remind.learner import ReplayBatch, StreamingLearner
from remind.lr import step_lr_gamma
from remind.pq import MAX_POINTS_PER_CENTROID, PQCodec, TrainingVectorSampler, check_pq_shape

# Constructor keywords of the original REMINDModel -> REMINDConfig fields.
_KEYWORDS = {"num_samples": "replays_per_step", "use_random_resize_crops": "use_random_resized_crops"}
# Settings a resumed run must share with the run that wrote the checkpoint.
_IDENTITY_FIELDS = ("num_classes", "classifier_G", "extract_features_from", "classifier_F", "num_channels",
                    "num_codebooks", "codebook_size")


class REMINDModel:
    """Streaming learner for images.

    Args:
        num_classes: outputs of F (fills ``config.num_classes`` when given).
        classifier_ckpt: base-init checkpoint G and F are cut from (None: random init).
        device: ``cuda`` or ``cpu`` (default: cuda when present).
        config: all other settings (:class:`REMINDConfig`); or pass its fields as keywords, with the
            original's names ``num_samples`` (replays per step) and ``use_random_resize_crops``.
    """

    def __init__(self, num_classes: int | None = None, classifier_ckpt: str | None = None,
                 device: str | None = None, config: REMINDConfig | None = None, **settings):
        settings = {_KEYWORDS.get(k, k): v for k, v in settings.items()}
        if num_classes is not None:
            settings["num_classes"] = num_classes
        config = dataclasses.replace(config or REMINDConfig(), **settings)
        check_pq_shape(config.num_channels, config.num_codebooks, config.codebook_size)
        if isinstance(config.lr_examples_per_class, str):
            raise ValueError("lr_examples_per_class 'auto' must be resolved to counts before building the model")
        self.config, self.classifier_ckpt = config, classifier_ckpt
        self.num_classes = config.num_classes
        self.device = torch.device(device or default_device())
        self.classifier_G = build_trunk(config.classifier_G, classifier_ckpt, config.extract_features_from,
                                        config.num_classes).to(self.device)
        self.classifier_F = build_plastic(config.classifier_F, classifier_ckpt, config.num_classes).to(self.device)
        self.learner: StreamingLearner | None = None  # created by fit_pq, resume or start_from
        self.reset_optimizer()
        self.criterion = nn.CrossEntropyLoss(reduction="none")
        per_class = np.broadcast_to(np.asarray(config.lr_examples_per_class, dtype=np.float64), (self.num_classes,))
        self.lr_gamma = np.array([step_lr_gamma(config.start_lr, config.end_lr, config.lr_step_size, max(int(n), 1))
                                  for n in per_class])
        self.class_steps = np.zeros(self.num_classes, dtype=np.int64)  # SGD steps spent on each class
        self._first_rng = np.random.default_rng(config.seed)  # handed to the learner when it is created

    # ----------------------------------------------------------------- parts
    @property
    def pq(self) -> PQCodec | None:
        return None if self.learner is None else self.learner.codec

    @property
    def replay_buffer(self) -> ReplayBuffer | None:
        return None if self.learner is None else self.learner.buffer

    @property
    def rng(self) -> np.random.Generator:
        """The run's generator: the learner's once it exists (replays, eviction, crops, mixup, shuffles)."""
        return self._first_rng if self.learner is None else self.learner.rng

    @property
    def settings(self) -> dict:
        """The settings that fix the network and code geometry (checked on resume)."""
        return {k: getattr(self.config, k) for k in _IDENTITY_FIELDS}

    def start_from(self, codec: PQCodec, code_shape: tuple[int, int, int]) -> None:
        """Create the learner around ``codec`` with an empty buffer of ``code_shape`` (H, W, M) codes."""
        buffer = ReplayBuffer(code_shape, self.num_classes, self.config.max_buffer_size, self.device)
        self.learner = StreamingLearner(
            self.classifier_F, self.optimizer, codec.to(self.device), buffer, self._first_rng,
            replays_per_step=self.config.replays_per_step * (2 if self.config.use_mixup else 1),
            even_replays=self.config.use_mixup, grad_clip=self.config.grad_clip,
            contiguous_maps=not self.config.use_random_resized_crops)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """G's feature maps ``(B, C, H, W)`` for ``images (B, 3, S, S)``."""
        maps = self.classifier_G(images.to(self.device, non_blocking=True))
        if maps.shape[1] != self.config.num_channels:
            raise ValueError(f"G ({self.config.extract_features_from}) gives {maps.shape[1]} channels but "
                             f"--num_channels is {self.config.num_channels}; set --num_channels {maps.shape[1]}")
        return maps

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.pq.encode_maps(self._features(images), self.config.pq_backend)

    def fit_pq(self, base_loader, max_cached_bytes: int = 2 << 30) -> None:
        """Base initialisation: train the PQ on G's base-init vectors, then fill the buffer with their codes.

        The PQ trains on ``codebook_size * 256`` vectors sampled uniformly from
        all base-init positions (faiss would subsample to that many anyway).
        Feature maps are kept for encoding when they fit in
        ``max_cached_bytes``; otherwise G runs a second pass.
        """
        cached, sampler, keep_cache = [], None, True
        for images, labels, ids in tqdm(base_loader, desc="base init: G features", leave=False):
            maps = self._features(images)
            b, c, h, w = maps.shape
            if sampler is None:
                wanted = self.config.codebook_size * MAX_POINTS_PER_CENTROID
                sampler = TrainingVectorSampler(len(base_loader.dataset) * h * w, wanted,
                                                np.random.default_rng(self.config.seed + 1))
                keep_cache = len(base_loader.dataset) * c * h * w * 4 <= max_cached_bytes
            sampler.take(maps.permute(0, 2, 3, 1).reshape(-1, c))
            if keep_cache:
                cached.append((maps.cpu(), labels, ids))
        if sampler is None:
            raise ValueError("the base-init loader is empty; check --base_init_classes and the label files")
        codec = PQCodec.train(sampler.vectors(), self.config.num_codebooks, self.config.codebook_size,
                              device=self.device)
        self.start_from(codec, (h, w, self.config.num_codebooks))
        batches = cached if keep_cache else ((self._features(x), y, i) for x, y, i in base_loader)
        for maps, labels, ids in tqdm(batches, desc="base init: encode", leave=False):
            self.learner.store(self.pq.encode_maps(maps.to(self.device), self.config.pq_backend),
                               labels.numpy(), ids.numpy())

    # ---------------------------------------------------------------- training
    def current_lr(self, label: int) -> float:
        if self.config.lr_mode == "constant":
            return self.config.start_lr
        return float(self.config.start_lr
                     * self.lr_gamma[label] ** (self.class_steps[label] // self.config.lr_step_size))

    def _augment(self, batch: ReplayBatch):
        """Crops (when on) and mixup of the replays (not of the new example, row 0).

        Returns ``(inputs, labels_a, labels_b, lam)``: the loss is ``lam * CE(y_a) + (1 - lam) * CE(y_b)``.
        """
        maps = random_resized_crop(batch.maps, self.rng) if self.config.use_random_resized_crops else batch.maps
        labels, replays = batch.labels, batch.num_replays
        if self.config.use_mixup and replays >= 2:
            half = replays // 2
            lam = sample_mixup_lambda(self.rng, self.config.mixup_alpha)
            inputs = torch.cat([maps[:1], mixup(maps[1:1 + half], maps[1 + half:], lam)])
            return inputs, labels[:1 + half], torch.cat([labels[:1], labels[1 + half:]]), lam
        return maps, labels, labels, 1.0

    def _loss(self, inputs, labels_a, labels_b, lam: float) -> torch.Tensor:
        output = self.classifier_F(inputs)
        loss = self.criterion(output, labels_a)
        if lam != 1.0:
            loss = lam * loss + (1.0 - lam) * self.criterion(output, labels_b)
        return loss.mean()

    def _replay_loss(self, batch: ReplayBatch) -> torch.Tensor:
        return self._loss(*self._augment(batch))

    def replay_step(self, new_codes: torch.Tensor, label: int, example_id: int = -1,
                    insert: bool = False) -> torch.Tensor:
        """One SGD step on F over the new example plus replayed ones; returns the loss (a 0-d tensor, no sync).

        Args:
            new_codes: ``(H, W, M)`` uint8 codes of the new example.
            label: its class.
            insert: also store it afterwards (what streaming does; tests step without storing).
        """
        loss = self.learner.step(new_codes, label, example_id, self._replay_loss, self.current_lr(label),
                                 store=insert)
        self.class_steps[label] += 1
        return loss

    def fit_incremental_batch(self, curr_loader, verbose: bool = True, between_batches=None,
                              first_batch: int = 0, loss_so_far: tuple[float, int] = (0.0, 0)) -> float:
        """Stream every example of ``curr_loader`` (batches of ``(images, labels, ids)``) once, in order.

        ``between_batches(batches_done, loss_total, count)`` is called after each batch, where the state is
        complete (mid-segment checkpoints). A stream resumed after ``first_batch`` batches passes a loader
        over the remaining examples, that number and the loss accumulated so far. Returns the mean loss.
        """
        if self.learner is None:
            raise RuntimeError("call fit_pq (base initialisation) or resume before streaming")
        self.classifier_F.train()
        total = torch.tensor(loss_so_far[0], dtype=torch.float32, device=self.device)
        count = loss_so_far[1]
        progress = tqdm(total=len(curr_loader.dataset), desc="streaming", disable=not verbose, leave=False)
        for batch, (images, labels, ids) in enumerate(curr_loader, start=first_batch + 1):
            for codes, label, example_id in zip(self._encode(images), labels.tolist(), ids.tolist()):
                total += self.replay_step(codes, label, example_id, insert=True)
                count += 1
            progress.update(len(labels))
            progress.set_postfix(loss=f"{float(total) / max(count, 1):.4f}")  # a sync point, once per batch
            if between_batches is not None:
                between_batches(batch, float(total), count)
        progress.close()
        return float(total) / max(count, 1)

    # ------------------------------------------------------- offline baseline
    def store_incremental_batch(self, curr_loader, verbose: bool = True) -> None:
        """Encode every example of ``curr_loader`` and add its codes to the buffer, with no SGD step."""
        if self.learner is None:
            raise RuntimeError("call fit_pq (base initialisation) or resume before adding examples")
        for images, labels, ids in tqdm(curr_loader, desc="offline: encode", disable=not verbose, leave=False):
            self.learner.store(self._encode(images), labels.numpy(), ids.numpy())

    def reset_optimizer(self) -> None:
        """The streaming optimizer over F, without momentum history."""
        # Fused SGD: same update, about half the time of the default on this CPU.
        self.optimizer = torch.optim.SGD(self.classifier_F.parameters(), lr=self.config.start_lr, momentum=0.9,
                                         weight_decay=self.config.weight_decay, fused=True)
        if self.learner is not None:
            self.learner.set_plastic(self.classifier_F, self.optimizer)

    def fit_offline(self, epochs: int, batch_size: int = 256, lr: float = 0.1, verbose: bool = True) -> float:
        """Offline upper bound: a fresh F (from the base-init checkpoint) trained on the whole buffer.

        ``epochs`` passes of shuffled mini-batches of decoded codes (with the
        feature-map crops when they are on), SGD with momentum 0.9 and F's weight
        decay, LR on a cosine from ``lr`` to 0 over all steps. Shuffles and crops
        come from the run's generator. Returns the last epoch's mean loss.
        """
        self.classifier_F = build_plastic(self.config.classifier_F, self.classifier_ckpt,
                                          self.num_classes).to(self.device)
        self.optimizer = torch.optim.SGD(self.classifier_F.parameters(), lr=lr, momentum=0.9,
                                         weight_decay=self.config.weight_decay, fused=True)
        learner = self.learner
        learner.set_plastic(self.classifier_F, self.optimizer)
        self.classifier_F.train()
        size = len(learner)
        total_steps, step, loss = epochs * math.ceil(size / batch_size), 0, 0.0
        for _ in tqdm(range(epochs), desc=f"offline: F on {size} examples", disable=not verbose, leave=False):
            epoch_loss = torch.zeros((), device=self.device)
            for maps, labels in learner.stored_batches(batch_size):
                if self.config.use_random_resized_crops:
                    maps = random_resized_crop(maps, self.rng)
                step_loss = self._loss(maps, labels, labels, 1.0)
                learner.backward(step_loss)
                learner.update(0.5 * lr * (1.0 + math.cos(math.pi * step / total_steps)))
                epoch_loss += step_loss.detach() * len(labels)
                step += 1
            loss = float(epoch_loss) / max(size, 1)
        return loss

    # -------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(self, data_loader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predictions ``(N,)``, softmax probabilities ``(N, num_classes)`` float32, labels ``(N,)``.

        G's features are encoded and decoded first, so F sees what it trains on.
        """
        self.classifier_F.eval()
        probas, all_labels = [], []
        for batch in data_loader:
            maps = self.pq.reconstruct_maps(self._features(batch[0]), self.config.pq_backend)
            probas.append(self._probas(maps))
            all_labels.append(batch[1])
        probas = torch.cat(probas).numpy() if probas else np.zeros((0, self.num_classes), np.float32)
        labels = torch.cat(all_labels).numpy() if all_labels else np.zeros(0, np.int64)
        return probas.argmax(1), probas, labels

    def _probas(self, maps: torch.Tensor) -> torch.Tensor:
        """F's softmax on reconstructed maps, float32 on the CPU (F in eval mode, no grad: the callers')."""
        return torch.softmax(self.classifier_F(maps), dim=1).float().cpu()

    @torch.no_grad()
    def encode_images(self, data_loader) -> tuple[np.ndarray, torch.Tensor]:
        """Example ids ``(N,)`` and codes ``(N, H, W, M)`` uint8 (on the CPU) of a loader's images."""
        ids, codes = [], []
        for images, _, batch_ids in data_loader:
            codes.append(self._encode(images).cpu())
            ids.append(batch_ids.numpy())
        if not codes:
            return np.zeros(0, np.int64), torch.zeros((0, *self.replay_buffer.code_shape), dtype=torch.uint8)
        return np.concatenate(ids).astype(np.int64), torch.cat(codes)

    @torch.no_grad()
    def predict_codes(self, codes: torch.Tensor, batch_size: int) -> np.ndarray:
        """Softmax probabilities ``(N, num_classes)`` float32 from stored codes ``(N, H, W, M)``, decoded and
        classified ``batch_size`` at a time (the batches :meth:`predict` would use on the same examples)."""
        self.classifier_F.eval()
        probas = [self._probas(self.pq.decode_maps(codes[i:i + batch_size].to(self.device)))
                  for i in range(0, len(codes), batch_size)]
        return torch.cat(probas).numpy() if probas else np.zeros((0, self.num_classes), np.float32)

    # ------------------------------------------------------------ checkpoints
    def save(self, inc: int, save_full_path: str, extra_meta: dict | None = None,
             identity: dict | None = None) -> None:
        """Write ``remind_classifier_F_{inc}.pth`` (F + optimizer, for users) then ``remind_buffer_{inc}.pth``,
        the run state (the learner's: F, optimizer, codebooks, buffer, generators; plus the per-class LR
        steps). The run state is written last, so its presence marks a complete increment."""
        folder = Path(save_full_path)
        atomic_torch_save({"model_state_dict": self.classifier_F.state_dict(),
                           "optimizer_state_dict": self.optimizer.state_dict()},
                          folder / f"remind_classifier_F_{inc}.pth")
        self.save_state(folder / f"remind_buffer_{inc}.pth", {"inc": inc, **(extra_meta or {})}, identity)

    def save_state(self, path: Path, progress: dict, identity: dict | None = None) -> None:
        """The run state alone (an increment's, or one inside an increment): learner + per-class LR steps."""
        state = {"learner": self.learner.state_dict(), "class_steps": torch.from_numpy(self.class_steps.copy())}
        save_run_state(path, state, {**self.settings, **(identity or {})},
                       {"code_shape": list(self.replay_buffer.code_shape), **progress})

    def resume(self, inc: int, resume_full_path: str, identity: dict | None = None,
               allow_changes: bool = False) -> dict:
        """Load the state saved by :meth:`save` for increment ``inc``; returns its metadata."""
        path = Path(resume_full_path) / f"remind_buffer_{inc}.pth"
        meta = self.load_state(path, identity, f"deleting remind_buffer_{inc}.pth makes a rerun resume from the "
                                               "increment before", allow_changes)
        self._rewrite_unreadable_f(Path(resume_full_path) / f"remind_classifier_F_{inc}.pth")
        return meta

    def load_state(self, path: Path, identity: dict | None, if_damaged: str, allow_changes: bool = False) -> dict:
        """Load a run state written by :meth:`save_state`; returns its metadata."""
        try:
            state, meta = load_run_state(path, {**self.settings, **(identity or {})}, "REMIND run checkpoint",
                                         allow_changes)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc} ({if_damaged})") from None
        centroids = state["learner"]["codec"]["centroids"]
        self.start_from(PQCodec(centroids, device=self.device), tuple(meta["code_shape"]))
        try:
            self.learner.load_state_dict(state["learner"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path} does not fit {self.config.classifier_F}: "
                                  f"{str(exc).splitlines()[0][:200]}") from None
        self.class_steps = state["class_steps"].numpy().astype(np.int64).copy()
        return meta

    def _rewrite_unreadable_f(self, path: Path) -> None:
        """F's file of a resumed increment is a copy of what the run state holds: re-create it if damaged."""
        try:
            safe_load(path, "REMIND classifier checkpoint")
        except CheckpointError as exc:
            print(f"{exc}; re-writing it from the run state", flush=True)
            atomic_torch_save({"model_state_dict": self.classifier_F.state_dict(),
                               "optimizer_state_dict": self.optimizer.state_dict()}, path)
