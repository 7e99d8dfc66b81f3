"""Train PQ on the base-init images of a TDIUC data order and store all TDIUC images as uint8 codes.

    python -m vqa_experiments.tdiuc.pq_encoding_tdiuc --data_path /data/TDIUC --data_order qtype

Reads ``all_tdiuc_*.npy`` and the question tables from ``--data_path``; writes
``all_tdiuc_*pq_{order}_codes.npy`` (uint8, N x H x W x 32) and the codebooks
(``..._codec.pt``) and prints the bytes on disk against float32 features.
"""
import sys

from vqa_experiments.pq_encoding import run


def main(argv=None) -> int:
    return run("tdiuc", argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
