"""TDIUC image features: ResNet-152 through layer4 (7x7x2048 at 224 px), for every train and val image.

    python -m vqa_experiments.tdiuc.extract_image_features_tdiuc --path /data/TDIUC \\
        --weights resnet152-394f9c45.pth

Writes ``all_tdiuc_resnet.npy`` (float32, N x H x W x C) and
``map_tdiuc_resnet.json`` into ``--out`` (default ``--path``). The float
file is only PQ training's input (``pq_encoding_tdiuc.py``).
"""
from __future__ import annotations

import sys
from pathlib import Path

from vqa_experiments.image_features import run


def tdiuc_images(path: Path) -> list[tuple[int, Path]]:
    images = []
    for split in ("train2014", "val2014"):
        for file in sorted((path / "Images" / split).glob("*.jpg")):
            images.append((int(file.stem.rsplit("_", 1)[1]), file))
    return images


def main(argv=None) -> int:
    return run("tdiuc", tdiuc_images, argv, arch="resnet152", stage=4, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
