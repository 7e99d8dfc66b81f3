"""Frozen ResNet feature maps for VQA images (shared by the CLEVR and TDIUC extraction scripts).

CLEVR: ResNet-101 through ``layer3`` (14x14x1024 at 224 px). TDIUC: ResNet-152
through ``layer4`` (7x7x2048). Images are resized to a square (bicubic, as
the original) and normalised with ImageNet's mean and std.

No weights can be downloaded here: pass torchvision's ImageNet file
(``--weights resnet101-*.pth``, from https://download.pytorch.org/models/),
or a ResNet checkpoint you trained (any state dict with torchvision's key
names, optionally under 'state_dict' / 'model_state_dict' and with a
'module.' prefix; ``train_scene_trunk.py`` writes one from scene
annotations, which is what ``make demo-vqa`` uses), or say ``--random_init`` to use a randomly initialised
trunk (for smoke tests and the offline demo only).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torchvision
from PIL import Image
from tqdm import tqdm

from image_classification_experiments.utils_imagenet import IMAGENET_MEAN, IMAGENET_STD, read_image
from remind.checkpoint import CheckpointError, atomic_write_text, safe_load
from remind.cli import check_device, default_device, run_main
from remind.split import FrozenTrunk, split_network
from vqa_experiments.vqa_data import VQADataError, atomic_npy, feature_paths

TRUNK_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def trained_stages(state) -> int | None:
    """How deep a ``train_scene_trunk`` file was trained (its meta says), or None for any other weights file."""
    if not isinstance(state, dict) or not isinstance(state.get("meta_json"), str):
        return None
    try:
        stage = json.loads(state["meta_json"]).get("trained_through_stage")
    except (ValueError, AttributeError):
        return None
    return stage if isinstance(stage, int) else None


def build_trunk(arch: str, stage: int, weights: str | None, random_init: bool, seed: int = 0) -> FrozenTrunk:
    """``conv1 .. layer{stage}`` of a torchvision ResNet (cut by :func:`remind.split.split_network`), frozen,
    in eval mode."""
    if (weights is None) == (not random_init):
        raise VQADataError("pass exactly one of --weights PATH (a torchvision .pth; nothing can be downloaded "
                           "here) or --random_init")
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(weights=None)
    if weights is not None:
        state = safe_load(weights, f"{arch} weights")
        trained = trained_stages(state)
        if trained is not None and stage > trained:
            raise CheckpointError(f"{weights} was trained through layer{trained} only (train_scene_trunk "
                                  f"--model_stage {trained}); pass --model_stage {trained} or less")
        for key in ("state_dict", "model_state_dict"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
        if not isinstance(state, dict):
            raise CheckpointError(f"{weights} does not hold a state dict")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        wanted = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
        missing = [k for k in wanted if k not in state]
        if missing:
            raise CheckpointError(f"{weights} is not a {arch} checkpoint: it lacks {len(missing)} tensors "
                                  f"(e.g. {missing[0]})")
        extra = [k for k in state if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
                 and k not in wanted]
        if extra:
            raise CheckpointError(f"{weights} holds tensors a {arch} does not have (e.g. {extra[0]}): it is another "
                                  "ResNet depth; pass its --model")
        bad = [k for k in wanted if tuple(state[k].shape) != tuple(wanted[k].shape)]
        if bad:
            raise CheckpointError(f"{weights}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, {arch} needs "
                                  f"{tuple(wanted[bad[0]].shape)}; is it a different ResNet depth?")
        net.load_state_dict({k: state[k] for k in wanted}, strict=False)
    trunk, _ = split_network(net, f"layer{stage}", image_size=64)
    return trunk


class ImageList(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], image_size: int):
        self.paths = paths
        self.image_size = image_size
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        img = read_image(self.paths[index], hint="").resize((self.image_size, self.image_size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        return (x - self.mean) / self.std


def check_images(images: list[tuple[int, Path]], source: str) -> list[int]:
    """The image ids, after refusing an empty list (naming ``source``, e.g. "--path data/CLEVR_v1.0") and
    repeated ids."""
    if not images:
        raise VQADataError(f"no images found in {source}; pass the dataset's own folder, the one that holds its "
                           "image folders (CLEVR_v1.0, TDIUC)")
    ids = [iid for iid, _ in images]
    if len(set(ids)) != len(ids):
        raise VQADataError("two images have the same image id; check the image folders")
    return ids


def image_map(ids: list[int], feature_shape, image_size: int, arch: str, stage: int, weights: str | None) -> dict:
    """The map file's contents: image id -> row of the feature and code arrays, and how the rows were made."""
    return {"image_id_to_ix": {str(i): row for row, i in enumerate(ids)},
            "image_ix_to_id": {str(row): str(i) for row, i in enumerate(ids)},
            "feature_shape": list(feature_shape), "image_size": image_size, "arch": arch, "stage": stage,
            "weights": weights or "random_init"}


