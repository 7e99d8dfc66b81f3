"""A slow, original-structure REMIND streaming step: the yardstick for the fast path.

The tests (``tests/test_fast_path.py``) check that the fast path computes what this
module computes, and ``benchmarks/bench_stream.py`` times the two against each other.
For the timings to mean anything, this module does the work the way the original
release does it (Hayes et al., ECCV 2020; tyler-hayes/REMIND, MIT licence: see
``image_classification_experiments/REMINDModel.py`` and ``utils.RandomResizeCrop``
there). The code is our own; what it keeps from the original is the shape of the work:

- Features: the complete base-init network is run, past the layer we need, through
  ``layer4.1``, pooling and ``fc``, with autograd enabled, and a forward hook on
  ``model.layer4.0`` keeps the maps (the original wraps the network the same way).
- Encoding: the maps are copied to host numpy, laid out NHWC and quantised with
  faiss ``ProductQuantizer.compute_codes``.
- Memory: a plain dict maps each item id to ``[codes, label]``; a Python list holds
  the ids that replay may draw from, in the order they arrived; a dict of per-class
  id lists and a running count complete it. A new example goes in first. If the
  memory is then over its limit, one id is picked with ``random.choice`` (Python's
  RNG) among the class holding the most items and taken out of all three
  containers with ``list.remove`` / ``dict`` deletion / ``list.remove``.
- Replay: stored codes are copied one item at a time into a numpy array and labels
  one at a time into a device tensor; faiss ``pq.decode`` runs on the host; the maps
  are transposed to NCHW and moved to the device; every map gets its own
  ``F.interpolate`` for the crop; mixup works on torch tensors and the mixed batch is
  built in a new host tensor and then moved to the device; SGD (momentum 0.9, weight
  decay) keeps one parameter group per parameter; ``loss.item()`` syncs every step.

Where we depart from the original on purpose, so that both paths compute the same
numbers:

- Randomness comes from the fast path. Replay positions, crop boxes and the mixup
  lambda are either passed in or drawn from a numpy Generator with exactly the
  calls, and in exactly the order, of ``REMINDModel.replay_step``: positions, then
  ``remind.augment.sample_crop_params``, then ``remind.augment.sample_mixup_lambda``
  (:func:`draw_like_fast_path`). A position indexes the arrival-ordered id list, so
  positions name the same items as the fast buffer's slots up to the first eviction.
  From then on the two orders part: the fast buffer puts the newcomer in the freed
  slot, while ``list.remove`` closes the gap and shifts every later id.
- The corrections listed in docs/fidelity.md: when fewer than ``r`` items are stored, every
  stored item is replayed; a crop is resized back to its map's own size; the
  per-class step learning rate is evaluated in closed form rather than through a
  chain of ``StepLR`` schedulers.

If ``timer`` is set (anything with a ``mark(phase)`` method), it is told when each
phase ends: ``g_forward``, ``encode``, ``sample_decode``, ``augment``,
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


# ---------------------------------------------------------------------------------------------- random draws
def draw_like_fast_path(rng: np.random.Generator, num_stored: int, num_samples: int, use_mixup: bool,
                        mixup_alpha: float, use_crops: bool, height: int, width: int):
    """Everything one fast-path replay step draws, made with its Generator calls in its order.

    Returns ``(positions, boxes, lam)``. ``positions`` lie in ``range(num_stored)``
    (the fast buffer's slots); ``boxes`` is ``(1 + len(positions), 4)``, one box for
    the new map followed by one per replayed map, or None when crops are off; ``lam``
    is the mixup weight, 1.0 when nothing is mixed.
    """
    positions = draw_positions(rng, num_stored, num_samples, use_mixup)
    boxes = sample_crop_params(rng, 1 + len(positions), height, width) if use_crops else None
    lam = sample_mixup_lambda(rng, mixup_alpha) if use_mixup and len(positions) >= 2 else 1.0
    return positions, boxes, lam


def draw_positions(rng: np.random.Generator, num_stored: int, num_samples: int, use_mixup: bool) -> np.ndarray:
    """Distinct positions to replay: ``r`` (``2r`` with mixup), or all of them when fewer are stored.

    With mixup and a short memory the count is rounded down to an even number, so
    the replays split into two equal halves.
    """
    requested = num_samples * (2 if use_mixup else 1)
    taken = min(requested, num_stored)
    if taken == num_stored:
        chosen = rng.permutation(num_stored)
    else:
        chosen = rng.choice(num_stored, size=taken, replace=False)
    if use_mixup and len(chosen) < requested:
        chosen = chosen[:2 * (len(chosen) // 2)]
    return chosen


# ---------------------------------------------------------------------------------------------- G
class HookedFeatureExtractor(nn.Module):
    """Runs the whole network and returns one inner layer's output, caught by a forward hook."""

    def __init__(self, network: nn.Module, layer_name: str):
        super().__init__()
        self.network = network
        self.layer_name = layer_name
        self.captured: dict[str, torch.Tensor] = {}
        submodules = dict(network.named_modules())
        if layer_name not in submodules:
            raise ValueError(f"{layer_name!r} is not a module of the network")
        submodules[layer_name].register_forward_hook(self._capture)

    def _capture(self, module, inputs, output):
        self.captured[self.layer_name] = output.detach()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.network(images)  # the full forward pass, fc included; we keep only the hooked layer's maps
        return self.captured[self.layer_name]


# ---------------------------------------------------------------------------------------------- memory
class ReferenceBuffer:
    """Replay memory kept in Python containers, as the original keeps it.

    ``entries`` maps item id -> ``[codes, label]`` (``label`` a 0-d int64 array);
    ``replay_order`` lists the ids replay may draw from, oldest first;
    ``ids_by_class`` maps label -> its ids; ``stored`` counts the items admitted
    without an eviction, so once it reaches the limit every insertion evicts one item.
    """

    def __init__(self, max_size: int | None = None, seed: int = 0):
        self.entries: dict[int, list] = {}
        self.replay_order: list[int] = []
        self.ids_by_class: dict[int, list[int]] = defaultdict(list)
        self.stored = 0
        self.capacity = max_size
        self.eviction_rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.replay_order)

    def _record(self, codes: np.ndarray, label: int, item_id: int) -> None:
        """Record one item in the three containers."""
        self.entries[item_id] = [codes, np.array(label, dtype=np.int64)]
        self.replay_order.append(item_id)
        self.ids_by_class[label].append(item_id)

    def add_base_init(self, codes: np.ndarray, labels, item_ids) -> None:
        """Load the base-initialisation examples (no eviction, whatever the limit)."""
        for item_codes, label, item_id in zip(codes, np.asarray(labels).tolist(), np.asarray(item_ids).tolist()):
            self._record(item_codes, label, item_id)
            self.stored += 1

    def _largest_class_ids(self) -> list[int]:
        """The id list of the class with the most items (the first such class on a tie).

        Scans the labels and looks each list up, as the original does, to keep its cost.
        """
        fullest = max(self.ids_by_class, key=lambda label: len(self.ids_by_class[label]))
        return self.ids_by_class[fullest]

    def _evict_one(self) -> int:
        """Take a random item of the largest class out of the memory; returns its id."""
        candidates = self._largest_class_ids()
        victim = self.eviction_rng.choice(candidates)
        candidates.remove(victim)
        del self.entries[victim]
        self.replay_order.remove(victim)
        return victim

    def update(self, codes: np.ndarray, label: int, item_id: int) -> int | None:
        """Store one streamed example; over the limit, evict one item. Returns the evicted id, or None."""
        label, item_id = int(label), int(item_id)
        self._record(codes, label, item_id)
        if self.capacity is not None and self.stored >= self.capacity:
            return self._evict_one()
        self.stored += 1
        return None


