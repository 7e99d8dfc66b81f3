"""The REMIND learner for class-incremental image classification.

G (frozen trunk) -> PQ codes -> replay buffer; every streamed example takes one
SGD step on F over itself plus ``num_samples`` decoded replays
(:meth:`REMINDModel.replay_step`). The offline baseline
(:meth:`REMINDModel.fit_offline`) instead stores every example's codes and
retrains a fresh F for several epochs on the whole buffer. All random draws (replay sampling,
eviction, crops, mixup) come from one numpy Generator the model owns and
checkpoints, so a resumed run continues the same sequence.
"""
from __future__ import annotations

from pathlib import Path

import math

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from image_classification_experiments.resnet_models import build_plastic, build_trunk
from remind.augment import mixup, random_resized_crop, sample_mixup_lambda
from remind.buffer import ReplayBuffer
from remind.checkpoint import (CheckpointError, atomic_torch_save, load_state, rng_from_json,
                               rng_state_to_json, safe_load, save_state)
from remind.lr import step_lr_gamma
from remind.pq import MAX_POINTS_PER_CENTROID, PQCodec, check_pq_shape

# Settings a resumed run must share with the run that wrote the checkpoint.
_FIXED_SETTINGS = ("num_classes", "classifier_G", "extract_features_from", "classifier_F", "num_channels",
                   "num_codebooks", "codebook_size")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class REMINDModel:
    """Streaming learner.

    Args mirror the original's (``classifier_G``: full-network arch of the
    checkpoint; ``classifier_F``: plastic head; ``num_samples``: replays per
    step). New: ``lr_examples_per_class`` (int, or ``(num_classes,)`` array of
    per-class counts) replaces the hard-coded 1300; ``device``; ``seed``;
    ``pq_backend`` (``torch`` or ``faiss`` for encoding).
    """

    def __init__(self, num_classes: int, classifier_G: str = "ResNet18ClassifyAfterLayer4_1",
                 extract_features_from: str = "model.layer4.0", classifier_F: str = "ResNet18_StartAt_Layer4_1",
                 classifier_ckpt: str | None = None, weight_decay: float = 1e-5,
                 lr_mode: str = "step_lr_per_class", lr_step_size: int = 100, start_lr: float = 0.1,
                 end_lr: float = 0.001, lr_examples_per_class=1300, num_samples: int = 50,
                 use_mixup: bool = False, mixup_alpha: float = 0.1, grad_clip: float | None = None,
                 num_channels: int = 512, num_codebooks: int = 32, codebook_size: int = 256,
                 use_random_resize_crops: bool = True, max_buffer_size: int | None = None,
                 device: str | None = None, seed: int = 0, pq_backend: str = "torch"):
        check_pq_shape(num_channels, num_codebooks, codebook_size)
        if lr_mode not in ("step_lr_per_class", "constant"):
            raise ValueError(f"unknown --lr_mode {lr_mode!r}; use step_lr_per_class or constant")
        self.settings = dict(num_classes=num_classes, classifier_G=classifier_G,
                             extract_features_from=extract_features_from, classifier_F=classifier_F,
                             num_channels=num_channels, num_codebooks=num_codebooks, codebook_size=codebook_size)
        self.num_classes = num_classes
        self.classifier_ckpt, self.weight_decay = classifier_ckpt, weight_decay
        self.device = torch.device(device or default_device())
        self.classifier_G = build_trunk(classifier_G, classifier_ckpt, extract_features_from,
                                        num_classes).to(self.device)
        self.classifier_F = build_plastic(classifier_F, classifier_ckpt, num_classes).to(self.device)
        self.start_lr = start_lr
        self.reset_optimizer()
        self.criterion = nn.CrossEntropyLoss(reduction="none")

        self.lr_mode, self.start_lr = lr_mode, start_lr
        self.lr_step_size = lr_step_size
        per_class = np.broadcast_to(np.asarray(lr_examples_per_class, dtype=np.float64), (num_classes,))
        self.lr_gamma = np.array([step_lr_gamma(start_lr, end_lr, lr_step_size, max(int(n), 1))
                                  for n in per_class])
        self.class_steps = np.zeros(num_classes, dtype=np.int64)  # SGD steps spent on each class

        self.num_samples = num_samples
        self.use_mixup, self.mixup_alpha = use_mixup, mixup_alpha
        self.grad_clip = grad_clip
        self.num_channels, self.num_codebooks, self.codebook_size = num_channels, num_codebooks, codebook_size
        self.use_random_resize_crops = use_random_resize_crops
        self.max_buffer_size = max_buffer_size
        self.pq_backend = pq_backend
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.pq: PQCodec | None = None
        self.replay_buffer: ReplayBuffer | None = None
        # Optional object with .mark(phase) called at phase boundaries of a step (benchmarks/bench_stream.py).
        self.phase_timer = None

    # ----------------------------------------------------------------- features
    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """G's feature maps ``(B, C, H, W)`` for ``images (B, 3, S, S)``."""
        maps = self.classifier_G(images.to(self.device, non_blocking=True))
        if maps.shape[1] != self.num_channels:
            raise ValueError(f"G ({self.settings['extract_features_from']}) gives {maps.shape[1]} channels but "
                             f"--num_channels is {self.num_channels}; set --num_channels {maps.shape[1]}")
        return maps

    def _new_buffer(self, code_shape) -> ReplayBuffer:
        return ReplayBuffer(code_shape, self.num_classes, self.max_buffer_size, self.device)

    def fit_pq(self, base_loader, max_cached_bytes: int = 2 << 30) -> None:
        """Base initialisation: train the PQ on G's base-init vectors, then fill the buffer with their codes.

        The PQ trains on ``codebook_size * 256`` vectors sampled uniformly from
        all base-init positions (faiss would subsample to that many anyway).
        Feature maps are kept for encoding when they fit in
        ``max_cached_bytes``; otherwise G runs a second pass.
        """
        sampler = np.random.default_rng(self.seed + 1)
        cached, train_vectors, offset = [], [], 0
        num_vectors, keep_cache = None, True
        for images, labels, ids in tqdm(base_loader, desc="base init: G features", leave=False):
            maps = self._features(images)
            b, c, h, w = maps.shape
            if num_vectors is None:
                num_vectors = len(base_loader.dataset) * h * w
                wanted = min(num_vectors, self.codebook_size * MAX_POINTS_PER_CENTROID)
                chosen = np.sort(sampler.choice(num_vectors, wanted, replace=False))
                keep_cache = len(base_loader.dataset) * c * h * w * 4 <= max_cached_bytes
            vectors = maps.permute(0, 2, 3, 1).reshape(-1, c)
            here = chosen[(chosen >= offset) & (chosen < offset + len(vectors))] - offset
            train_vectors.append(vectors[torch.from_numpy(here).to(vectors.device)].cpu())
            offset += len(vectors)
            if keep_cache:
                cached.append((maps.cpu(), labels, ids))
        if num_vectors is None:
            raise ValueError("the base-init loader is empty; check --base_init_classes and the label files")
        self.pq = PQCodec.train(torch.cat(train_vectors).numpy(), self.num_codebooks, self.codebook_size,
                                device=self.device)
        self.replay_buffer = self._new_buffer((h, w, self.num_codebooks))
        batches = cached if keep_cache else ((self._features(x), y, i) for x, y, i in base_loader)
        for maps, labels, ids in tqdm(batches, desc="base init: encode", leave=False):
            codes = self.pq.encode_maps(maps.to(self.device), self.pq_backend)
            self.replay_buffer.add_batch(codes, labels.numpy(), ids.numpy())

    # ---------------------------------------------------------------- training
    def current_lr(self, label: int) -> float:
        if self.lr_mode == "constant":
            return self.start_lr
        return float(self.start_lr * self.lr_gamma[label] ** (self.class_steps[label] // self.lr_step_size))

    def _draw_replay_slots(self) -> np.ndarray:
        wanted = self.num_samples * (2 if self.use_mixup else 1)
        slots = self.replay_buffer.sample(wanted, self.rng)
        if self.use_mixup and len(slots) < wanted:
            slots = slots[:2 * (len(slots) // 2)]  # mixup pairs the first half with the second
        return slots

    def _decode_augmented(self, codes: torch.Tensor) -> torch.Tensor:
        """Decode ``(n, H, W, M)`` codes to maps ``(n, C, H, W)``, random-resized-cropped when crops are on."""
        maps = self.pq.decode_maps(codes, contiguous=not self.use_random_resize_crops)
        if self.phase_timer is not None:
            self.phase_timer.mark("sample_decode")
        if self.use_random_resize_crops:
            maps = random_resized_crop(maps, self.rng)
        return maps

    def replay_step(self, new_codes: torch.Tensor, label: int) -> torch.Tensor:
        """One SGD step on F over the new example plus replayed ones; returns the loss (a 0-d tensor, no sync).

        Args:
            new_codes: ``(H, W, M)`` uint8 codes of the new example.
            label: its class.
        """
        slots = self._draw_replay_slots()
        replay_codes, replay_labels = self.replay_buffer.gather(slots)
        codes = torch.cat([new_codes.unsqueeze(0).to(self.device), replay_codes])
        labels = torch.cat([torch.tensor([label], device=self.device), replay_labels])
        maps = self._decode_augmented(codes)
        if self.use_mixup and len(slots) >= 2:
            half = len(slots) // 2
            lam = sample_mixup_lambda(self.rng, self.mixup_alpha)
            inputs = torch.cat([maps[:1], mixup(maps[1:1 + half], maps[1 + half:], lam)])
            labels_a, labels_b = labels[:1 + half], torch.cat([labels[:1], labels[1 + half:]])
        else:
            lam, inputs, labels_a, labels_b = 1.0, maps, labels, labels
        if self.phase_timer is not None:
            self.phase_timer.mark("augment")
        loss = self._sgd_step(inputs, labels_a, labels_b, lam, self.current_lr(label))
        self.class_steps[label] += 1
        return loss

    def _sgd_step(self, inputs, labels_a, labels_b, lam: float, lr: float) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        output = self.classifier_F(inputs)
        loss = self.criterion(output, labels_a)
        if lam != 1.0:
            loss = lam * loss + (1.0 - lam) * self.criterion(output, labels_b)
        loss = loss.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.phase_timer is not None:
            self.phase_timer.mark("f_forward_backward")
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.classifier_F.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.phase_timer is not None:
            self.phase_timer.mark("optimizer")
        return loss.detach()

    def fit_incremental_batch(self, curr_loader, verbose: bool = True) -> float:
        """Stream every example of ``curr_loader`` (batches of ``(images, labels, ids)``) once, in order.

        Returns the mean training loss.
        """
        if self.replay_buffer is None:
            raise RuntimeError("call fit_pq (base initialisation) or resume before streaming")
        self.classifier_F.train()
        total, count = torch.zeros((), device=self.device), 0
        progress = tqdm(total=len(curr_loader.dataset), desc="streaming", disable=not verbose, leave=False)
        for images, labels, ids in curr_loader:
            batch_codes = self.pq.encode_maps(self._features(images), self.pq_backend)
            for codes, label, example_id in zip(batch_codes, labels.tolist(), ids.tolist()):
                total += self.replay_step(codes, label)
                self.replay_buffer.insert(codes, label, example_id, self.rng)
                count += 1
            progress.update(len(labels))
            progress.set_postfix(loss=f"{float(total) / max(count, 1):.4f}")  # a sync point, once per batch
        progress.close()
        return float(total) / max(count, 1)

    # ------------------------------------------------------- offline baseline
    def store_incremental_batch(self, curr_loader, verbose: bool = True) -> None:
        """Encode every example of ``curr_loader`` and add its codes to the buffer, with no SGD step."""
        if self.replay_buffer is None:
            raise RuntimeError("call fit_pq (base initialisation) or resume before adding examples")
        for images, labels, ids in tqdm(curr_loader, desc="offline: encode", disable=not verbose, leave=False):
            codes = self.pq.encode_maps(self._features(images), self.pq_backend)
            self.replay_buffer.add_batch(codes, labels.numpy(), ids.numpy())

    def reset_optimizer(self) -> None:
        """The streaming optimizer over F, without momentum history."""
        # Fused SGD: same update, about half the time of the default on this CPU.
        self.optimizer = torch.optim.SGD(self.classifier_F.parameters(), lr=self.start_lr, momentum=0.9,
                                         weight_decay=self.weight_decay, fused=True)

    def fit_offline(self, epochs: int, batch_size: int = 256, lr: float = 0.1, verbose: bool = True) -> float:
        """Offline upper bound: a fresh F (from the base-init checkpoint) trained on the whole buffer.

        ``epochs`` passes of shuffled mini-batches of decoded codes (with the
        feature-map crops when they are on), SGD with momentum 0.9 and F's weight
        decay, LR on a cosine from ``lr`` to 0 over all steps. Shuffles and crops
        come from the run's generator. Returns the last epoch's mean loss.
        """
        self.classifier_F = build_plastic(self.settings["classifier_F"], self.classifier_ckpt,
                                          self.num_classes).to(self.device)
        self.optimizer = torch.optim.SGD(self.classifier_F.parameters(), lr=lr, momentum=0.9,
                                         weight_decay=self.weight_decay, fused=True)
        self.classifier_F.train()
        size = len(self.replay_buffer)
        total_steps, step, loss = epochs * math.ceil(size / batch_size), 0, 0.0
        for _ in tqdm(range(epochs), desc=f"offline: F on {size} examples", disable=not verbose, leave=False):
            order, epoch_loss = self.rng.permutation(size), torch.zeros((), device=self.device)
            for start in range(0, size, batch_size):
                codes, labels = self.replay_buffer.gather(order[start:start + batch_size])
                maps = self._decode_augmented(codes)
                step_lr = 0.5 * lr * (1.0 + math.cos(math.pi * step / total_steps))
                epoch_loss += self._sgd_step(maps, labels, labels, 1.0, step_lr) * len(labels)
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
            maps = self.pq.reconstruct_maps(self._features(batch[0]), self.pq_backend)
            probas.append(torch.softmax(self.classifier_F(maps), dim=1).float().cpu())
            all_labels.append(batch[1])
        probas = torch.cat(probas).numpy() if probas else np.zeros((0, self.num_classes), np.float32)
        labels = torch.cat(all_labels).numpy() if all_labels else np.zeros(0, np.int64)
        return probas.argmax(1), probas, labels

    # ------------------------------------------------------------ checkpoints
    def save(self, inc: int, save_full_path: str, extra_meta: dict | None = None) -> None:
        """Write ``remind_classifier_F_{inc}.pth`` (F + optimizer) then ``remind_buffer_{inc}.pth``
        (codes, labels, ids, codebooks, per-class LR steps, RNG state). The buffer file is written
        last, so its presence marks a complete increment."""
        folder = Path(save_full_path)
        atomic_torch_save({"model_state_dict": self.classifier_F.state_dict(),
                           "optimizer_state_dict": self.optimizer.state_dict()},
                          folder / f"remind_classifier_F_{inc}.pth")
        tensors = {f"buffer.{k}": v for k, v in self.replay_buffer.state_dict().items()}
        tensors["pq_centroids"] = self.pq.centroids.cpu()
        tensors["class_steps"] = torch.from_numpy(self.class_steps.copy())
        meta = {"inc": inc, "settings": self.settings, "rng": rng_state_to_json(self.rng),
                "code_shape": list(self.replay_buffer.code_shape), **(extra_meta or {})}
        save_state(folder / f"remind_buffer_{inc}.pth", tensors, meta)

    def resume(self, inc: int, resume_full_path: str) -> dict:
        """Load the state saved by :meth:`save` for increment ``inc``; returns its metadata."""
        folder = Path(resume_full_path)
        try:
            tensors, meta = load_state(folder / f"remind_buffer_{inc}.pth", "REMIND buffer checkpoint")
        except CheckpointError as exc:
            raise CheckpointError(f"{exc} (deleting remind_buffer_{inc}.pth makes a rerun resume from the "
                                  "increment before)") from None
        differing = {k: (meta["settings"].get(k), v) for k, v in self.settings.items()
                     if meta["settings"].get(k) != v}
        if differing:
            name, (saved, now) = next(iter(differing.items()))
            raise CheckpointError(f"checkpoint {folder} was written with {name}={saved!r} but this run has "
                                  f"{now!r}; use the same settings or another --save_dir")
        f_state = safe_load(folder / f"remind_classifier_F_{inc}.pth", "REMIND classifier checkpoint")
        try:
            self.classifier_F.load_state_dict(f_state["model_state_dict"])
            self.optimizer.load_state_dict(f_state["optimizer_state_dict"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{folder}/remind_classifier_F_{inc}.pth does not fit "
                                  f"{self.settings['classifier_F']}: {str(exc).splitlines()[0][:200]}") from None
        self.pq = PQCodec(tensors["pq_centroids"].numpy(), device=self.device)
        self.replay_buffer = self._new_buffer(tuple(meta["code_shape"]))
        self.replay_buffer.load_state_dict({k[len("buffer."):]: v for k, v in tensors.items()
                                            if k.startswith("buffer.")})
        self.class_steps = tensors["class_steps"].numpy().astype(np.int64).copy()
        self.rng = rng_from_json(meta["rng"])
        return meta
