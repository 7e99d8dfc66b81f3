"""REMIND's streaming step computed the way the original code computes it, for tests and timings.

This follows the structure of the original release (tyler-hayes/REMIND,
``image_classification_experiments/REMINDModel.py`` and ``utils.RandomResizeCrop``)
step for step, written anew:

- G: the *whole* full network runs (through ``layer4.1``, pooling and ``fc``) with
  autograd on; a forward hook keeps ``model.layer4.0``'s output (the original's
  ``ModelWrapper``).
- encode: G's maps go to host numpy, NHWC, then faiss ``ProductQuantizer.compute_codes``.
- buffer: ``latent_dict = {item_ix: [codes, label]}``, a ``rehearsal_ixs`` list of the
  item ids eligible for replay, a class -> list-of-item-ids dict and a counter. A new
  example is appended first; then, if the buffer is over its limit, a random item
  (``random.choice``, Python's RNG) of the class with the most items is removed with
  ``list.remove`` / ``dict.pop`` / ``list.remove``.
- replay: codes copied item by item from the dict into a numpy array and labels
  item by item into a device tensor, faiss ``pq.decode`` on the host, transpose to
  NCHW, move to the device, one ``F.interpolate`` per map for the crop, mixup on torch
  tensors, the inputs assembled in a fresh host tensor and moved to the device, SGD
  (momentum 0.9, weight decay) with one parameter group per parameter, ``loss.item()``
  every step.

Deliberate differences from the original, so both paths compute the same thing:

- Random draws are the fast path's: the replay positions, crop boxes and mixup
  lambda either come in as arguments or are drawn from a numpy Generator with the
  same calls, in the same order, as ``REMINDModel.replay_step`` (sample positions,
  ``remind.augment.sample_crop_params``, ``remind.augment.sample_mixup_lambda``; see
  :func:`draw_like_fast_path`). Positions index ``rehearsal_ixs``, which lists items in
  insertion order, so they equal the fast buffer's slots until the first eviction
  (after that the two buffers order their items differently: the fast buffer reuses
  the evicted slot, ``list.remove`` shifts the list).
- DESIGN.md's fixes: with fewer than ``r`` stored, all stored items are replayed;
  crops resize to the map's own size; the per-class step LR is computed in closed
  form instead of by chained ``StepLR`` objects.

An optional ``timer`` (any object with ``mark(phase)``) is called at phase
boundaries: ``g_forward``, ``encode``, ``sample_decode``, ``augment``,
``f_forward_backward``, ``optimizer``, ``buffer_update``.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from remind.augment import sample_crop_params, sample_mixup_lambda


def draw_like_fast_path(rng: np.random.Generator, num_stored: int, num_samples: int, use_mixup: bool,
                        mixup_alpha: float, use_crops: bool, height: int, width: int):
    """The draws of one fast-path replay step, from the same Generator calls in the same order.

    Returns ``(positions, boxes, lam)``: positions in ``range(num_stored)`` (the fast
    buffer's slots), crop boxes ``(1 + len(positions), 4)`` for the new map and the
    replays (None without crops), and the mixup lambda (1.0 without mixing).
    """
    positions = draw_positions(rng, num_stored, num_samples, use_mixup)
    boxes = sample_crop_params(rng, 1 + len(positions), height, width) if use_crops else None
    lam = sample_mixup_lambda(rng, mixup_alpha) if use_mixup and len(positions) >= 2 else 1.0
    return positions, boxes, lam


def draw_positions(rng: np.random.Generator, num_stored: int, num_samples: int, use_mixup: bool) -> np.ndarray:
    wanted = num_samples * (2 if use_mixup else 1)
    count = min(wanted, num_stored)
    if count == num_stored:
        positions = rng.permutation(num_stored)
    else:
        positions = rng.choice(num_stored, size=count, replace=False)
    if use_mixup and len(positions) < wanted:
        positions = positions[:2 * (len(positions) // 2)]
    return positions


class HookedFeatureExtractor(nn.Module):
    """Runs the whole network and returns one inner layer's output, caught by a forward hook."""

    def __init__(self, network: nn.Module, layer_name: str):
        super().__init__()
        self.network = network
        self.layer_name = layer_name
        self.outputs: dict[str, torch.Tensor] = {}
        modules = dict(network.named_modules())
        if layer_name not in modules:
            raise ValueError(f"{layer_name!r} is not a module of the network")
        modules[layer_name].register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self.outputs[self.layer_name] = output.detach()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.network(images)  # everything runs, down to fc; only the hooked output is used
        return self.outputs[self.layer_name]


class ReferenceBuffer:
    """The original's buffer: a dict of ``[codes, label]`` per item id, a replay list, class lists, a counter."""

    def __init__(self, max_size: int | None = None, seed: int = 0):
        self.latent_dict: dict[int, list] = {}
        self.rehearsal_ixs: list[int] = []
        self.class_id_to_item_ix_dict: dict[int, list[int]] = defaultdict(list)
        self.count = 0
        self.max_size = max_size
        self.random = random.Random(seed)

    def __len__(self) -> int:
        return len(self.rehearsal_ixs)

    def add_base_init(self, codes: np.ndarray, labels, item_ixs) -> None:
        for x, y, item_ix in zip(codes, np.asarray(labels).tolist(), np.asarray(item_ixs).tolist()):
            self.latent_dict[item_ix] = [x, np.array(y, dtype=np.int64)]
            self.rehearsal_ixs.append(item_ix)
            self.class_id_to_item_ix_dict[y].append(item_ix)
            self.count += 1

    def update(self, x: np.ndarray, y: int, item_ix: int) -> int | None:
        """Store a visited example; if over the limit, drop a random item of the largest class."""
        y, item_ix = int(y), int(item_ix)
        self.rehearsal_ixs.append(item_ix)
        self.latent_dict[item_ix] = [x, np.array(y, dtype=np.int64)]
        self.class_id_to_item_ix_dict[y].append(item_ix)
        if self.max_size is not None and self.count >= self.max_size:
            max_key = max(self.class_id_to_item_ix_dict, key=lambda c: len(self.class_id_to_item_ix_dict[c]))
            max_class_list = self.class_id_to_item_ix_dict[max_key]
            rand_item_ix = self.random.choice(max_class_list)
            max_class_list.remove(rand_item_ix)
            self.latent_dict.pop(rand_item_ix)
            self.rehearsal_ixs.remove(rand_item_ix)
            return rand_item_ix
        self.count += 1
        return None


class ReferenceREMIND:
    """The original's streaming learner, with the fast path's random draws (see the module docstring).

    Args:
        full_network: the whole base-init network (parameters named ``model.*``).
        classifier_F: the plastic head, already holding its starting weights.
        centroids: ``(M, 256, C // M)`` PQ codebooks.
    """

    def __init__(self, full_network: nn.Module, classifier_F: nn.Module, centroids: np.ndarray, num_classes: int,
                 extract_features_from: str = "model.layer4.0", num_samples: int = 50, use_mixup: bool = False,
                 mixup_alpha: float = 0.1, use_random_resize_crops: bool = True, max_buffer_size: int | None = None,
                 weight_decay: float = 1e-5, lr_mode: str = "step_lr_per_class", start_lr: float = 0.1,
                 end_lr: float = 0.001, lr_step_size: int = 100, lr_examples_per_class: int = 1300,
                 grad_clip: float | None = None, device: str | torch.device = "cpu", seed: int = 0):
        import faiss

        self.device = torch.device(device)
        self.classifier_G = HookedFeatureExtractor(full_network.to(self.device), extract_features_from)
        self.classifier_F = classifier_F.to(self.device)
        # one parameter group per parameter, as the original's get_trainable_params
        groups = [{"params": p, "lr": start_lr} for _, p in self.classifier_F.named_parameters()]
        self.optimizer = torch.optim.SGD(groups, lr=start_lr, momentum=0.9, weight_decay=weight_decay)
        self.criterion = nn.CrossEntropyLoss(reduction="none")

        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        num_codebooks, codebook_size, dsub = centroids.shape
        if codebook_size != 256:
            raise ValueError("the reference loop stores one uint8 per code, as the original: codebook_size must be 256")
        self.num_codebooks, self.num_channels = num_codebooks, num_codebooks * dsub
        self.pq = faiss.ProductQuantizer(self.num_channels, num_codebooks, 8)
        faiss.copy_array_to_vector(centroids.ravel(), self.pq.centroids)

        self.num_classes = num_classes
        self.num_samples = num_samples
        self.use_mixup, self.mixup_alpha = use_mixup, mixup_alpha
        self.use_random_resize_crops = use_random_resize_crops
        self.grad_clip = grad_clip
        self.lr_mode, self.start_lr, self.lr_step_size = lr_mode, start_lr, lr_step_size
        self.lr_gamma = math.exp(lr_step_size * math.log(end_lr / start_lr) / lr_examples_per_class)
        self.class_steps: dict[int, int] = defaultdict(int)
        self.buffer = ReferenceBuffer(max_buffer_size, seed)
        self.timer = None

    def _mark(self, phase: str) -> None:
        if self.timer is not None:
            self.timer.mark(phase)

    # ------------------------------------------------------------- G and PQ
    def extract(self, images: torch.Tensor) -> np.ndarray:
        """G's maps on the host, ``(B, C, H, W)`` float32 numpy."""
        self.classifier_G.eval()
        return self.classifier_G(images.to(self.device)).cpu().numpy()

    def encode(self, maps: np.ndarray) -> np.ndarray:
        """faiss codes ``(B, H, W, M)`` uint8 of host maps ``(B, C, H, W)``."""
        b, c, h, w = maps.shape
        vectors = np.reshape(np.transpose(maps, (0, 2, 3, 1)), (-1, c))
        codes = self.pq.compute_codes(vectors)
        return np.reshape(codes, (-1, h, w, self.num_codebooks))

    def gather(self, x: np.ndarray, y: int, item_ixs) -> tuple[np.ndarray, torch.Tensor]:
        """New codes plus the replayed items' codes (host array) and labels (device tensor), item by item."""
        data_codes = np.empty((1 + len(item_ixs), *x.shape), dtype=np.uint8)
        data_labels = torch.empty(1 + len(item_ixs), dtype=torch.long, device=self.device)
        data_codes[0] = x
        data_labels[0] = int(y)
        for ii, v in enumerate(item_ixs):
            data_codes[ii + 1] = self.buffer.latent_dict[v][0]
            data_labels[ii + 1] = torch.from_numpy(self.buffer.latent_dict[v][1])
        return data_codes, data_labels

    def decode(self, data_codes: np.ndarray) -> torch.Tensor:
        """Host faiss decode of ``(n, H, W, M)`` codes; NCHW maps on the device (strides as numpy's transpose)."""
        n, h, w, m = data_codes.shape
        recon = self.pq.decode(np.reshape(data_codes, (n * h * w, m)))
        recon = np.reshape(recon, (-1, h, w, self.num_channels))
        return torch.from_numpy(np.transpose(recon, (0, 3, 1, 2))).to(self.device)

    @staticmethod
    def crop_resize(tens: torch.Tensor, box) -> torch.Tensor:
        """One map ``(C, H, W)``: crop to ``(top, left, h, w)``, resize back bilinearly."""
        top, left, h, w = (int(v) for v in box)
        crop = tens[:, top:top + h, left:left + w]
        return F.interpolate(crop.unsqueeze(0), size=tuple(tens.shape[1:]), mode="bilinear",
                             align_corners=False).squeeze(0)

    # ------------------------------------------------------------- one step
    def current_lr(self, y: int) -> float:
        if self.lr_mode == "constant":
            return self.start_lr
        return self.start_lr * self.lr_gamma ** (self.class_steps[y] // self.lr_step_size)

    def replay_step(self, x: np.ndarray, y: int, rng: np.random.Generator | None = None, item_ixs=None,
                    crop_boxes: np.ndarray | None = None, lam: float | None = None) -> float:
        """One SGD step on the new example's codes ``x (H, W, M)`` plus replays; returns the loss.

        Either pass ``rng`` (draws are made here, at the points where the fast path
        makes them), or pass ``item_ixs``, ``crop_boxes`` (with crops) and ``lam``
        (with mixup) drawn beforehand.
        """
        y = int(y)
        if rng is not None:
            positions = draw_positions(rng, len(self.buffer.rehearsal_ixs), self.num_samples, self.use_mixup)
            item_ixs = [self.buffer.rehearsal_ixs[p] for p in positions.tolist()]
        data_codes, data_labels = self.gather(x, y, item_ixs)
        recon = self.decode(data_codes)
        self._mark("sample_decode")

        n_replay = len(item_ixs)
        if self.use_random_resize_crops:
            if rng is not None:
                crop_boxes = sample_crop_params(rng, recon.shape[0], recon.shape[2], recon.shape[3])
            transformed = torch.empty_like(recon)
            for tens_ix, tens in enumerate(recon):
                transformed[tens_ix] = self.crop_resize(tens, crop_boxes[tens_ix])
            recon = transformed

        if self.use_mixup and n_replay >= 2:
            if rng is not None:
                lam = sample_mixup_lambda(rng, self.mixup_alpha)
            half = n_replay // 2
            mixed = lam * recon[1:1 + half] + (1 - lam) * recon[1 + half:]
            data = torch.empty((half + 1, *recon.shape[1:]))
            data[0] = recon[0]
            data[1:] = mixed.clone()
            labels_a = torch.zeros(half + 1).long()
            labels_b = torch.zeros(half + 1).long()
            labels_a[0] = y
            labels_b[0] = y
            labels_a[1:] = data_labels[1:1 + half]
            labels_b[1:] = data_labels[1 + half:]
            self._mark("augment")
            output = self.classifier_F(data.to(self.device))
            loss = (lam * self.criterion(output, labels_a.to(self.device))
                    + (1 - lam) * self.criterion(output, labels_b.to(self.device)))
        else:
            self._mark("augment")
            output = self.classifier_F(recon)
            loss = self.criterion(output, data_labels)
        loss = loss.mean()
        self.optimizer.zero_grad()
        loss.backward()
        self._mark("f_forward_backward")

        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.classifier_F.parameters(), self.grad_clip)
        lr = self.current_lr(y)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.class_steps[y] += 1
        loss_value = loss.item()
        self._mark("optimizer")
        return loss_value

    def update_buffer(self, x: np.ndarray, y: int, item_ix: int) -> int | None:
        evicted = self.buffer.update(x, y, item_ix)
        self._mark("buffer_update")
        return evicted

    def fit_incremental_batch(self, batches, rng: np.random.Generator) -> list[float]:
        """Stream ``(images, labels, item_ixs)`` batches one example at a time; returns the step losses."""
        self.classifier_F.train()
        losses = []
        for images, labels, item_ixs in batches:
            maps = self.extract(images)
            self._mark("g_forward")
            codes = self.encode(maps)
            self._mark("encode")
            for x, y, item_ix in zip(codes, np.asarray(labels).tolist(), np.asarray(item_ixs).tolist()):
                losses.append(self.replay_step(x, y, rng))
                self.update_buffer(x, y, item_ix)
        return losses
