"""Train the PQ codec on the base-init images of one data order and store every image as uint8 codes.

Shared by ``clevr/pq_encoding_clevr.py`` and ``tdiuc/pq_encoding_tdiuc.py``.
The base-init images are those of the trainer's first segment (iid: the first
10% of the shuffled questions; qtype: the first question type), computed by
the same function the trainer uses, so the codec never sees later data.
The original stored the *decoded* float features (140 GB for CLEVR, 170 GB
for TDIUC); we store the codes plus the codebooks and decode when training.

Two inputs: the float features of ``extract_image_features_*`` (``all_*.npy``),
or, with ``--images <dataset folder>`` and the trunk's flags, the images
themselves: the trunk then runs over the base-init images (sampling PQ's
training vectors in memory) and over all images again (writing codes), so no
float feature file is ever written. Same codes for the same features, a
fraction of the disk.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

import numpy as np
import torch

from remind.checkpoint import atomic_write_text, save_state
from remind.cli import check_device, default_device, run_main
from remind.pq import PQCodec, TrainingVectorSampler, check_pq_shape
from vqa_experiments.configs import default_config
from vqa_experiments.image_features import (
    add_trunk_arguments,
    build_trunk,
    check_images,
    check_trunk_arguments,
    image_map,
    trunk_batches,
)
from vqa_experiments.vqa_data import (
    VQADataError,
    atomic_npy,
    base_init_image_ids,
    feature_paths,
    image_rows,
    load_image_map,
    load_lut,
    load_questions,
    stream_order,
)


def sample_training_vectors(features: np.ndarray, rows: np.ndarray, count: int, rng: np.random.Generator,
                            chunk_images: int = 256) -> np.ndarray:
    """Up to ``count`` distinct (image, location) vectors of the given image rows, as float32 ``(n, C)``."""
    rows = np.sort(rows)  # sequential reads of the memory-mapped features
    hw, c = features.shape[1] * features.shape[2], features.shape[3]
    sampler = TrainingVectorSampler(len(rows) * hw, count, rng)
    for start in range(0, len(rows), chunk_images):
        chunk = rows[start:start + chunk_images]
        if not len(sampler.wanted(len(chunk) * hw)):
            sampler.skip(len(chunk) * hw)  # no read of images that hold no training vector
            continue
        sampler.take(np.asarray(features[chunk], dtype=np.float32).reshape(-1, c))
    return sampler.vectors()


def encode_all(features: np.ndarray, codec: PQCodec, out_path: Path, chunk_images: int = 256) -> np.ndarray:
    n, h, w, c = features.shape
    with atomic_npy(out_path, np.uint8, (n, h, w, codec.num_codebooks)) as codes:
        for start in range(0, n, chunk_images):
            block = torch.from_numpy(np.array(features[start:start + chunk_images], dtype=np.float32))
            codes[start:start + len(block)] = codec.encode(block.reshape(-1, c)).reshape(
                len(block), h, w, codec.num_codebooks).cpu().numpy()
    return np.load(out_path, mmap_mode="r")


def run(dataset: str, argv=None, doc: str = __doc__, images_fn=None, arch: str = "resnet101", stage: int = 3) -> int:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", required=True, help="work folder (preprocessed questions and features)")
    parser.add_argument("--data_order", required=True, choices=["iid", "qtype"])
    parser.add_argument("--num_codebooks", type=int, default=32)
    parser.add_argument("--codebook_size", type=int, default=256)
    parser.add_argument("--num_classes", type=int, default=None,
                        help="answers kept for training (default: the dataset's streaming config)")
    parser.add_argument("--train_vectors", type=int, default=None,
                        help="vectors sampled for k-means (default 256 per centroid, what faiss would keep)")
    parser.add_argument("--device", default=default_device(), help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    group = parser.add_argument_group("encoding straight from the images (no float feature file)")
    group.add_argument("--images", default=None, help="the dataset folder holding the images")
    add_trunk_arguments(group, arch, stage)
    args = parser.parse_args(argv)

    def body():
        check_device(args.device)
        for flag, value in (("--train_vectors", args.train_vectors), ("--num_classes", args.num_classes)):
            if value is not None and value < 1:  # 0 would silently mean the default
                raise VQADataError(f"{flag} must be at least 1, got {value} (leave it out for the default)")
        if args.seed < 0:  # numpy's generators take no negative seed
            raise VQADataError(f"--seed must be non-negative, got {args.seed}")
        if args.images is not None:
            check_trunk_arguments(args)
        if args.images is None:
            summary = encode_dataset(dataset, args)
        else:
            summary = encode_from_images(dataset, args, images_fn(Path(args.images)))
        print(json.dumps(summary, indent=1))
    return run_main(body)


def base_init_ids(dataset: str, args, id_to_row: dict[int, int], map_source) -> np.ndarray:
    """Image ids of the order's base-init questions; every training image must be in ``id_to_row``."""
    train = load_questions(args.data_path, dataset, "train")
    lut = load_lut(args.data_path, dataset)
    num_classes = args.num_classes or default_config(dataset).num_classes
    order = stream_order(train, args.data_order, min(num_classes, len(lut["a2idx"])), list(lut["qtype2idx"]))
    image_rows(train, id_to_row, "train", map_source)
    return base_init_image_ids(train, order)


