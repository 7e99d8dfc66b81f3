"""ImageNet-style data: an ImageFolder tree plus label files that give each image its
position in the class order.

Layout::

    IMAGES_DIR/train/<class folder>/<image>   IMAGES_DIR/val/<class folder>/<image>
    LABEL_DIR/imagenet_indices/imagenet_train_labels.npy   (one int per train image,
    LABEL_DIR/imagenet_indices/imagenet_val_labels.npy      in ImageFolder's sorted order)

The labels used for training and testing are the label-file values (positions
in the class-order file), never ImageFolder's alphabetical targets.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets as datasets
import torchvision.transforms as transforms
from PIL import Image
from torch.utils.data import DataLoader, Dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(ValueError):
    """Input data that cannot be used as given."""


def eval_transform(image_size: int = 224):
    """Resize the short side to ``image_size * 256 / 224``, centre-crop ``image_size``, normalise."""
    return transforms.Compose([
        transforms.Resize(int(round(image_size * 256 / 224))),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def train_transform(image_size: int = 224, crop_scale_min: float = 0.08, hflip: bool = True):
    """Base-init training augmentation: random resized crop (and flip), normalise."""
    steps = [transforms.RandomResizedCrop(image_size, scale=(crop_scale_min, 1.0))]
    if hflip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return transforms.Compose(steps)


def label_file(label_dir: str, split: str, dataset_name: str = "imagenet") -> Path:
    """Path of a split's label file; accepts ``LABEL_DIR/<name>_indices/`` or the folder itself."""
    name = f"{dataset_name}_{split}_labels.npy"
    for candidate in (Path(label_dir) / f"{dataset_name}_indices" / name, Path(label_dir) / name):
        if candidate.is_file():
            return candidate
    raise DataError(f"label file {name} not found under {label_dir} (nor in its {dataset_name}_indices/); "
                    "create it with make_numpy_imagenet_label_files.py")


def refuse_linked_back(folder: str) -> None:
    """Raise a DataError naming the first folder symlink under ``folder`` that leads back into the tree being read.

    ImageFolder follows folder symlinks (so class folders may live on another disk), but one that points back
    into the tree, such as ``ln -s .. train/digit_8/loop``, makes it read the same images again and again,
    thousands of times under the wrong class, without a word. Such links (cycles, and links to a folder read
    anyway) are refused; links to folders outside the tree are followed, once each.
    """
    root = os.path.realpath(folder)
    seen = {root}
    for parent, dirnames, _ in os.walk(folder, followlinks=True):
        for name in list(dirnames):
            path = os.path.join(parent, name)
            target = os.path.realpath(path)
            inside = target == root or target.startswith(root + os.sep)
            if (os.path.islink(path) and inside) or target in seen:
                raise DataError(f"folder symlink {path} leads back to {target}, a folder of {folder} that is read "
                                "anyway: its images would be read again (endlessly, for a link to a parent) under "
                                "another class; remove the link")
            seen.add(target)


@functools.lru_cache(maxsize=8)
def _scan_folder(folder: str) -> tuple[tuple[tuple[str, int], ...], tuple[str, ...]]:
    """The (path, ImageFolder target) pairs and class folder names of one split: the one reader of image trees,
    shared by the label writer, the experiments and the base-init trainer."""
    path = Path(folder)
    if not path.is_dir():
        not_a_folder = next((p for p in (path, path.parent) if p.exists() and not p.is_dir()), None)
        problem = f"{not_a_folder} is a file, not a folder" if not_a_folder else f"image folder {folder} does not exist"
        raise DataError(f"{problem}; the dataset folder (--images_dir, --data) must hold train/ and val/ class "
                        "sub-folders")
    refuse_linked_back(folder)
    try:
        folder_set = datasets.ImageFolder(folder)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"image folder {folder} holds no images in class sub-folders ({exc}); "
                        "put each class's images in IMAGE_DIR/<split>/<class name>/") from None
    return tuple((p, t) for p, t in folder_set.samples), tuple(folder_set.classes)


def load_labels(images_dir: str, label_dir: str, split: str, dataset_name: str = "imagenet") -> np.ndarray:
    """Label array of a split, checked against the number of images in the folder."""
    samples, _ = _scan_folder(os.path.join(images_dir, split))
    path = label_file(label_dir, split, dataset_name)
    try:
        labels = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"label file {path} cannot be read ({exc}); re-create it with "
                        "make_numpy_imagenet_label_files.py") from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"label file {path} holds a {labels.ndim}-D {labels.dtype} array; it must be one integer "
                        "label per image (re-create it with make_numpy_imagenet_label_files.py)")
    if len(labels) and labels.min() < 0:
        raise DataError(f"label file {path} holds negative labels; re-create it with "
                        "make_numpy_imagenet_label_files.py")
    if len(labels) != len(samples):
        raise DataError(f"label file {path} has {len(labels)} labels but {os.path.join(images_dir, split)} "
                        f"has {len(samples)} images; re-create the label files with "
                        "make_numpy_imagenet_label_files.py for this folder")
    return labels.astype(np.int64)


def class_names_by_position(images_dir: str, label_dir: str, num_classes: int, split: str = "train",
                            dataset_name: str = "imagenet") -> list[str | None]:
    """The class folder that each label (position in the class order) stands for, from a split's images.

    ``None`` where no image has that label. Raises if the label files give one folder two labels or one
    label to two folders (they were made for another tree or by hand).
    """
    samples, classes = _scan_folder(os.path.join(images_dir, split))
    labels = load_labels(images_dir, label_dir, split, dataset_name)
    targets = np.array([t for _, t in samples], dtype=np.int64)
    names: list[str | None] = [None] * num_classes
    pairs = np.unique(np.stack([labels, targets], axis=1), axis=0) if len(labels) else np.empty((0, 2), np.int64)
    for label, target in pairs:
        if not 0 <= label < num_classes:
            continue
        if names[label] is not None or int(np.sum(pairs[:, 1] == target)) > 1:
            raise DataError(f"label files under {label_dir} give a class two labels or two class folders one "
                            f"label (label {label}, folder {classes[target]}); re-create them with "
                            "make_numpy_imagenet_label_files.py")
        names[label] = classes[target]
    return names


