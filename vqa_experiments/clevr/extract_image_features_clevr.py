"""CLEVR image features: ResNet-101 through layer3 (14x14x1024 at 224 px), for every train and val image.

    python -m vqa_experiments.clevr.extract_image_features_clevr --path /data/CLEVR_v1.0 \\
        --weights resnet101-63fe2227.pth

Writes ``all_clevr_resnet_largestage3.npy`` (float32, N x H x W x C) and
``map_clevr_resnet_largestage3.json`` into ``--out`` (default ``--path``).
The float file is only PQ training's input (``pq_encoding_clevr.py``); it
can be deleted once the codes are written.
"""
from __future__ import annotations

import sys
from pathlib import Path

from vqa_experiments.clevr.preprocess_clevr import clevr_image_id
from vqa_experiments.image_features import run


def clevr_images(path: Path) -> list[tuple[int, Path]]:
    images = []
    for split in ("train", "val"):
        for file in sorted((path / "images" / split).glob(f"CLEVR_{split}_*.png")):
            images.append((clevr_image_id(split, int(file.stem.rsplit("_", 1)[1])), file))
    return images


def main(argv=None) -> int:
    return run("clevr", clevr_images, argv, arch="resnet101", stage=3, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
