"""Train PQ on the base-init images of a CLEVR data order and store all CLEVR images as uint8 codes.

    python -m vqa_experiments.clevr.pq_encoding_clevr --data_path /data/CLEVR --data_order qtype

Reads ``all_clevr_*.npy`` and the question tables from ``--data_path``; writes
``all_clevr_*pq_{order}_codes.npy`` (uint8, N x H x W x 32) and the codebooks
(``..._codec.pt``) and prints the bytes on disk against float32 features.

Without a float feature file (about 0.5 GB of disk in all instead of 68 GB):

    python -m vqa_experiments.clevr.pq_encoding_clevr --data_path /data/CLEVR --data_order qtype \\
        --images /data/CLEVR --weights resnet101-63fe2227.pth
"""
import sys

from vqa_experiments.clevr.extract_image_features_clevr import clevr_images
from vqa_experiments.pq_encoding import run


def main(argv=None) -> int:
    return run("clevr", argv, doc=__doc__, images_fn=clevr_images, arch="resnet101", stage=3)


if __name__ == "__main__":
    sys.exit(main())
