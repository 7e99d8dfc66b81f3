"""Train the PQ codec on the base-init images of one data order and store every image as uint8 codes.

Shared by ``clevr/pq_encoding_clevr.py`` and ``tdiuc/pq_encoding_tdiuc.py``.
The base-init images are those of the trainer's first segment (iid: the first
10% of the shuffled questions; qtype: the first question type), computed by
the same function the trainer uses, so the codec never sees later data.
The original stored the *decoded* float features (140 GB for CLEVR, 170 GB
for TDIUC); we store the codes plus the codebooks and decode when training.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from remind.checkpoint import CheckpointError, save_state
from remind.pq import PQCodec, check_pq_shape
from vqa_experiments.configs import default_config
from vqa_experiments.vqa_data import VQADataError, base_init_image_ids, feature_paths, image_rows, load_image_map, \
    load_lut, load_questions, stream_order


def sample_training_vectors(features: np.ndarray, rows: np.ndarray, count: int, rng: np.random.Generator,
                            chunk_images: int = 256) -> np.ndarray:
    """Up to ``count`` distinct (image, location) vectors of the given image rows, as float32 ``(n, C)``."""
    rows = np.sort(rows)  # sequential reads of the memory-mapped features
    hw, c = features.shape[1] * features.shape[2], features.shape[3]
    total = len(rows) * hw
    flat = np.arange(total) if total <= count else np.sort(rng.choice(total, size=count, replace=False))
    image, location = flat // hw, flat % hw
    out = np.empty((len(flat), c), dtype=np.float32)
    for start in range(0, len(rows), chunk_images):
        lo, hi = np.searchsorted(image, [start, start + chunk_images])
        if lo == hi:
            continue
        maps = np.asarray(features[rows[start:start + chunk_images]], dtype=np.float32).reshape(-1, hw, c)
        out[lo:hi] = maps[image[lo:hi] - start, location[lo:hi]]
    return out


def encode_all(features: np.ndarray, codec: PQCodec, out_path: Path, chunk_images: int = 256) -> np.ndarray:
    n, h, w, c = features.shape
    tmp = out_path.with_name(f".{out_path.name}.tmp.npy")
    codes = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, h, w, codec.num_codebooks))
    try:
        for start in range(0, n, chunk_images):
            block = torch.from_numpy(np.array(features[start:start + chunk_images], dtype=np.float32))
            codes[start:start + len(block)] = codec.encode(block.reshape(-1, c)).reshape(
                len(block), h, w, codec.num_codebooks).cpu().numpy()
        codes.flush()
        del codes
        os.replace(tmp, out_path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return np.load(out_path, mmap_mode="r")


def run(dataset: str, argv=None, doc: str = __doc__) -> int:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", required=True, help="work folder (preprocessed questions and features)")
    parser.add_argument("--data_order", required=True, choices=["iid", "qtype"])
    parser.add_argument("--num_codebooks", type=int, default=32)
    parser.add_argument("--codebook_size", type=int, default=256)
    parser.add_argument("--num_classes", type=int, default=None,
                        help="answers kept for training (default: the dataset's streaming config)")
    parser.add_argument("--train_vectors", type=int, default=None,
                        help="vectors sampled for k-means (default 256 per centroid, what faiss would keep)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        summary = encode_dataset(dataset, args)
    except (VQADataError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


def encode_dataset(dataset: str, args) -> dict:
    paths = feature_paths(args.data_path, dataset, args.data_order)
    for key in ("codes", "codec"):
        if paths[key].exists() and not args.overwrite:
            raise VQADataError(f"{paths[key]} exists; pass --overwrite to replace it")
    if not paths["features"].is_file():
        raise VQADataError(f"{paths['features']} not found; run vqa_experiments/{dataset}/extract_image_features_"
                           f"{dataset}.py --path <{dataset.upper()} folder> --out {args.data_path} first")
    features = np.load(paths["features"], mmap_mode="r")
    check_pq_shape(features.shape[-1], args.num_codebooks, args.codebook_size)
    id_to_row = load_image_map(paths["map"])
    if len(id_to_row) != len(features):
        raise VQADataError(f"{paths['map']} maps {len(id_to_row)} images, {paths['features']} has {len(features)}")
    train = load_questions(args.data_path, dataset, "train")
    lut = load_lut(args.data_path, dataset)
    num_classes = args.num_classes or default_config(dataset).num_classes
    order = stream_order(train, args.data_order, min(num_classes, len(lut["a2idx"])), list(lut["qtype2idx"]))
    base_ids = base_init_image_ids(train, order)
    image_rows(train, id_to_row, "train", paths["map"])  # every training image must have features
    rows = np.array([id_to_row[int(i)] for i in base_ids], dtype=np.int64)
    rng = np.random.default_rng(args.seed)
    count = args.train_vectors or 256 * args.codebook_size
    vectors = sample_training_vectors(features, rows, count, rng)
    print(f"training PQ ({args.num_codebooks} codebooks x {args.codebook_size}) on {len(vectors)} vectors from "
          f"{len(rows)} base-init images ({args.data_order} order)", flush=True)
    codec = PQCodec.train(vectors, args.num_codebooks, args.codebook_size, seed=args.seed, device=args.device)
    codes = encode_all(features, codec, paths["codes"])
    save_state(paths["codec"], {"centroids": codec.centroids.cpu()},
               {"dataset": dataset, "data_order": args.data_order, "base_init_images": int(len(rows)),
                "train_vectors": int(len(vectors)), "feature_shape": list(features.shape[1:])})
    float_bytes = int(np.prod(features.shape)) * 4
    codes_only, codec_bytes = os.path.getsize(paths["codes"]), os.path.getsize(paths["codec"])
    code_bytes = codes_only + codec_bytes
    n = len(features)
    print(f"| storage | bytes | bytes per image |\n|---|---|---|\n"
          f"| float32 features (what the original stored) | {float_bytes:,} | {float_bytes // n:,} |\n"
          f"| uint8 codes (ours) | {codes_only:,} | {int(np.prod(codes.shape[1:])):,} |\n"
          f"| codebooks (ours, once) | {codec_bytes:,} | |\n"
          f"codes + codebooks are {float_bytes / code_bytes:.1f}x smaller than float32 features "
          f"({float_bytes / n / np.prod(codes.shape[1:]):.0f}x per image)")
    return {"images": n, "codes": str(paths["codes"]), "codec": str(paths["codec"]), "code_shape": list(codes.shape[1:]),
            "float32_bytes": float_bytes, "code_bytes": code_bytes, "ratio": round(float_bytes / code_bytes, 2)}
