"""CORe50 (Lomonaco & Maltoni, CoRL 2017) for streaming: the real folder layout, the standard
session split, category labels and the four stream orderings of the REMIND authors' line of work.

Layout of ``core50_128x128.zip`` once unpacked::

    ROOT/s1/o1/C_01_01_000.png ... ROOT/s11/o50/C_11_50_299.png

``s<session>`` (1..11), ``o<object>`` (1..50), ``C_<session:02>_<object:02>_<frame:03>.png``: 15 s videos at
20 fps, about 300 frames of 128x128 each. Objects ``o1..o5`` are category 0, ``o6..o10`` category 1, ...
(10 categories: label = (object - 1) // 5). Training sessions: 1, 2, 4, 5, 6, 8, 9, 11; test: 3, 7, 10.

Orderings of the training frames (each a permutation drawn from ``numpy.random.default_rng(seed)``):

- ``iid``: every frame shuffled;
- ``class_iid``: categories in random order, each category's frames shuffled;
- ``instance``: objects in random order; each object's frames contiguous and in temporal order
  (its training sessions in ascending order, frames in ascending order within a session);
- ``class_instance``: categories in random order; within a category its objects in random order, each
  object's frames as in ``instance``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as transforms
from torch.utils.data import DataLoader, Dataset

from image_classification_experiments.utils_imagenet import (
    CHECK_IMAGES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    read_image,
)

NUM_SESSIONS = 11
NUM_OBJECTS = 50
OBJECTS_PER_CATEGORY = 5
NUM_CATEGORIES = NUM_OBJECTS // OBJECTS_PER_CATEGORY
TEST_SESSIONS = (3, 7, 10)
TRAIN_SESSIONS = tuple(s for s in range(1, NUM_SESSIONS + 1) if s not in TEST_SESSIONS)
ORDERINGS = ("iid", "class_iid", "instance", "class_instance")
_FRAME_NAME = re.compile(r"C_(\d{2})_(\d{2})_(\d{3})\.png")


def frame_name(session: int, obj: int, frame: int) -> str:
    """Relative path of one frame, as in the real dataset (``s1/o1/C_01_01_000.png``)."""
    return f"s{session}/o{obj}/C_{session:02d}_{obj:02d}_{frame:03d}.png"


def category_of(objects: np.ndarray) -> np.ndarray:
    """Category label (0..9) of 1-based object numbers."""
    return (np.asarray(objects, dtype=np.int64) - 1) // OBJECTS_PER_CATEGORY


@dataclass
class Core50Split:
    """Frames of one split, sorted by (session, object, frame).

    ``paths``: (N,) str; ``sessions``, ``objects``, ``frames``, ``labels``: (N,) int64.
    """
    paths: np.ndarray
    sessions: np.ndarray
    objects: np.ndarray
    frames: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return category_of(self.objects)

    def __len__(self) -> int:
        return len(self.paths)


def scan_core50(root: str, sessions, frame_stride: int = 1) -> Core50Split:
    """Every frame of ``sessions`` under ``root``, keeping every ``frame_stride``-th frame of each video.

    Raises DataError if ``root`` or a session folder is missing, or a session holds no frames.
    """
    base = Path(root)
    if not base.is_dir():
        problem = "is a file, not a folder" if base.exists() else "does not exist"
        raise DataError(f"CORe50 folder {root} {problem}; unzip core50_128x128.zip there so that it holds "
                        "s1/ ... s11/ (see docs/core50.md)")
    if frame_stride < 1:
        raise DataError(f"--frame_stride {frame_stride} must be at least 1")
    rows = []
    for session in sessions:
        folder = base / f"s{session}"
        if not folder.is_dir():
            raise DataError(f"CORe50 session folder {folder} is missing; --data_dir must hold s1/ ... s11/ "
                            "from core50_128x128.zip")
        found = 0
        for obj_dir in folder.glob("o*"):
            if not re.fullmatch(r"o\d+", obj_dir.name):
                continue
            obj = int(obj_dir.name[1:])
            if not 1 <= obj <= NUM_OBJECTS:
                raise DataError(f"{obj_dir}: CORe50 has objects o1..o{NUM_OBJECTS}")
            video = []
            for path in obj_dir.glob("C_*.png"):
                match = _FRAME_NAME.fullmatch(path.name)
                if match is None or (int(match.group(1)), int(match.group(2))) != (session, obj):
                    raise DataError(f"{path} is not named C_{session:02d}_{obj:02d}_<frame>.png as CORe50's "
                                    "frames in that folder are")
                video.append(int(match.group(3)))
            for position, frame in enumerate(sorted(video)):
                if position % frame_stride == 0:
                    rows.append((session, obj, frame, str(obj_dir / f"C_{session:02d}_{obj:02d}_{frame:03d}.png")))
            found += len(video)
        if found == 0:
            raise DataError(f"CORe50 session folder {folder} holds no C_*.png frames in o*/ folders")
    rows.sort()
    columns = list(zip(*rows))
    return Core50Split(paths=np.array(columns[3]), sessions=np.array(columns[0], dtype=np.int64),
                       objects=np.array(columns[1], dtype=np.int64), frames=np.array(columns[2], dtype=np.int64))


def load_core50(root: str, frame_stride: int = 1) -> tuple[Core50Split, Core50Split]:
    """(train, test): sessions 1, 2, 4, 5, 6, 8, 9, 11 and sessions 3, 7, 10."""
    return scan_core50(root, TRAIN_SESSIONS, frame_stride), scan_core50(root, TEST_SESSIONS, frame_stride)


# ------------------------------------------------------------------ orderings
def _grouped(groups: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Indices of each distinct value of ``groups``, in a random order of the values (indices ascending)."""
    values = np.unique(groups)
    return [np.nonzero(groups == value)[0] for value in rng.permutation(values)]


