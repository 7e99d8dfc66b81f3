"""The streaming learner: REMIND's replay step, one object for every experiment.

A :class:`StreamingLearner` owns the device, the run's random generator, the PQ
codec, the replay buffer, the plastic network and its optimizer. One step
(:meth:`StreamingLearner.step`) on a new example:

1. with ``insert_first`` (the VQA experiments, as the original VQA code), the
   new example enters the buffer before the draw;
2. ``replays_per_step`` distinct stored examples are drawn uniformly (all of
   them when fewer are stored; an even number with ``even_replays``, for mixup);
3. their codes are gathered (from the buffer, or through their image when the
   buffer holds references) and decoded, with the new example's codes, to
   feature maps on the device;
4. the experiment's ``make_loss(batch)`` augments them, attaches its own inputs
   (question tokens, say), runs the plastic network and returns the loss;
5. one optimizer step on the plastic network (at ``lr`` when given);
6. without ``insert_first`` (the image experiments, as the original image
   code), the new example enters the buffer after the step.

Every random draw of the replay side (sampling, eviction, and the
experiment's crops and mixup through :attr:`StreamingLearner.rng`) comes
from the one numpy Generator the learner checkpoints in :meth:`state_dict`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from remind.buffer import ReplayBuffer
from remind.checkpoint import rng_from_json, rng_state_to_json
from remind.compute import ComputeMeter
from remind.pq import PQCodec


@dataclass
class ReplayBatch:
    """What one step trains on: the new example first, then the replays, decoded on the learner's device.

    Attributes:
        maps: ``(1 + n, C, H, W)`` float32 reconstructed feature maps (a channels-last view when the
            learner was built with ``contiguous_maps=False``).
        labels: ``(1 + n,)`` int64 on the device.
        ids: ``(1 + n,)`` int64 numpy example ids (VQA: question rows).
        net_rows: rows the plastic network processed, for the compute record; a ``make_loss`` that
            combines rows (mixup: 1 + n maps into 1 + n / 2 inputs) sets it; None: one per example.
    """
    maps: torch.Tensor
    labels: torch.Tensor
    ids: np.ndarray
    net_rows: int | None = None

    @property
    def num_replays(self) -> int:
        return len(self.ids) - 1


class StreamingLearner:
    """Replay-based streaming updates of a plastic network over PQ-coded feature maps.

    Args:
        plastic_net: the network trained on decoded maps (F).
        optimizer: over ``plastic_net``'s trainable parameters.
        codec: decodes ``(n, H, W, M)`` codes to maps.
        buffer: the replay buffer, or None for no replay and no storage (VQA fine-tuning).
        rng: the run's generator (sampling, eviction, and the experiment's augmentation draws).
        replays_per_step: stored examples drawn per step (the paper's r = 50; 0 fine-tunes).
        even_replays: keep an even number of replays (mixup pairs the first half with the second).
        insert_first: insert the new example before drawing (VQA) instead of after the step (images).
        replacement: which example of the largest class a full buffer evicts: ``random`` or ``queue``.
        grad_clip: clip the gradient norm to this value before the step (None: no clipping).
        contiguous_maps: decode to contiguous NCHW maps; False gives a channels-last view (cheaper for a
            batched crop that reads it as it is).
        after_update: called after every optimizer step (a weight average, say).
        compute: counts the updates and the samples through the plastic network (a fresh meter when None).
    """

    def __init__(self, plastic_net: nn.Module, optimizer: torch.optim.Optimizer, codec: PQCodec,
                 buffer: ReplayBuffer | None, rng: np.random.Generator, *, replays_per_step: int,
                 even_replays: bool = False, insert_first: bool = False, replacement: str = "random",
                 grad_clip: float | None = None, contiguous_maps: bool = True,
                 after_update: Callable[[], None] | None = None, compute: ComputeMeter | None = None):
        if replays_per_step < 0:
            raise ValueError(f"replays per step must be non-negative, got {replays_per_step}")
        if replacement not in ("random", "queue"):
            raise ValueError(f"unknown replacement strategy {replacement!r}; use 'random' or 'queue'")
        self.plastic_net, self.optimizer, self.codec, self.buffer, self.rng = plastic_net, optimizer, codec, buffer, rng
        self.device = codec.device
        self.replays_per_step, self.even_replays = replays_per_step, even_replays
        self.insert_first, self.replacement = insert_first, replacement
        self.grad_clip, self.contiguous_maps, self.after_update = grad_clip, contiguous_maps, after_update
        self.compute = compute if compute is not None else ComputeMeter(self.device)

    def set_plastic(self, plastic_net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Train another network (a fresh F for the offline baseline) or with a fresh optimizer from now on."""
        self.plastic_net, self.optimizer = plastic_net, optimizer

    # ------------------------------------------------------------------ storage
    def __len__(self) -> int:
        return 0 if self.buffer is None else len(self.buffer)

    def insert(self, codes: torch.Tensor | None, label: int, example_id: int) -> int | None:
        """Store one example (evicting when full); returns the evicted id or None."""
        if self.buffer is None:
            return None
        return self.buffer.insert(codes, label, example_id, self.rng, self.replacement)

    def store(self, codes: torch.Tensor | None, labels, ids, evict_overflow: bool = False) -> None:
        """Store many examples without a step (base initialisation, the offline baseline).

        They are appended in one batch; past the buffer's limit that is an error, or, with
        ``evict_overflow``, they go in one at a time with eviction (the VQA base init, as the original).
        """
        if self.buffer is None:
            return
        labels, ids = np.asarray(labels).reshape(-1), np.asarray(ids).reshape(-1)
        limit = self.buffer.max_size
        if not evict_overflow or limit is None or len(self.buffer) + len(labels) <= limit:
            self.buffer.add_batch(codes, labels, ids)
            return
        for k in range(len(labels)):
            self.insert(None if codes is None else codes[k], int(labels[k]), int(ids[k]))

    # ------------------------------------------------------------------ replay
    def draw(self) -> np.ndarray:
        """Slots of this step's replays: ``min(replays_per_step, stored)`` distinct ones, uniformly."""
        if self.buffer is None or self.replays_per_step == 0:
            return np.empty(0, dtype=np.int64)
        slots = self.buffer.sample(self.replays_per_step, self.rng)
        if self.even_replays:
            slots = slots[:2 * (len(slots) // 2)]
        return slots

    def decode(self, new_codes: torch.Tensor, new_label: int, new_id: int, slots: np.ndarray) -> ReplayBatch:
        """Gather the replays' codes and labels, put the new example first, decode on the device."""
        new_codes = new_codes.to(self.device).unsqueeze(0)
        new_labels = torch.tensor([int(new_label)], device=self.device)
        if len(slots):
            replay_codes, replay_labels = self.buffer.gather(slots)
            codes, labels = torch.cat([new_codes, replay_codes]), torch.cat([new_labels, replay_labels])
            ids = np.concatenate([[new_id], self.buffer.ids[slots]]).astype(np.int64)
        else:
            codes, labels, ids = new_codes, new_labels, np.array([new_id], dtype=np.int64)
        return ReplayBatch(self.codec.decode_maps(codes, contiguous=self.contiguous_maps), labels, ids)

    def step(self, new_codes: torch.Tensor, label: int, example_id: int,
             make_loss: Callable[[ReplayBatch], torch.Tensor], lr: float | None = None,
             store: bool = True) -> torch.Tensor:
        """One streaming step on a new example; returns the loss (a 0-d tensor: no host sync).

        Args:
            new_codes: ``(H, W, M)`` uint8 codes of the new example.
            label, example_id: its label and id.
            make_loss: the experiment's batch builder: ``ReplayBatch -> loss`` (a 0-d tensor with grad).
            lr: learning rate of this step (None: leave the optimizer's).
            store: insert the new example into the buffer (False: a step that leaves the buffer as it is).
        """
        if store and self.insert_first:
            self.insert(new_codes, label, example_id)
        batch = self.decode(new_codes, label, example_id, self.draw())
        loss = make_loss(batch)
        self.backward(loss)
        self.update(lr, samples=len(batch.ids) if batch.net_rows is None else batch.net_rows)
        if store and not self.insert_first:
            self.insert(new_codes, label, example_id)
        return loss.detach()

    def backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def update(self, lr: float | None = None, samples: int = 0) -> None:
        """Clip (if asked), set the step's learning rate, take the optimizer step (counted in :attr:`compute`
        as one update over ``samples`` samples)."""
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.plastic_net.parameters(), self.grad_clip)
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.optimizer.step()
        self.compute.count_update(samples)
        if self.after_update is not None:
            self.after_update()

    def stored_batches(self, batch_size: int):
        """One shuffled pass over every stored example: yields (maps ``(b, C, H, W)``, labels ``(b,)``).

        The order is a permutation drawn from the learner's generator (the offline baseline's epochs).
        """
        order = self.rng.permutation(len(self))
        for start in range(0, len(order), batch_size):
            codes, labels = self.buffer.gather(order[start:start + batch_size])
            yield self.codec.decode_maps(codes, contiguous=self.contiguous_maps), labels

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything a resumed run needs, as tensors, strings and numbers (loads with ``weights_only``)."""
        state = {
            "plastic_net": self.plastic_net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "codec": {"centroids": self.codec.centroids.cpu()},
            "rng": rng_state_to_json(self.rng),
            "torch_rng": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        if self.buffer is not None:
            state["buffer"] = self.buffer.state_dict()
        return state

    def load_state_dict(self, state: dict, restore_global_rng: bool = False) -> None:
        """Restore :meth:`state_dict`'s output (the buffer must have been built with the saved geometry).

        ``restore_global_rng`` also sets torch's global CPU (and CUDA) generators to the saved ones: a
        resumed script owns the process and needs them for dropout; a learner embedded in someone else's
        program leaves them alone.
        """
        self.plastic_net.load_state_dict(state["plastic_net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.codec = PQCodec(state["codec"]["centroids"], device=self.device)
        if (self.buffer is None) != ("buffer" not in state):
            raise ValueError("the checkpoint and this run differ in having a replay buffer; resume with the "
                             "same mode")
        if self.buffer is not None:
            self.buffer.load_state_dict(state["buffer"])
        self.rng = rng_from_json(state["rng"])
        if restore_global_rng:
            torch.set_rng_state(state["torch_rng"])
            if "cuda_rng" in state and torch.cuda.is_available():
                # one state per GPU of the saving machine: restore those this machine has (a run saved with
                # more GPUs, or on a CPU-only machine, resumes too)
                for index, rng_state in enumerate(state["cuda_rng"][:torch.cuda.device_count()]):
                    torch.cuda.set_rng_state(rng_state, index)
