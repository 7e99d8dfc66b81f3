"""Write the label files that fix a class order for ImageNet-style streaming.

Reads a text file of class folder names (one per line, in stream order) and
writes ``LABELS_DIR/imagenet_train_labels.npy`` and ``imagenet_val_labels.npy``:
for every image of ``DATA/train`` and ``DATA/val`` in ImageFolder's sorted
order, the position of its class in the order file.

    python -m image_classification_experiments.make_numpy_imagenet_label_files \
        --data /path/to/ImageNet2012 --class_order_text_file imagenet_class_order.txt \
        --labels_dir ./imagenet_files/imagenet_indices
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from image_classification_experiments.utils_imagenet import DataError, _scan_folder
from remind.checkpoint import atomic_write
from remind.cli import run_main


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="dataset root holding train/ and val/ class folders")
    parser.add_argument("--labels_dir", default="./imagenet_files/imagenet_indices",
                        help="where the two .npy label files are written")
    parser.add_argument("--class_order_text_file", default="./imagenet_files/imagenet_class_order.txt",
                        help="class folder names, one per line, in stream order")
    return parser


def read_class_order(path: str) -> list[str]:
    if not Path(path).is_file():
        raise DataError(f"class order file {path} not found; pass --class_order_text_file")
    try:
        # utf-8-sig: an editor's byte-order mark would otherwise stick to the first class name
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"class order file {path} is not text; list one class folder name per line") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DataError(f"class order file {path} is empty; list one class folder name per line")
    if len(set(names)) != len(names):
        raise DataError(f"class order file {path} names a class twice; list each class once")
    return names


def ordered_labels(folder: str, order: list[str]) -> np.ndarray:
    """Position in ``order`` of the class of every image of ``folder`` (ImageFolder order)."""
    samples, classes = _scan_folder(folder)
    position = {name: k for k, name in enumerate(order)}
    unknown = [c for c in classes if c not in position]
    if unknown:
        raise DataError(f"{folder} has class folders missing from the class order file "
                        f"(e.g. {unknown[0]!r}, {len(unknown)} in all); add them to the order file")
    present = set(classes)
    absent = [name for name in order if name not in present]
    if absent:
        # positions without images would leave holes in the base init and in every increment
        raise DataError(f"the class order file names classes with no folder in {folder} (e.g. {absent[0]!r}, "
                        f"{len(absent)} in all); remove them from the order file or add their images")
    class_to_position = np.array([position[c] for c in classes], dtype=np.int64)
    return class_to_position[np.array([target for _, target in samples], dtype=np.int64)]


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))


def make_label_files(data: str, class_order_file: str, labels_dir: str) -> dict[str, np.ndarray]:
    order = read_class_order(class_order_file)
    # Compute both splits before writing anything, so a bad split leaves old files intact.
    labels = {split: ordered_labels(os.path.join(data, split), order) for split in ("train", "val")}
    for split, array in labels.items():
        target = Path(labels_dir) / f"imagenet_{split}_labels.npy"
        save_npy_atomic(target, array)
        print(f"wrote {target} ({len(array)} labels, {len(np.unique(array))} classes)")
    return labels


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)

    def body():
        make_label_files(args.data, args.class_order_text_file, args.labels_dir)
    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
