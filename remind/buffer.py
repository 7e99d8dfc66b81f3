"""Replay buffer of PQ codes in contiguous arrays.

Occupied slots are always ``0 .. size - 1``: an evicted slot is reused by the
example that caused the eviction, so sampling is a draw from ``range(size)``.
Per class we keep an array of the slots it occupies; eviction picks a random
position in the largest class's array and swaps it with that array's last
entry, so an insert costs O(1) in the buffer size (plus an argmax over the
class counts, O(num_classes)).

Memory per stored example: the codes, a label (int16, or int32 past 32,767
classes), an example id (int64 is not needed: int32) and one int32 in a class
array, whose growth slack is bounded by ``_GROWTH``.

Where many examples share one payload (VQA: every question of an image has
that image's codes), the buffer holds references instead: pass
``shared_codes`` (a :class:`SharedCodes`, the codes stored once per image and
the image of every example id) and each entry is just its label and id, about
10 bytes; the codes are looked up through the id when replayed.
"""
from __future__ import annotations

import numpy as np
import torch

_GROWTH = 1.25  # capacity growth factor; bounds the unused tail of each array


def label_dtype(num_classes: int):
    """Labels are int16 below 32,768 classes, else int32."""
    return np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32


def entry_bytes(num_classes: int) -> int:
    """Bytes of one stored example besides its codes: label, example id (int32), class slot (int32)."""
    return np.dtype(label_dtype(num_classes)).itemsize + 4 + 4


def _grown(array: np.ndarray, needed: int) -> np.ndarray:
    if needed <= len(array):
        return array
    new = np.empty(max(needed, int(len(array) * _GROWTH) + 1), dtype=array.dtype)
    new[:len(array)] = array
    return new


class SharedCodes:
    """Codes held once per image, and which image each example id refers to.

    Args:
        codes: ``(num_images, H, W, M)`` uint8, on the buffer's device.
        image_of: ``(num_examples,)`` integer image row of every example id (VQA: question row -> image row),
            an array or a tensor (an int64 tensor already on the codes' device is used as it is, not copied).
    """

    def __init__(self, codes: torch.Tensor, image_of):
        self.codes = codes
        self.image_of = torch.as_tensor(image_of, dtype=torch.int64).to(codes.device)

    @property
    def code_shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape[1:])

    def lookup(self, example_ids: torch.Tensor) -> torch.Tensor:
        """Codes ``(n, H, W, M)`` of examples ``(n,)`` (int64, on the codes' device)."""
        return self.codes.index_select(0, self.image_of.index_select(0, example_ids))


