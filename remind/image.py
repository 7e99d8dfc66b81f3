"""REMIND for image classification over any frozen trunk G and plastic head F: the library's front door.

    >>> from remind import REMIND, PRESETS, split_torchvision
    >>> G, F = split_torchvision("resnet18", "layer4.0", num_classes=10)    # or your own two modules
    >>> learner = REMIND(G, F, PRESETS["digits_demo"], device="cpu")
    >>> learner.fit_base(base_loader)        # train the PQ on G's maps, store their codes
    >>> learner.fit_stream(stream_loader)    # one replay step per example, in the loader's order
    >>> learner.evaluate(test_loader)        # {'top1': ..., 'top5': ..., 'examples': N}
    >>> learner.save_checkpoint("remind.pth")  # F, optimizer, codebooks, buffer, generator
    >>> learner.compute.snapshot()           # updates, sample passes through F, seconds by phase, examples/s

Loaders yield ``(images, labels)`` or ``(images, labels, ids)`` batches
(``images (B, 3, S, S)`` float, ``labels (B,)`` int64 class indices in
``[0, num_classes)``). F must have been trained with G on base-init data
(the paper's base initialisation); :class:`REMIND` then learns each new
example once: G's maps are coded by the product quantiser, ``replays_per_step``
stored examples are drawn, decoded, cropped and mixed, and F takes one SGD step
at the per-class learning rate; then the new codes are stored.

Every random draw (replays, eviction, crops, mixup, the offline shuffles)
comes from one numpy Generator seeded by ``config.seed`` and saved by
:meth:`REMIND.state_dict`; the learner never sets torch's global random
state (only dropout inside F, if F has any, draws from it, as any torch
module does).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from remind.augment import mixup, random_resized_crop, sample_mixup_lambda
from remind.buffer import ReplayBuffer
from remind.checkpoint import CheckpointError, load_run_state, save_run_state
from remind.compute import ComputeMeter
from remind.config import REMINDConfig
from remind.learner import ReplayBatch, StreamingLearner
from remind.lr import step_lr_gamma
from remind.metrics import topk_accuracy
from remind.pq import MAX_POINTS_PER_CENTROID, PQCodec, TrainingVectorSampler, check_pq_shape

# Settings a state must share with the learner that loads it.
IDENTITY_FIELDS = ("num_classes", "num_codebooks", "codebook_size")


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _unpack(batch, next_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images, labels, ids)`` of a loader batch; batches without ids get consecutive ones from ``next_id``."""
    images, labels = batch[0], torch.as_tensor(batch[1]).reshape(-1).long()
    ids = torch.as_tensor(batch[2]).reshape(-1).long() if len(batch) > 2 else \
        torch.arange(next_id, next_id + len(labels), dtype=torch.long)
    return images, labels, ids