def _instance_order(split: Core50Split, indices: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    # split is sorted by (session, object, frame): within one object, ascending index = sessions then frames.
    return [indices[members] for members in _grouped(split.objects[indices], rng)]


def stream_order(split: Core50Split, ordering: str, seed: int) -> np.ndarray:
    """Positions into ``split`` in stream order: a permutation of ``range(len(split))`` (int64)."""
    if ordering not in ORDERINGS:
        raise DataError(f"unknown ordering {ordering!r}; use one of {', '.join(ORDERINGS)}")
    rng = np.random.default_rng(seed)
    everything = np.arange(len(split), dtype=np.int64)
    if ordering == "iid":
        return rng.permutation(everything)
    if ordering == "instance":
        return np.concatenate(_instance_order(split, everything, rng))
    parts = []
    for members in _grouped(split.labels, rng):
        if ordering == "class_iid":
            parts.append(rng.permutation(members))
        else:
            parts.extend(_instance_order(split, members, rng))
    return np.concatenate(parts)


# ------------------------------------------------------------------ loading
def core50_transform(image_size: int = 224):
    """Resize the whole 128x128 frame to ``image_size`` square (as the authors' Stream-51 loader), normalise."""
    return transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor(),
                               transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class Core50Frames(Dataset):
    """Frames ``split.paths[indices]`` in the given order; yields ``(image, label, index)``.

    ``index`` is the frame's position in the split (the example id), as utils_imagenet.LabelledImageFolder.
    """

    def __init__(self, split: Core50Split, indices: np.ndarray, transform):
        self.paths = split.paths
        self.labels = split.labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        index = int(self.indices[position])
        return self.transform(read_image(self.paths[index], hint=CHECK_IMAGES)), int(self.labels[index]), index


def core50_loader(split: Core50Split, indices: np.ndarray, batch_size: int, image_size: int,
                  num_workers: int, pin_memory: bool = False) -> DataLoader:
    """Unshuffled loader: batches ``(images (B, 3, S, S) float32, labels (B,) int64, ids (B,) int64)``
    (in pinned memory, for a CUDA run, with ``pin_memory``)."""
    return DataLoader(Core50Frames(split, indices, core50_transform(image_size)), batch_size=batch_size,
                      shuffle=False, num_workers=num_workers, generator=torch.Generator().manual_seed(0),
                      pin_memory=pin_memory)
