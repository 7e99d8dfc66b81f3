"""Train PQ on the base-init images of a TDIUC data order and store all TDIUC images as uint8 codes.

    python -m vqa_experiments.tdiuc.pq_encoding_tdiuc --data_path /data/TDIUC --data_order qtype

Reads ``all_tdiuc_*.npy`` and the question tables from ``--data_path``; writes
``all_tdiuc_*pq_{order}_codes.npy`` (uint8, N x H x W x 32) and the codebooks
(``..._codec.pt``) and prints the bytes on disk against float32 features.

Without a float feature file (about 0.3 GB of disk in all instead of 67 GB):

    python -m vqa_experiments.tdiuc.pq_encoding_tdiuc --data_path /data/TDIUC --data_order qtype \\
        --images /data/TDIUC --weights resnet152-394f9c45.pth
"""
import sys

from vqa_experiments.tdiuc.extract_image_features_tdiuc import tdiuc_images
from vqa_experiments.pq_encoding import run


def main(argv=None) -> int:
    return run("tdiuc", argv, doc=__doc__, images_fn=tdiuc_images, arch="resnet152", stage=4)


if __name__ == "__main__":
    sys.exit(main())