class REMIND:
    """Streaming image classification with replay of product-quantised feature maps (Hayes et al., 2020).

    Args:
        trunk: G, frozen: images ``(B, 3, S, S)`` -> maps ``(B, C, H, W)``. Put in eval mode, never trained.
        head: F, plastic: maps ``(B, C, H, W)`` -> logits ``(B, num_classes)``. Trained by SGD (momentum 0.9,
            ``config.weight_decay``).
        config: REMIND's settings (:class:`remind.REMINDConfig`, or a preset of ``remind.PRESETS``).
        device: where G, F, the codebooks and the buffer live (default: cuda when present).
        **settings: config fields to override (``replays_per_step=0`` fine-tunes).

    Attributes:
        compute: a :class:`remind.compute.ComputeMeter` counting what the learner does (examples streamed,
            optimizer updates, rows through F, test examples) and timing it by phase; it is saved and restored
            with :meth:`save_checkpoint` / :meth:`load_checkpoint`.
    """

    def __init__(self, trunk: nn.Module, head: nn.Module, config: REMINDConfig | None = None,
                 device: str | torch.device | None = None, **settings):
        config = dataclasses.replace(config or REMINDConfig(), **settings)
        if isinstance(config.lr_examples_per_class, str):
            raise ValueError("lr_examples_per_class 'auto' must be resolved to counts (one per class) before "
                             "building the learner")
        self.config, self.num_classes = config, config.num_classes
        self.device = torch.device(device or _default_device())
        self.classifier_G = trunk.to(self.device).eval().requires_grad_(False)
        self.classifier_F = head.to(self.device)
        self.learner: StreamingLearner | None = None  # created by fit_base, load_state_dict or start_from
        self.criterion = nn.CrossEntropyLoss(reduction="none")
        per_class = np.broadcast_to(np.asarray(config.lr_examples_per_class, dtype=np.float64), (self.num_classes,))
        self.lr_gamma = np.array([step_lr_gamma(config.start_lr, config.end_lr, config.lr_step_size, max(int(n), 1))
                                  for n in per_class])
        self.class_steps = np.zeros(self.num_classes, dtype=np.int64)  # SGD steps spent on each class
        self._first_rng = np.random.default_rng(config.seed)  # handed to the learner when it is created
        self._next_id = 0  # ids given to examples of loaders that carry none
        self._map_shapes: dict[int, tuple[int, int, int]] = {}  # image side -> (C, H, W) of G's maps
        self.compute = ComputeMeter(self.device)  # updates, sample passes, seconds by phase (remind.compute)
        self.reset_optimizer()

    # ----------------------------------------------------------------- parts
    @property
    def trunk(self) -> nn.Module:
        """G (the original's name: ``classifier_G``)."""
        return self.classifier_G

    @property
    def head(self) -> nn.Module:
        """F, the network being trained (the original's name: ``classifier_F``; replaced by :meth:`fit_offline`)."""
        return self.classifier_F

    @property
    def pq(self) -> PQCodec | None:
        """The product quantiser (None before base initialisation)."""
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
        """The settings that fix the network outputs and code geometry (checked when a state is loaded)."""
        return {k: getattr(self.config, k) for k in IDENTITY_FIELDS}

    def map_shape(self, image_size: int) -> tuple[int, int, int]:
        """``(C, H, W)`` of G's maps for ``image_size`` px images, checked against the PQ geometry (G runs once
        per size on a blank image; G is frozen, so the answer is kept)."""
        if image_size not in self._map_shapes:
            maps = self._features(torch.zeros(1, 3, image_size, image_size))
            self._map_shapes[image_size] = tuple(int(s) for s in maps.shape[1:])
        return self._map_shapes[image_size]

    @property
    def map_channels(self) -> int | None:
        """C of G's maps (the same at every input size), once :meth:`map_shape` has run; else None."""
        return next(iter(self._map_shapes.values()))[0] if self._map_shapes else None

    def start_from(self, codec: PQCodec, code_shape: tuple[int, int, int]) -> None:
        """Create the learner around ``codec`` with an empty buffer of ``code_shape`` (H, W, M) codes."""
        buffer = ReplayBuffer(code_shape, self.num_classes, self.config.max_buffer_size, self.device)
        self.learner = StreamingLearner(
            self.classifier_F, self.optimizer, codec.to(self.device), buffer, self._first_rng,
            replays_per_step=self.config.replays_per_step * (2 if self.config.use_mixup else 1),
            even_replays=self.config.use_mixup, grad_clip=self.config.grad_clip,
            contiguous_maps=not self.config.use_random_resized_crops, compute=self.compute)

    def reset_optimizer(self) -> None:
        """The streaming optimizer over F, without momentum history."""
        # Fused SGD: same update, about half the time of the default on a CPU.
        self.optimizer = torch.optim.SGD(self.classifier_F.parameters(), lr=self.config.start_lr, momentum=0.9,
                                         weight_decay=self.config.weight_decay, fused=True)
        if self.learner is not None:
            self.learner.set_plastic(self.classifier_F, self.optimizer)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """G's feature maps ``(B, C, H, W)`` for ``images (B, 3, S, S)``."""
        self.classifier_G.eval()  # a G the caller built may have been switched to train mode: BN must not move
        with torch.no_grad():
            maps = self.classifier_G(images.to(self.device, non_blocking=True))
        if maps.dim() != 4:
            raise ValueError(f"G gives outputs of shape {tuple(maps.shape)}, not (B, C, H, W) feature maps; cut the "
                             "network at a layer that outputs maps (remind.split_points lists them)")
        check_pq_shape(maps.shape[1], self.config.num_codebooks, self.config.codebook_size)
        return maps

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.pq.encode_maps(self._features(images), self.config.pq_backend)

    def _check_labels(self, labels: torch.Tensor) -> None:
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must be class indices in [0, {self.num_classes}), got {int(labels.min())}.."
                             f"{int(labels.max())}; set num_classes in the config")

    # ------------------------------------------------------- base initialisation
    def fit_base(self, base_loader: Iterable, head_epochs: int = 0, head_lr: float = 0.1,
                 head_batch_size: int = 256, max_cached_bytes: int = 2 << 30) -> None:
        """Base initialisation: train the PQ on G's maps of ``base_loader``, then store their codes.

        ``head_epochs > 0`` then also trains F on the stored (decoded) base examples for that many epochs
        (:meth:`fit_offline`: mini-batches of ``head_batch_size``, cosine LR from ``head_lr``) and starts the
        stream with a fresh optimizer: for an F that was not trained with G on these classes (a new
        classifier). The PQ trains on ``codebook_size * 256`` vectors (one per map position) sampled
        uniformly from all base-init positions (faiss would subsample to that many anyway). Maps are kept
        for encoding when they fit in ``max_cached_bytes``; otherwise G runs a second pass over the loader.
        The time goes to the ``base_init`` phase of :attr:`compute`.
        """
        with self.compute.phase("base_init"):
            self._fit_base(base_loader, head_epochs, head_lr, head_batch_size, max_cached_bytes)

    def _fit_base(self, base_loader: Iterable, head_epochs: int, head_lr: float, head_batch_size: int,
                  max_cached_bytes: int) -> None:
        cached, sampler, keep_cache, first_id = [], None, True, self._next_id
        total = _dataset_size(base_loader)
        if total is None:
            raise ValueError("fit_base needs a loader whose dataset has a length (a torch DataLoader over a "
                             "Dataset): the PQ's training vectors are drawn uniformly over all its examples")
        for batch in tqdm(base_loader, desc="base init: G features", leave=False):
            images, labels, ids = _unpack(batch, self._next_id)
            self._check_labels(labels)
            self._next_id += len(labels)
            maps = self._features(images)
            b, c, h, w = maps.shape
            if sampler is None:
                wanted = self.config.codebook_size * MAX_POINTS_PER_CENTROID
                examples = total
                sampler = TrainingVectorSampler(examples * h * w, wanted, np.random.default_rng(self.config.seed + 1))
                keep_cache = examples * c * h * w * 4 <= max_cached_bytes
            sampler.take(maps.permute(0, 2, 3, 1).reshape(-1, c))
            if keep_cache:
                cached.append((maps.cpu(), labels, ids))
        if sampler is None:
            raise ValueError("the base-init loader is empty; give it the base classes' examples")
        codec = PQCodec.train(sampler.vectors(), self.config.num_codebooks, self.config.codebook_size,
                              device=self.device)
        self.start_from(codec, (h, w, self.config.num_codebooks))
        batches = cached if keep_cache else self._maps_again(base_loader, first_id)
        for maps, labels, ids in tqdm(batches, desc="base init: encode", leave=False):
            self.learner.store(self.pq.encode_maps(maps.to(self.device), self.config.pq_backend),
                               labels.numpy(), ids.numpy())
        if head_epochs > 0:  # part of base initialisation (not the offline phase of the compute record)
            self._fit_offline(self.classifier_F, head_epochs, head_batch_size, head_lr, verbose=False)
            self.reset_optimizer()

    def _maps_again(self, loader: Iterable, first_id: int):
        """G's maps, labels and ids of a second pass over ``loader``, ids numbered as in the first pass."""
        for batch in loader:
            images, labels, ids = _unpack(batch, first_id)
            first_id += len(labels)
            yield self._features(images), labels, ids

    # ---------------------------------------------------------------- training
    def current_lr(self, label: int) -> float:
        """The learning rate of the next step on class ``label`` (per-class step decay, or constant)."""
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
        if not torch.is_tensor(output):
            raise TypeError(f"F returns a {type(output).__name__} in train mode, not a tensor of logits (auxiliary "
                            "classifiers, as GoogLeNet's and Inception's?); build the network without them "
                            "(aux_logits=False) or wrap F to return the logits")
        loss = self.criterion(output, labels_a)
        if lam != 1.0:
            loss = lam * loss + (1.0 - lam) * self.criterion(output, labels_b)
        return loss.mean()

    def _replay_loss(self, batch: ReplayBatch) -> torch.Tensor:
        inputs, labels_a, labels_b, lam = self._augment(batch)
        batch.net_rows = len(inputs)  # with mixup, fewer rows than examples drawn (the compute record's count)
        return self._loss(inputs, labels_a, labels_b, lam)

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

    def learn(self, images: torch.Tensor, labels, ids=None) -> torch.Tensor:
        """Learn one batch of the stream: G and the encoder run on the whole batch, then one replay step per
        example, in order. Returns the sum of the steps' losses (a 0-d tensor on the device)."""
        if self.learner is None:
            raise RuntimeError("call fit_base (base initialisation) or load_state_dict before learning")
        labels = torch.as_tensor(labels).reshape(-1).long()
        self._check_labels(labels)
        ids = torch.arange(self._next_id, self._next_id + len(labels)) if ids is None else torch.as_tensor(ids)
        self._next_id += len(labels)
        self.classifier_F.train()
        with self.compute.phase("trunk"):
            codes = self._encode(images)
        with self.compute.phase("replay"):
            total = torch.zeros((), device=self.device)
            for example_codes, label, example_id in zip(codes, labels.tolist(), ids.reshape(-1).tolist()):
                total += self.replay_step(example_codes, label, example_id, insert=True)
        self.compute.count_streamed(len(labels))
        return total

    def fit_stream(self, loader: Iterable, verbose: bool = True, between_batches=None, first_batch: int = 0,
                   loss_so_far: tuple[float, int] = (0.0, 0)) -> float:
        """Learn every example of ``loader`` once, in order (:meth:`learn` per batch); returns the mean loss.

        ``between_batches(batches_done, loss_total, count)`` is called after each batch, where the state is
        complete (a checkpoint may be taken there). A stream resumed after ``first_batch`` batches passes a
        loader over the remaining examples, that number and the loss accumulated so far.
        """
        total = torch.tensor(loss_so_far[0], dtype=torch.float32, device=self.device)
        count = loss_so_far[1]
        progress = tqdm(total=_dataset_size(loader), desc="streaming", disable=not verbose, leave=False)
        for batch_number, batch in enumerate(self.compute.timed(loader, "data"), start=first_batch + 1):
            images, labels, ids = _unpack(batch, self._next_id)
            total += self.learn(images, labels, ids)
            count += len(labels)
            progress.update(len(labels))
            progress.set_postfix(loss=f"{float(total) / max(count, 1):.4f}")  # a sync point, once per batch
            if between_batches is not None:
                between_batches(batch_number, float(total), count)
        progress.close()
        return float(total) / max(count, 1)

    def store(self, loader: Iterable, verbose: bool = True) -> None:
        """Encode every example of ``loader`` and add its codes to the buffer, with no SGD step."""
        if self.learner is None:
            raise RuntimeError("call fit_base (base initialisation) or load_state_dict before adding examples")
        for batch in tqdm(self.compute.timed(loader, "data"), desc="encode", disable=not verbose, leave=False):
            images, labels, ids = _unpack(batch, self._next_id)
            self._check_labels(labels)
            self._next_id += len(labels)
            with self.compute.phase("trunk"):
                self.learner.store(self._encode(images), labels.numpy(), ids.numpy())
            self.compute.count_streamed(len(labels))

    def fit_offline(self, head: nn.Module, epochs: int, batch_size: int = 256, lr: float = 0.1,
                    verbose: bool = True, phase: str = "offline") -> float:
        """Offline upper bound: train ``head`` (a fresh F) on every stored example, and use it from now on.

        ``epochs`` passes of shuffled mini-batches of decoded codes (with the feature-map crops when they
        are on), SGD with momentum 0.9 and F's weight decay, LR on a cosine from ``lr`` to 0 over all steps.
        Shuffles and crops come from the run's generator. Returns the last epoch's mean loss. The time goes
        to ``phase`` of :attr:`compute` (``base_init`` when this trains F at base initialisation).
        """
        with self.compute.phase(phase):
            return self._fit_offline(head, epochs, batch_size, lr, verbose)

    def _fit_offline(self, head: nn.Module, epochs: int, batch_size: int, lr: float, verbose: bool) -> float:
        self.classifier_F = head.to(self.device)
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
                learner.update(0.5 * lr * (1.0 + math.cos(math.pi * step / total_steps)), samples=len(labels))
                epoch_loss += step_loss.detach() * len(labels)
                step += 1
            loss = float(epoch_loss) / max(size, 1)
        return loss

    # -------------------------------------------------------------- inference
    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``(B, num_classes)`` float32 on the CPU for ``images (B, 3, S, S)``.

        G's maps are encoded and decoded first, so F sees what it trains on.
        """
        if self.learner is None:
            raise RuntimeError("call fit_base (base initialisation) or load_state_dict before predicting")
        self.classifier_F.eval()
        with self.compute.phase("evaluation"):
            probas = torch.softmax(self.logits(images), dim=1).float().cpu()
        self.compute.count_evaluated(len(probas))
        return probas

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """F's logits ``(B, num_classes)`` on G's maps of ``images``, encoded and decoded first (what F trains
        on); before base initialisation (no quantiser yet) on G's maps themselves. F's mode is the caller's."""
        maps = self._features(images)
        if self.pq is not None:
            maps = self.pq.reconstruct_maps(maps, self.config.pq_backend)
        return self.classifier_F(maps)

    @torch.no_grad()
    def predict(self, data_loader: Iterable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predictions ``(N,)``, softmax probabilities ``(N, num_classes)`` float32, labels ``(N,)``."""
        probas, all_labels = [], []
        for batch in data_loader:
            probas.append(self.predict_proba(batch[0]))
            all_labels.append(torch.as_tensor(batch[1]).reshape(-1))
        probas = torch.cat(probas).numpy() if probas else np.zeros((0, self.num_classes), np.float32)
        labels = torch.cat(all_labels).numpy() if all_labels else np.zeros(0, np.int64)
        return probas.argmax(1), probas, labels

    def evaluate(self, data_loader: Iterable) -> dict[str, float]:
        """Top-1 and top-5 accuracy (%) on a loader's examples: ``{'top1': ..., 'top5': ..., 'examples': N}``."""
        _, probas, labels = self.predict(data_loader)
        if not len(labels):
            raise ValueError("the evaluation loader is empty")
        top1, top5 = topk_accuracy(probas, labels, topk=(1, min(5, self.num_classes)))
        return {"top1": top1, "top5": top5, "examples": int(len(labels))}

    def _probas(self, maps: torch.Tensor) -> torch.Tensor:
        """F's softmax on reconstructed maps, float32 on the CPU (F in eval mode, no grad: the callers')."""
        return torch.softmax(self.classifier_F(maps), dim=1).float().cpu()

    @torch.no_grad()
    def encode_images(self, data_loader: Iterable) -> tuple[np.ndarray, torch.Tensor]:
        """Example ids ``(N,)`` and codes ``(N, H, W, M)`` uint8 (on the CPU) of a loader's images."""
        ids, codes = [], []
        for batch in data_loader:
            images, _, batch_ids = _unpack(batch, 0)
            codes.append(self._encode(images).cpu())
            ids.append(batch_ids.numpy())
        if not codes:
            return np.zeros(0, np.int64), torch.zeros((0, *self.replay_buffer.code_shape), dtype=torch.uint8)
        return np.concatenate(ids).astype(np.int64), torch.cat(codes)

    @torch.no_grad()
    def predict_codes(self, codes: torch.Tensor, batch_size: int) -> np.ndarray:
        """Softmax probabilities ``(N, num_classes)`` float32 from stored codes ``(N, H, W, M)``, decoded and
        classified ``batch_size`` at a time."""
        self.classifier_F.eval()
        with self.compute.phase("evaluation"):
            probas = [self._probas(self.pq.decode_maps(codes[i:i + batch_size].to(self.device)))
                      for i in range(0, len(codes), batch_size)]
        self.compute.count_evaluated(len(codes))
        return torch.cat(probas).numpy() if probas else np.zeros((0, self.num_classes), np.float32)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """F, its optimizer, the codebooks, the buffer, the generator and the per-class LR steps (tensors,
        strings and numbers: loads with ``weights_only``)."""
        if self.learner is None:
            raise RuntimeError("nothing to save before base initialisation (fit_base)")
        return {"learner": self.learner.state_dict(), "class_steps": torch.from_numpy(self.class_steps.copy()),
                "code_shape": torch.tensor(self.replay_buffer.code_shape), "next_id": self._next_id}

    def load_state_dict(self, state: dict, restore_global_rng: bool = False) -> None:
        """Restore :meth:`state_dict`'s output. ``restore_global_rng`` also sets torch's global generators
        to the saved ones (what a resumed script wants, for dropout; never an embedded learner)."""
        centroids = state["learner"]["codec"]["centroids"]  # (M, K, C / M)
        code_shape = tuple(int(s) for s in state["code_shape"])
        saved = (int(centroids.shape[0]), int(centroids.shape[1]))
        if saved != (self.config.num_codebooks, self.config.codebook_size):
            raise ValueError(f"the state holds {saved[0]} codebooks of {saved[1]} centroids, this learner's config "
                             f"{self.config.num_codebooks} of {self.config.codebook_size}; build it with the "
                             "config the state was saved with")
        self.start_from(PQCodec(centroids, device=self.device), code_shape)
        self.learner.load_state_dict(state["learner"], restore_global_rng=restore_global_rng)
        self.class_steps = state["class_steps"].numpy().astype(np.int64).copy()
        self._next_id = int(state.get("next_id", 0))

    def save_checkpoint(self, path: str | Path, progress: dict | None = None, identity: dict | None = None) -> None:
        """Write :meth:`state_dict` atomically to ``path`` in the project's run-state layout (with the
        learner's settings, checked by :meth:`load_checkpoint`)."""
        with self.compute.phase("checkpoint"):
            save_run_state(path, self.state_dict(), {**self.settings, **(identity or {})},
                           {"code_shape": list(self.replay_buffer.code_shape), **(progress or {}),
                            "compute": self.compute.state_dict()})

    def load_checkpoint(self, path: str | Path, identity: dict | None = None, allow_changes: bool = False,
             restore_global_rng: bool = False) -> dict:
        """Load a file written by :meth:`save_checkpoint` (refused when its settings differ); returns its progress."""
        state, meta = load_run_state(path, {**self.settings, **(identity or {})}, "REMIND run checkpoint",
                                     allow_changes)
        try:
            self.load_state_dict(state, restore_global_rng)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path} does not fit this learner's F: {str(exc).splitlines()[0][:200]}") from None
        if isinstance(meta.get("compute"), dict):  # what the run had spent: a resumed run goes on counting
            self.compute.load_state_dict(meta["compute"])
        return meta


def _dataset_size(loader) -> int | None:
    dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None