class ReplayBuffer:
    """Compressed replay memory.

    Args:
        code_shape: ``(H, W, M)`` of one example's codes.
        num_classes: labels lie in ``[0, num_classes)``.
        max_size: evict when this many are stored (None: unbounded).
        device: where the code tensor lives (F's device, so replay gathers and
            decodes there without host copies).
        shared_codes: store references, not codes (see the module docstring); ``code_shape`` must be its shape.
    """

    def __init__(self, code_shape: tuple[int, int, int], num_classes: int, max_size: int | None = None,
                 device: str | torch.device = "cpu", shared_codes: SharedCodes | None = None):
        if max_size is not None and max_size <= 0:
            raise ValueError(f"max_buffer_size must be positive, got {max_size}")
        self.code_shape = tuple(int(s) for s in code_shape)
        self.num_classes = int(num_classes)
        self.max_size = max_size
        self.device = torch.device(device)
        self.size = 0
        self.shared_codes = shared_codes
        if shared_codes is not None and shared_codes.code_shape != self.code_shape:
            raise ValueError(f"shared codes have shape {shared_codes.code_shape}, the buffer {self.code_shape}")
        # Per-entry codes only when they are not shared; a reference buffer keeps labels and ids alone.
        self.codes = (None if shared_codes is not None
                      else torch.empty((0, *self.code_shape), dtype=torch.uint8, device=self.device))
        self.labels = np.empty(0, dtype=label_dtype(num_classes))
        self.ids = np.empty(0, dtype=np.int32)
        self.class_counts = np.zeros(num_classes, dtype=np.int64)
        self.class_slots = [np.empty(0, dtype=np.int32) for _ in range(num_classes)]

    def __len__(self) -> int:
        return self.size

    # ---------------------------------------------------------------- storage
    def _reserve(self, needed: int) -> None:
        capacity = len(self.labels)
        if needed <= capacity:
            return
        new_capacity = max(needed, int(capacity * _GROWTH) + 1)
        if self.max_size is not None:
            new_capacity = min(new_capacity, self.max_size)
        if self.codes is not None:
            codes = torch.empty((new_capacity, *self.code_shape), dtype=torch.uint8, device=self.device)
            codes[:self.size] = self.codes[:self.size]
            self.codes = codes
        self.labels = _grown(self.labels, new_capacity)[:new_capacity]
        self.ids = _grown(self.ids, new_capacity)[:new_capacity]

    def _check_labels(self, labels: np.ndarray) -> None:
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got range "
                             f"[{labels.min()}, {labels.max()}]; raise --num_classes")

    def _append_slot(self, label: int, slot: int) -> None:
        count = self.class_counts[label]
        slots = _grown(self.class_slots[label], count + 1)
        slots[count] = slot
        self.class_slots[label] = slots
        self.class_counts[label] = count + 1

    def add_batch(self, codes: torch.Tensor | None, labels, ids) -> None:
        """Append examples without eviction (base initialisation).

        Args:
            codes: ``(N, H, W, M)`` uint8 (None, and ignored, with shared codes).
            labels, ids: ``(N,)`` integer arrays.
        """
        labels = np.asarray(labels).reshape(-1)
        ids = np.asarray(ids).reshape(-1)
        self._check_labels(labels)
        n = len(labels)
        if self.max_size is not None and self.size + n > self.max_size:
            raise ValueError(f"base initialisation has {self.size + n} examples but --max_buffer_size is "
                             f"{self.max_size}; raise --max_buffer_size")
        self._reserve(self.size + n)
        if self.codes is not None:
            self.codes[self.size:self.size + n] = codes.to(self.device)
        self.labels[self.size:self.size + n] = labels
        self.ids[self.size:self.size + n] = ids
        for label in np.unique(labels):
            new_slots = np.nonzero(labels == label)[0].astype(np.int32) + self.size
            count = self.class_counts[label]
            slots = _grown(self.class_slots[label], count + len(new_slots))
            slots[count:count + len(new_slots)] = new_slots
            self.class_slots[label] = slots
            self.class_counts[label] = count + len(new_slots)
        self.size += n

    def insert(self, codes: torch.Tensor | None, label: int, example_id: int, rng: np.random.Generator,
               strategy: str = "random") -> int | None:
        """Store one example; when full, first evict an example of the largest class.

        Args:
            codes: ``(H, W, M)`` uint8 (None, and ignored, with shared codes).
            strategy: which example of the largest class goes: ``random`` (REMIND's rule) or
                ``queue``, the oldest one (the VQA experiments' ``--buffer_replacement_strategy``).
                A class's slots are kept in insertion order only under ``queue``, so use one
                strategy per buffer.
        Returns:
            the evicted example's id, or None.
        """
        label = int(label)
        if not 0 <= label < self.num_classes:
            self._check_labels(np.array([label]))  # raises with the message
        evicted = None
        if self.max_size is not None and self.size >= self.max_size:
            largest = int(np.argmax(self.class_counts))
            count = self.class_counts[largest]
            slots = self.class_slots[largest]
            if strategy == "random":
                position = int(rng.integers(count))
                slot = int(slots[position])
                slots[position] = slots[count - 1]
            elif strategy == "queue":
                slot = int(slots[0])
                slots[:count - 1] = slots[1:count].copy()  # O(class size) shift keeps arrival order
            else:
                raise ValueError(f"unknown replacement strategy {strategy!r}; use 'random' or 'queue'")
            self.class_counts[largest] = count - 1
            evicted = int(self.ids[slot])
        else:
            slot = self.size
            self._reserve(self.size + 1)
            self.size += 1
        if self.codes is not None:
            self.codes[slot] = codes.to(self.device)
        self.labels[slot] = label
        self.ids[slot] = example_id
        self._append_slot(label, slot)
        return evicted

    # --------------------------------------------------------------- sampling
    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """``min(count, size)`` distinct slots drawn uniformly (O(count), not O(size))."""
        count = min(int(count), self.size)
        if count == self.size:
            return rng.permutation(self.size)
        return rng.choice(self.size, size=count, replace=False)

    def gather(self, slots: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes ``(n, H, W, M)`` uint8 and labels ``(n,)`` int64, both on the buffer's device."""
        labels = torch.from_numpy(self.labels[slots].astype(np.int64)).to(self.device)
        if self.shared_codes is not None:
            return self.shared_codes.lookup(torch.from_numpy(self.ids[slots].astype(np.int64)).to(self.device)), labels
        index = torch.from_numpy(np.asarray(slots, dtype=np.int64)).to(self.device)
        # index_select on the 2-D view is ~100x faster on CPU than on the 4-D tensor.
        rows = self.codes.view(len(self.codes), int(np.prod(self.code_shape))).index_select(0, index)
        return rows.view(len(index), *self.code_shape), labels

    # ------------------------------------------------------------- accounting
    def nbytes(self) -> int:
        """Bytes held by the buffer's own arrays (codes, labels, ids, class slot arrays); shared codes are not its own."""
        code_bytes = 0 if self.codes is None else self.codes.numel() * self.codes.element_size()
        return (code_bytes + self.labels.nbytes + self.ids.nbytes
                + self.class_counts.nbytes + sum(s.nbytes for s in self.class_slots))

    def check_invariants(self) -> None:
        """Assert the class index matches the labels (used by tests)."""
        assert self.class_counts.sum() == self.size
        seen = np.concatenate([self.class_slots[c][:self.class_counts[c]] for c in range(self.num_classes)])
        assert np.array_equal(np.sort(seen), np.arange(self.size))
        for c in range(self.num_classes):
            assert np.all(self.labels[self.class_slots[c][:self.class_counts[c]]] == c)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Arrays only, trimmed to the stored examples, in their compact dtypes, ready for ``torch.save``.

        A reference buffer saves no codes (they live in the dataset's code file): labels, ids and class
        slots take 10 bytes per stored example (int16 labels), 1,568 more with ImageNet's codes.
        """
        slots = [self.class_slots[c][:self.class_counts[c]] for c in range(self.num_classes)]
        state = {
            "labels": torch.from_numpy(self.labels[:self.size].copy()),
            "ids": torch.from_numpy(self.ids[:self.size].copy()),
            "class_counts": torch.from_numpy(self.class_counts.copy()),
            "class_slots": torch.from_numpy(np.concatenate(slots).astype(np.int32) if slots
                                            else np.empty(0, np.int32)),
            "max_size": torch.tensor(-1 if self.max_size is None else self.max_size),
            "code_shape": torch.tensor(self.code_shape),
        }
        if self.codes is not None:
            state["codes"] = self.codes[:self.size].cpu()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        saved_shape = tuple(int(s) for s in state["code_shape"].tolist()) if "code_shape" in state \
            else tuple(state["codes"].shape[1:])
        if saved_shape != self.code_shape:
            raise ValueError(f"buffer codes have shape {saved_shape} but this model uses "
                             f"{self.code_shape}; resume with the same --num_codebooks and image size")
        if ("codes" in state) != (self.codes is not None):
            raise ValueError("the saved buffer and this one differ in kind (codes per entry vs references to "
                             "shared codes); resume with the same experiment")
        size = len(state["labels"])
        if self.max_size is not None and size > self.max_size:
            raise ValueError(f"the saved buffer holds {size} examples but --max_buffer_size is "
                             f"{self.max_size}; resume with --max_buffer_size {size} or more")
        counts = state["class_counts"].numpy().astype(np.int64)
        if len(counts) != self.num_classes:
            raise ValueError(f"buffer was saved with {len(counts)} classes, this run has --num_classes "
                             f"{self.num_classes}")
        self.size = 0
        self.labels = np.empty(0, dtype=self.labels.dtype)
        self.ids = np.empty(0, dtype=np.int32)
        self._reserve(size)
        self.size = size
        if self.codes is not None:
            self.codes[:size] = state["codes"].to(self.device)
        self.labels[:size] = state["labels"].numpy()
        self.ids[:size] = state["ids"].numpy()
        self.class_counts = counts
        flat = state["class_slots"].numpy().astype(np.int32)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        self.class_slots = [flat[bounds[c]:bounds[c + 1]].copy() for c in range(self.num_classes)]
