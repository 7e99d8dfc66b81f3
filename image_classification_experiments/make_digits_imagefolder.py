"""Write scikit-learn's 8x8 handwritten digits as an ImageNet-style dataset.

The digits ship inside scikit-learn, so this needs no download. Output::

    OUT/train/<digit_k>/<n>.png   OUT/val/<digit_k>/<n>.png     (upscaled PNGs)
    OUT/class_order.txt                                        (a seeded shuffle of the 10 classes)
    OUT/imagenet_indices/imagenet_{train,val}_labels.npy       (positions in that order)

so the real ImageNet scripts run on it unchanged (``--images_dir OUT --label_dir OUT``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from image_classification_experiments.make_numpy_imagenet_label_files import make_label_files


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/digits", help="output folder (created)")
    parser.add_argument("--val_fraction", type=float, default=0.25, help="held-out share of each class (0.25)")
    parser.add_argument("--pixels", type=int, default=32, help="side of the written PNGs (32; the loader resizes)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the class order")
    parser.add_argument("--per_class", type=int, default=None,
                        help="keep at most this many images per class (tests use a few; default all)")
    return parser


def write_digits(out: str, val_fraction: float = 0.25, pixels: int = 32, seed: int = 0,
                 per_class: int | None = None) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    out_path = Path(out)
    names = [f"digit_{d}" for d in range(10)]
    for split in ("train", "val"):
        for name in names:
            (out_path / split / name).mkdir(parents=True, exist_ok=True)
    for digit in range(10):
        members = rng.permutation(np.nonzero(digits.target == digit)[0])
        if per_class is not None:
            members = members[:per_class]
        n_val = max(1, int(round(len(members) * val_fraction)))
        for rank, index in enumerate(members):
            split = "val" if rank < n_val else "train"
            pixels_8x8 = (digits.images[index] * (255.0 / 16.0)).astype(np.uint8)
            image = Image.fromarray(pixels_8x8, mode="L").resize((pixels, pixels), Image.BICUBIC)
            image.save(out_path / split / names[digit] / f"{index:04d}.png")
    order = [names[k] for k in rng.permutation(10)]
    (out_path / "class_order.txt").write_text("\n".join(order) + "\n")
    make_label_files(str(out_path), str(out_path / "class_order.txt"), str(out_path / "imagenet_indices"))
    return out_path


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    path = write_digits(args.out, args.val_fraction, args.pixels, args.seed, args.per_class)
    print(f"digits ImageFolder written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
