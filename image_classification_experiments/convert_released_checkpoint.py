"""Reorder a base-init checkpoint's classifier rows from ImageFolder's alphabetical order to the class order.

The original project trained its base-init network on torchvision ImageFolder's
targets, i.e. class folders sorted by name, so row k of the released
``best_ResNet18ClassifyAfterLayer4_1_100.pth`` is the k-th wnid alphabetically.
This project labels a class by its position in the class-order file (the label
files' values), so such a checkpoint must be converted once: row p of the new
``fc`` is the old row of the class at position p of the order. Every row moves,
the base-init classes' and the others' alike; rows beyond the named classes stay
at the end. Everything else (the trunk, BatchNorm statistics) is copied as it is.

    python -m image_classification_experiments.convert_released_checkpoint \\
        --ckpt best_ResNet18ClassifyAfterLayer4_1_100.pth \\
        --out resnet_imagenet_ckpts/best_ResNet18ClassifyAfterLayer4_1_100_class_order.pth

The input may be in PyTorch's legacy format (the release was written by 1.3.1),
with DataParallel's ``module.`` prefixes and a ``state_dict`` entry; it is read
without pickle. The output is a weights-only checkpoint with ``state_dict``,
``arch``, ``num_classes``, ``row_order`` and ``class_names`` (the class of each
row), which the experiments check against their label files. An existing
``--out`` is never replaced.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from image_classification_experiments.make_numpy_imagenet_label_files import read_class_order
from image_classification_experiments.resnet_models import (
    FULL_NETWORKS,
    ROW_ORDER,
    build_full_network,
    copy_matching_state,
    load_network_state,
)
from image_classification_experiments.utils_imagenet import DataError, _scan_folder
from remind.checkpoint import CheckpointError, atomic_torch_save
from remind.cli import run_main

SHIPPED_ORDER = Path(__file__).resolve().parent / "imagenet_files" / "imagenet_class_order.txt"
FC = ("model.fc.weight", "model.fc.bias")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint whose classifier rows are in alphabetical order")
    parser.add_argument("--out", required=True, help="converted checkpoint to write (must not exist)")
    parser.add_argument("--class_order_text_file", default=str(SHIPPED_ORDER),
                        help="class folder names in stream order (default: the paper's ImageNet order, shipped)")
    parser.add_argument("--images_dir", default=None,
                        help="the dataset the checkpoint was trained on (train/ class folders): its sorted folder "
                             "names are the alphabetical order; default: the order file's names, sorted")
    parser.add_argument("--arch", default="ResNet18ClassifyAfterLayer4_1", choices=sorted(FULL_NETWORKS),
                        help="architecture, when the checkpoint does not name it (the release does)")
    return parser


def row_permutation(alphabetical: list[str], order: list[str], rows: int) -> list[int]:
    """Old row of each new row: the order's classes first, then rows no class of the order names."""
    position = {name: k for k, name in enumerate(alphabetical)}
    missing = [name for name in order if name not in position]
    if missing:
        raise DataError(f"class {missing[0]!r} of the order file is not among the checkpoint's classes "
                        f"({len(missing)} missing); pass --images_dir of the dataset it was trained on")
    if len(alphabetical) > rows:
        raise CheckpointError(f"the checkpoint's classifier has {rows} rows but there are {len(alphabetical)} "
                              "classes; pass the --images_dir it was trained on")
    used = [position[name] for name in order]
    taken = set(used)
    return used + [k for k in range(rows) if k not in taken]


def convert(ckpt: str, out: str, order_file: str, images_dir: str | None = None,
            arch: str = "ResNet18ClassifyAfterLayer4_1") -> list[str | None]:
    if os.path.lexists(out):
        raise CheckpointError(f"--out {out} exists; pass a new file name (nothing is overwritten)")
    order = read_class_order(order_file)
    if images_dir is not None:
        _, classes = _scan_folder(os.path.join(images_dir, "train"))
        alphabetical = list(classes)
    else:
        alphabetical = sorted(order)
    state, extras = load_network_state(ckpt, what="--ckpt checkpoint")
    if extras.get("row_order") == ROW_ORDER:
        raise CheckpointError(f"{ckpt} already has its rows in class order; use it as it is")
    arch = extras.get("arch", arch)
    if any(name not in state for name in FC):
        raise CheckpointError(f"{ckpt} has no classifier ({FC[0]}); pass a full base-init network checkpoint")
    rows = state[FC[0]].shape[0]
    old_rows = row_permutation(alphabetical, order, rows)
    index = torch.tensor(old_rows, dtype=torch.int64)
    converted = dict(state)
    for name in FC:
        converted[name] = state[name].index_select(0, index).clone()
    copy_matching_state(build_full_network(arch, rows), converted, ckpt, arch)  # refuse what would not load
    by_row = {k: name for k, name in enumerate(alphabetical)}
    class_names = [by_row.get(k) for k in old_rows]
    atomic_torch_save({"state_dict": converted, "arch": arch, "num_classes": rows, "row_order": ROW_ORDER,
                       "class_names": class_names, "converted_from": Path(ckpt).name}, out)
    print(f"wrote {out}: {rows} classifier rows in the order of {order_file} "
          f"({sum(a != b for a, b in enumerate(old_rows))} rows moved)")
    return class_names


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)

    def body():
        convert(args.ckpt, args.out, args.class_order_text_file, args.images_dir, args.arch)
    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