# ---------------------------------------------------------------------------------------------- learner
class ReferenceREMIND:
    """The streaming learner in the original's structure, drawing like the fast path (see the module docstring).

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
        self.trunk = HookedFeatureExtractor(full_network.to(self.device), extract_features_from)
        self.classifier_F = classifier_F.to(self.device)
        # a separate parameter group for every tensor of F, the way the original builds its optimizer
        per_tensor_groups = [{"params": [param], "lr": start_lr} for param in self.classifier_F.parameters()]
        self.optimizer = torch.optim.SGD(per_tensor_groups, lr=start_lr, momentum=0.9, weight_decay=weight_decay)
        self.per_example_loss = nn.CrossEntropyLoss(reduction="none")

        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        num_codebooks, codebook_size, sub_dim = centroids.shape
        if codebook_size != 256:
            raise ValueError("the reference loop keeps each code in one uint8, like the original: "
                             "codebook_size must be 256")
        self.num_codebooks, self.num_channels = num_codebooks, num_codebooks * sub_dim
        self.pq = faiss.ProductQuantizer(self.num_channels, num_codebooks, 8)
        faiss.copy_array_to_vector(centroids.ravel(), self.pq.centroids)

        self.num_classes = num_classes
        self.num_samples = num_samples
        self.use_mixup, self.mixup_alpha = use_mixup, mixup_alpha
        self.use_random_resize_crops = use_random_resize_crops
        self.grad_clip = grad_clip
        self.lr_mode, self.start_lr, self.lr_step_size = lr_mode, start_lr, lr_step_size
        # the factor that takes start_lr to end_lr after lr_examples_per_class steps, applied every lr_step_size
        self.lr_decay = math.exp(lr_step_size * math.log(end_lr / start_lr) / lr_examples_per_class)
        self.steps_per_class: dict[int, int] = defaultdict(int)
        self.buffer = ReferenceBuffer(max_buffer_size, seed)
        self.timer = None

    def _phase_done(self, phase: str) -> None:
        if self.timer is not None:
            self.timer.mark(phase)

    # ---------------------------------------------------------------------------------- G, PQ and the memory
    def extract(self, images: torch.Tensor) -> np.ndarray:
        """G's maps for a batch of images, as host float32 numpy ``(B, C, H, W)``."""
        self.trunk.eval()
        return self.trunk(images.to(self.device)).cpu().numpy()

    def encode(self, maps: np.ndarray) -> np.ndarray:
        """faiss codes ``(B, H, W, M)`` uint8 for host maps ``(B, C, H, W)``."""
        _, channels, height, width = maps.shape
        channel_vectors = np.reshape(np.transpose(maps, (0, 2, 3, 1)), (-1, channels))
        flat_codes = self.pq.compute_codes(channel_vectors)
        return np.reshape(flat_codes, (-1, height, width, self.num_codebooks))

    def gather(self, x: np.ndarray, y: int, item_ids) -> tuple[np.ndarray, torch.Tensor]:
        """Row 0 the new example, then the listed stored items: codes in a host array, labels in a device tensor.

        Both are filled one item at a time, each label a separate host-to-device copy.
        """
        rows = 1 + len(item_ids)
        codes = np.empty((rows, *x.shape), dtype=np.uint8)
        labels = torch.empty(rows, dtype=torch.long, device=self.device)
        codes[0] = x
        labels[0] = int(y)
        for row, item_id in enumerate(item_ids, start=1):
            stored_codes, stored_label = self.buffer.entries[item_id]
            codes[row] = stored_codes
            labels[row] = torch.from_numpy(stored_label)
        return codes, labels

    def decode(self, codes: np.ndarray) -> torch.Tensor:
        """faiss decode on the host of ``(n, H, W, M)`` codes; NCHW device maps (strided like numpy's transpose)."""
        count, height, width, num_codebooks = codes.shape
        vectors = self.pq.decode(np.reshape(codes, (count * height * width, num_codebooks)))
        nhwc = np.reshape(vectors, (-1, height, width, self.num_channels))
        return torch.from_numpy(np.transpose(nhwc, (0, 3, 1, 2))).to(self.device)

    # ---------------------------------------------------------------------------------- augmentation
    @staticmethod
    def crop_resize(feature_map: torch.Tensor, box) -> torch.Tensor:
        """Crop one ``(C, H, W)`` map to the box ``(top, left, h, w)`` and resize it bilinearly to ``(H, W)``."""
        top, left, box_h, box_w = (int(v) for v in box)
        window = feature_map[:, top:top + box_h, left:left + box_w]
        return F.interpolate(window.unsqueeze(0), size=tuple(feature_map.shape[1:]), mode="bilinear",
                             align_corners=False).squeeze(0)

    def _crop_each(self, maps: torch.Tensor, boxes) -> torch.Tensor:
        """Crop-and-resize the maps one at a time, into a new tensor."""
        out = torch.empty_like(maps)
        for row, feature_map in enumerate(maps):
            out[row] = self.crop_resize(feature_map, boxes[row])
        return out

    def _mixup_batch(self, maps: torch.Tensor, labels: torch.Tensor, y: int, lam: float):
        """F's inputs with mixup: the new map unchanged, then the first replay half mixed with the second.

        The batch is assembled in a fresh host tensor, and so are the two label
        vectors (the new label followed by each half's labels). Returns them on the host.
        """
        half = (maps.shape[0] - 1) // 2
        blended = lam * maps[1:1 + half] + (1 - lam) * maps[1 + half:]
        inputs = torch.empty((half + 1, *maps.shape[1:]))
        inputs[0] = maps[0]
        inputs[1:] = blended.clone()
        first_labels = torch.zeros(half + 1).long()
        second_labels = torch.zeros(half + 1).long()
        first_labels[0] = y
        second_labels[0] = y
        first_labels[1:] = labels[1:1 + half]
        second_labels[1:] = labels[1 + half:]
        return inputs, first_labels, second_labels

    # ---------------------------------------------------------------------------------- one step
    def current_lr(self, y: int) -> float:
        if self.lr_mode == "constant":
            return self.start_lr
        return self.start_lr * self.lr_decay ** (self.steps_per_class[y] // self.lr_step_size)

    def replay_step(self, x: np.ndarray, y: int, rng: np.random.Generator | None = None, replay_ids=None,
                    crop_boxes: np.ndarray | None = None, lam: float | None = None) -> float:
        """One SGD step on the new example's codes ``x (H, W, M)`` and its replays; returns the loss.

        Give either ``rng``, and the draws are made here at the fast path's points, or
        the ids to replay (``replay_ids``) with ``crop_boxes`` (when cropping) and ``lam``
        (when mixing) drawn beforehand.
        """
        y = int(y)
        if rng is not None:
            positions = draw_positions(rng, len(self.buffer.replay_order), self.num_samples, self.use_mixup)
            replay_ids = [self.buffer.replay_order[p] for p in positions.tolist()]
        codes, labels = self.gather(x, y, replay_ids)
        maps = self.decode(codes)
        self._phase_done("sample_decode")

        if self.use_random_resize_crops:
            if rng is not None:
                crop_boxes = sample_crop_params(rng, maps.shape[0], maps.shape[2], maps.shape[3])
            maps = self._crop_each(maps, crop_boxes)

        if self.use_mixup and len(replay_ids) >= 2:
            if rng is not None:
                lam = sample_mixup_lambda(rng, self.mixup_alpha)
            inputs, first_labels, second_labels = self._mixup_batch(maps, labels, y, lam)
            self._phase_done("augment")
            logits = self.classifier_F(inputs.to(self.device))
            loss = (lam * self.per_example_loss(logits, first_labels.to(self.device))
                    + (1 - lam) * self.per_example_loss(logits, second_labels.to(self.device)))
        else:
            self._phase_done("augment")
            logits = self.classifier_F(maps)
            loss = self.per_example_loss(logits, labels)
        loss = loss.mean()
        self.optimizer.zero_grad()
        loss.backward()
        self._phase_done("f_forward_backward")

        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.classifier_F.parameters(), self.grad_clip)
        step_lr = self.current_lr(y)
        for group in self.optimizer.param_groups:
            group["lr"] = step_lr
        self.optimizer.step()
        self.steps_per_class[y] += 1
        loss_value = loss.item()
        self._phase_done("optimizer")
        return loss_value

    def update_buffer(self, x: np.ndarray, y: int, item_id: int) -> int | None:
        """Insert the example just trained on into the memory; returns the evicted id, if any."""
        evicted = self.buffer.update(x, y, item_id)
        self._phase_done("buffer_update")
        return evicted

    def fit_incremental_batch(self, batches, rng: np.random.Generator) -> list[float]:
        """Stream ``(images, labels, item_ids)`` batches one example at a time; returns every step's loss."""
        self.classifier_F.train()
        losses = []
        for images, batch_labels, batch_ids in batches:
            maps = self.extract(images)
            self._phase_done("g_forward")
            batch_codes = self.encode(maps)
            self._phase_done("encode")
            for codes, label, item_id in zip(batch_codes, np.asarray(batch_labels).tolist(),
                                             np.asarray(batch_ids).tolist()):
                losses.append(self.replay_step(codes, label, rng))
                self.update_buffer(codes, label, item_id)
        return losses