def trunk_batches(trunk: nn.Module, paths: list[Path], image_size: int, batch_size: int, num_workers: int,
                  device: str, desc: str):
    """Feature maps ``(B, H, W, C)`` on ``device``, batch by batch, in the order of ``paths``."""
    loader = torch.utils.data.DataLoader(ImageList(paths, image_size), batch_size=batch_size, num_workers=num_workers)
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, unit="batch", file=sys.stdout, disable=None):
            yield trunk(batch.to(device)).permute(0, 2, 3, 1)


def extract(dataset: str, images: list[tuple[int, Path]], out_dir, arch: str, stage: int, weights: str | None,
            random_init: bool, image_size: int, batch_size: int, num_workers: int, device: str, dtype: str,
            overwrite: bool, source: str) -> dict:
    """Write ``all_{dataset}_{feat}.npy`` (N, H, W, C) and ``map_{dataset}_{feat}.json``; return a summary."""
    ids = check_images(images, source)
    paths = feature_paths(out_dir, dataset)
    for key in ("features", "map"):
        if paths[key].exists() and not overwrite:
            raise VQADataError(f"{paths[key]} exists; pass --overwrite to replace it")
    trunk = build_trunk(arch, stage, weights, random_init).to(device)
    batches = trunk_batches(trunk, [p for _, p in images], image_size, batch_size, num_workers, device,
                            f"{arch} {dataset} features")
    first = next(batches)
    shape = [len(images), *first.shape[1:]]
    with atomic_npy(paths["features"], dtype, shape) as features:
        start = 0
        for maps in itertools.chain([first], batches):
            features[start:start + len(maps)] = maps.cpu().numpy()
            start += len(maps)
    atomic_write_text(paths["map"], json.dumps(image_map(ids, shape[1:], image_size, arch, stage, weights)))
    return {"images": len(images), "feature_shape": shape[1:], "bytes": int(np.prod(shape)) * np.dtype(dtype).itemsize,
            "features": str(paths["features"]), "map": str(paths["map"])}


def add_trunk_arguments(parser: argparse.ArgumentParser, arch: str, stage: int) -> None:
    parser.add_argument("--weights", default=None, help=f"torchvision {arch} .pth file (or your own trained trunk)")
    parser.add_argument("--random_init", action="store_true", help="randomly initialised trunk (demo/smoke test)")
    parser.add_argument("--model", default=arch, choices=TRUNK_ARCHS)
    parser.add_argument("--model_stage", type=int, default=stage, choices=[1, 2, 3, 4])
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--num_workers", type=int, default=2)


def check_trunk_arguments(args) -> None:
    """The trunk's and the loader's flags, and ``--device``, checked before any image is read."""
    check_device(args.device)
    if args.image_size < 32 or args.batch_size < 1 or args.num_workers < 0:
        raise VQADataError(f"--image_size must be at least 32, --batch_size at least 1 and --num_workers at least 0 "
                           f"(got {args.image_size}, {args.batch_size} and {args.num_workers})")


def add_arguments(parser: argparse.ArgumentParser, arch: str, stage: int) -> None:
    parser.add_argument("--path", required=True, help="dataset folder holding the images")
    parser.add_argument("--out", default=None, help="work folder for the features (default: --path)")
    add_trunk_arguments(parser, arch, stage)
    parser.add_argument("--device", default=default_device(), help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                        help="on-disk precision of the features (float16 halves the disk PQ training needs)")
    parser.add_argument("--overwrite", action="store_true")


def run(dataset: str, images_fn, argv, arch: str, stage: int, doc: str) -> int:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, arch, stage)
    args = parser.parse_args(argv)

    def body():
        check_trunk_arguments(args)
        images = images_fn(Path(args.path))
        print(json.dumps(extract(dataset, images, args.out or args.path, args.model, args.model_stage, args.weights,
                                 args.random_init, args.image_size, args.batch_size, args.num_workers, args.device,
                                 args.dtype, args.overwrite, source=f"--path {args.path}")))
    return run_main(body)