def write_codebooks(paths: dict, codec: PQCodec, dataset: str, args, base_images: int, vectors: int, shape) -> None:
    save_state(paths["codec"], {"centroids": codec.centroids.cpu()},
               {"dataset": dataset, "data_order": args.data_order, "base_init_images": int(base_images),
                "train_vectors": int(vectors), "feature_shape": list(shape)})


def storage_report(paths: dict, n: int, feature_shape, code_shape) -> dict:
    float_bytes = n * int(np.prod(feature_shape)) * 4
    codes_only, codec_bytes = os.path.getsize(paths["codes"]), os.path.getsize(paths["codec"])
    code_bytes = codes_only + codec_bytes
    per_image = int(np.prod(code_shape))
    print(f"| storage | bytes | bytes per image |\n|---|---|---|\n"
          f"| float32 features (what the original stored) | {float_bytes:,} | {float_bytes // n:,} |\n"
          f"| uint8 codes (ours) | {codes_only:,} | {per_image:,} |\n"
          f"| codebooks (ours, once) | {codec_bytes:,} | |\n"
          f"codes + codebooks are {float_bytes / code_bytes:.1f}x smaller than float32 features "
          f"({float_bytes / n / per_image:.0f}x per image)")
    return {"images": n, "codes": str(paths["codes"]), "codec": str(paths["codec"]), "code_shape": list(code_shape),
            "float32_bytes": float_bytes, "code_bytes": code_bytes, "ratio": round(float_bytes / code_bytes, 2)}


def encode_from_images(dataset: str, args, images: list) -> dict:
    """PQ from the trunk's output directly: no float feature file is written."""
    paths = feature_paths(args.data_path, dataset, args.data_order)
    for key in ("codes", "codec"):
        if paths[key].exists() and not args.overwrite:
            raise VQADataError(f"{paths[key]} exists; pass --overwrite to replace it")
    ids = check_images(images, f"--images {args.images}")
    id_to_row = {iid: row for row, iid in enumerate(ids)}
    if paths["map"].exists() and load_image_map(paths["map"]) != id_to_row and not args.overwrite:
        raise VQADataError(f"{paths['map']} lists other images than {args.images}; pass --overwrite to replace "
                           "it (features and codes made from the old list will no longer match)")
    base_rows = np.sort(np.array([id_to_row[int(i)] for i in base_init_ids(dataset, args, id_to_row, args.images)]))
    trunk = build_trunk(args.model, args.model_stage, args.weights, args.random_init).to(args.device)
    loader_args = dict(image_size=args.image_size, batch_size=args.batch_size, num_workers=args.num_workers,
                       device=args.device)
    rng = np.random.default_rng(args.seed)
    count = args.train_vectors or 256 * args.codebook_size
    sampler = None
    for maps in trunk_batches(trunk, [images[r][1] for r in base_rows], desc="base-init images", **loader_args):
        if sampler is None:  # the same draw sample_training_vectors makes from a feature file
            hw, channels = maps.shape[1] * maps.shape[2], maps.shape[3]
            check_pq_shape(channels, args.num_codebooks, args.codebook_size)
            sampler = TrainingVectorSampler(len(base_rows) * hw, count, rng)
        sampler.take(maps.reshape(-1, maps.shape[-1]))
    vectors = sampler.vectors()
    print(f"training PQ ({args.num_codebooks} codebooks x {args.codebook_size}) on {len(vectors)} vectors from "
          f"{len(base_rows)} base-init images ({args.data_order} order)", flush=True)
    codec = PQCodec.train(vectors, args.num_codebooks, args.codebook_size, seed=args.seed, device=args.device)
    batches = trunk_batches(trunk, [p for _, p in images], desc="encoding all images", **loader_args)
    first = next(batches)
    _, h, w, c = first.shape
    feature_shape, code_shape = (h, w, c), (h, w, codec.num_codebooks)
    with atomic_npy(paths["codes"], np.uint8, (len(images), *code_shape)) as codes:
        start = 0
        for maps in itertools.chain([first], batches):
            b = len(maps)
            codes[start:start + b] = codec.encode(maps.reshape(-1, c)).reshape(b, *code_shape).cpu().numpy()
            start += b
    write_codebooks(paths, codec, dataset, args, len(base_rows), len(vectors), feature_shape)
    atomic_write_text(paths["map"], json.dumps(image_map(ids, feature_shape, args.image_size, args.model,
                                                         args.model_stage, args.weights)))
    return storage_report(paths, len(images), feature_shape, code_shape)