def check_class_range(labels: np.ndarray, min_class: int, max_class: int, what: str) -> None:
    """Raise if ``[min_class, max_class)`` is empty or reaches past the labelled classes."""
    num_labelled = int(labels.max()) + 1 if len(labels) else 0
    if not 0 <= min_class < max_class:
        raise DataError(f"{what}: class range [{min_class}, {max_class}) is empty or negative; "
                        "check --min_class/--base_init_classes/--streaming_*_class")
    if max_class > num_labelled:
        raise DataError(f"{what}: class range [{min_class}, {max_class}) goes past the {num_labelled} "
                        f"classes in the label files; lower --streaming_max_class/--num_classes to "
                        f"{num_labelled} or fewer")


class LabelledImageFolder(Dataset):
    """Images of one split restricted to some indices; yields ``(image, label, index)``.

    ``index`` is the image's position in the whole split (the example id).
    """

    def __init__(self, folder: str, labels: np.ndarray, indices: np.ndarray, transform):
        self.samples, _ = _scan_folder(folder)
        self.labels = labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        index = int(self.indices[position])
        return self.transform(read_image(self.samples[index][0])), int(self.labels[index]), index


# ------------------------------------------------------------------ images that cannot be read
RELABEL = " (then re-create the label files)"
CHECK_IMAGES = "; --check_images finds all such files up front"


# What PIL raises for a file it cannot use as an image: OSError (truncated, empty, not an image), ValueError,
# and DecompressionBombError (more pixels than Image.MAX_IMAGE_PIXELS allows twice over: too large to be a real
# photo, and decoding it could exhaust memory), which is not an OSError.
PIL_ERRORS = (OSError, ValueError, Image.DecompressionBombError)


def read_image(path, hint: str = RELABEL + CHECK_IMAGES) -> Image.Image:
    """The image at ``path`` as RGB, or a DataError naming the file (truncated, empty, not an image, too large)
    that ends in ``hint``."""
    try:
        with Image.open(str(path)) as image:
            return image.convert("RGB")
    except PIL_ERRORS as exc:
        raise DataError(f"image {path} cannot be read ({type(exc).__name__}: {exc}); replace or remove it{hint}") \
            from None


def unreadable(paths) -> list[tuple[str, str]]:
    """``(path, why)`` of each path among ``paths`` that PIL cannot open and decode."""
    bad = []
    for path in map(str, paths):  # plain strings (CORe50's are numpy's), also in PIL's message
        try:
            with Image.open(path) as image:
                image.load()
        except PIL_ERRORS as exc:
            bad.append((path, f"{type(exc).__name__}: {exc}"))
    return bad


def refuse_unreadable(paths, what: str, hint: str = RELABEL, report: bool = True) -> None:
    """``--check_images``: open and decode every one of ``paths`` (the images of ``what``) before the run
    starts; a DataError with the count, one path and why PIL failed on it, if any cannot be read (``report``:
    say so when all can)."""
    bad = unreadable(paths)
    if bad:
        path, why = bad[0]
        raise DataError(f"{len(bad)} images cannot be read, e.g. {path} ({why[:200]}); replace or remove them{hint}")
    if report:
        print(f"--check_images: every image of {what} can be read", flush=True)


def image_paths(images_dir: str, label_dir: str, split: str, min_class: int, max_class: int,
                dataset_name: str = "imagenet") -> list[str]:
    """Paths of the split's images of classes ``[min_class, max_class)``, in file order."""
    samples, _ = _scan_folder(os.path.join(images_dir, split))
    labels = load_labels(images_dir, label_dir, split, dataset_name)
    return [samples[index][0] for index in class_indices(labels, min_class, max_class)]



def class_indices(labels: np.ndarray, min_class: int, max_class: int) -> np.ndarray:
    """Indices of examples with label in ``[min_class, max_class)``, in file order."""
    return np.nonzero((labels >= min_class) & (labels < max_class))[0]


def get_data_loader(images_dir: str, label_dir: str, split: str, min_class: int, max_class: int,
                    batch_size: int = 128, image_size: int = 224, num_workers: int = 4,
                    shuffle: bool = False, transform=None, seed: int = 0,
                    dataset_name: str = "imagenet", pin_memory: bool = False) -> DataLoader:
    """Loader over the examples of classes ``[min_class, max_class)`` of a split.

    Unshuffled loaders keep file order (as the original streams). Batches are
    ``(images (B, 3, S, S) float32, labels (B,) int64, ids (B,) int64)``; ``pin_memory`` (for a CUDA
    run) lets the copy to the GPU overlap with work already queued there.
    """
    labels = load_labels(images_dir, label_dir, split, dataset_name)
    check_class_range(labels, min_class, max_class, f"{split} split")
    indices = class_indices(labels, min_class, max_class)
    dataset = LabelledImageFolder(os.path.join(images_dir, split), labels, indices,
                                  transform if transform is not None else eval_transform(image_size))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=generator, persistent_workers=False, pin_memory=pin_memory)


def examples_per_class(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Number of training examples of each class (``(num_classes,)`` int64)."""
    return np.bincount(labels, minlength=num_classes)[:num_classes]


def default_num_workers() -> int:
    return min(8, os.cpu_count() or 1)