def extraction_hint(dataset: str, data_path) -> str:
    return (f"re-run vqa_experiments/{dataset}/extract_image_features_{dataset}.py --path <{dataset.upper()} folder> "
            f"--out {data_path} --overwrite")


def load_features(path: Path, dataset: str, data_path) -> np.ndarray:
    """The float feature maps ``(N, H, W, C)``, memory-mapped, or one error naming the file and the fix."""
    try:
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # truncated (mmap longer than the file), not a .npy
        raise VQADataError(f"{path} cannot be read ({exc}); it is truncated or not a feature file: "
                           f"{extraction_hint(dataset, data_path)}") from None
    if features.ndim != 4 or features.dtype.kind != "f" or 0 in features.shape:
        raise VQADataError(f"{path} holds {features.dtype} {features.shape}, not float feature maps (N, H, W, C): "
                           f"{extraction_hint(dataset, data_path)}")
    return features


def encode_dataset(dataset: str, args) -> dict:
    paths = feature_paths(args.data_path, dataset, args.data_order)
    for key in ("codes", "codec"):
        if paths[key].exists() and not args.overwrite:
            raise VQADataError(f"{paths[key]} exists; pass --overwrite to replace it")
    if not paths["features"].is_file():
        raise VQADataError(f"{paths['features']} not found; run vqa_experiments/{dataset}/extract_image_features_"
                           f"{dataset}.py --path <{dataset.upper()} folder> --out {args.data_path} first")
    features = load_features(paths["features"], dataset, args.data_path)
    check_pq_shape(features.shape[-1], args.num_codebooks, args.codebook_size)
    id_to_row = load_image_map(paths["map"])
    if len(id_to_row) != len(features):
        raise VQADataError(f"{paths['map']} maps {len(id_to_row)} images, {paths['features']} has {len(features)}")
    base_ids = base_init_ids(dataset, args, id_to_row, paths["map"])
    rows = np.array([id_to_row[int(i)] for i in base_ids], dtype=np.int64)
    rng = np.random.default_rng(args.seed)
    count = args.train_vectors or 256 * args.codebook_size
    vectors = sample_training_vectors(features, rows, count, rng)
    if not np.isfinite(vectors).all():
        raise VQADataError(f"{paths['features']} holds values that are not finite (NaN or inf); "
                           f"{extraction_hint(dataset, args.data_path)}")
    print(f"training PQ ({args.num_codebooks} codebooks x {args.codebook_size}) on {len(vectors)} vectors from "
          f"{len(rows)} base-init images ({args.data_order} order)", flush=True)
    codec = PQCodec.train(vectors, args.num_codebooks, args.codebook_size, seed=args.seed, device=args.device)
    codes = encode_all(features, codec, paths["codes"])
    write_codebooks(paths, codec, dataset, args, len(rows), len(vectors), features.shape[1:])
    return storage_report(paths, len(features), features.shape[1:], codes.shape[1:])
