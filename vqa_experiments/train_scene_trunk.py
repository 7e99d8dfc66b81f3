"""Train a ResNet trunk on CLEVR-format scene annotations: the demo's stand-in for ImageNet weights.

    python -m vqa_experiments.train_scene_trunk --scenes data/demo-vqa/raw/pretrain_scenes \\
        --out data/demo-vqa/trunk/resnet18_scenes.pth --model resnet18 --model_stage 2 --image_size 64

The real runs extract features with an ImageNet-trained ResNet, which cannot be
downloaded here; a randomly initialised one carries no usable visual
information. This trains a torchvision ResNet on scenes that are *not* part of
the VQA data (``make_synthetic_vqa --num_pretrain_images``), through the stage
whose map the extraction will use (``--model_stage``), with a 1x1 convolution
on that map read at every cell: is an object centred here (binary
cross-entropy over all cells) and, at the cells that hold one, its size,
colour, material, shape and all four together (one cross-entropy each). So
the map must say, cell by cell, what object is there. Images are resized and
normalised exactly as the extraction does (``image_features.ImageList``) and
flipped left-right at random (the targets with them).

The output holds torchvision's key names under ``state_dict`` (plus the head,
as ``dense_head.*``) and, in ``meta_json``, how it was trained; the extraction
and PQ scripts take it through their ordinary flags: ``--model resnet18
--weights OUT --model_stage 2``. Deeper stages than the trained one are left
at their random initialisation, and the extraction refuses them.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from image_classification_experiments.utils_imagenet import read_image
from remind.checkpoint import atomic_torch_save
from remind.cli import check_device, default_device, run_main
from remind.split import cut_network
from vqa_experiments.image_features import TRUNK_ARCHS, ImageList
from vqa_experiments.make_synthetic_vqa import ATTRIBUTES, VALUES, object_cell
from vqa_experiments.vqa_data import VQADataError, read_json

# Each group is one classification at the cell holding an object's centre: the single attributes, and all four
# together (an object's identity, 96 values). One more output per cell says whether an object is centred there.
GROUPS: tuple[tuple[str, ...], ...] = tuple((a,) for a in ATTRIBUTES) + (ATTRIBUTES,)


def group_values(group: tuple[str, ...]) -> list[tuple[str, ...]]:
    return list(itertools.product(*(VALUES[a] for a in group)))


def head_size() -> int:
    return 1 + sum(len(group_values(g)) for g in GROUPS)


def scene_targets(scenes: list[dict], render_size: int, grid: int) -> torch.Tensor:
    """``(N, len(GROUPS), grid, grid)``: per cell and group, the index of the value of the object centred there,
    or -1 where no object is."""
    index = [{v: k for k, v in enumerate(group_values(g))} for g in GROUPS]
    targets = torch.full((len(scenes), len(GROUPS), grid, grid), -1, dtype=torch.long)
    for row, scene in enumerate(scenes):
        for obj in scene["objects"]:
            cy, cx = object_cell(obj, render_size, grid, grid)
            for g, group in enumerate(GROUPS):
                targets[row, g, cy, cx] = index[g][tuple(obj[a] for a in group)]
    return targets


def dense_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Whether an object is centred in each cell (binary cross-entropy over all cells), plus, for each group,
    the cross-entropy of the object's value at the cells that hold one. Objects cover few of the cells, so
    values are learnt from object cells only rather than drowned by the empty ones."""
    present = targets[:, 0] >= 0
    loss = nn.functional.binary_cross_entropy_with_logits(logits[:, 0], present.float())
    first = 1
    for g, group in enumerate(GROUPS):
        width = len(group_values(group))
        if present.any():
            loss = loss + nn.functional.cross_entropy(logits[:, first:first + width], targets[:, g], ignore_index=-1)
        first += width
    return loss


class DenseTrunk(nn.Module):
    """``conv1 .. layer{stage}`` of a torchvision ResNet (cut by :func:`remind.split.cut_network`, trainable)
    plus a 1x1 convolution predicting each cell's targets."""

    def __init__(self, arch: str, stage: int, num_targets: int):
        super().__init__()
        self.resnet = getattr(torchvision.models, arch)(weights=None)
        r = self.resnet
        self.stages, _ = cut_network(r, f"layer{stage}", image_size=64)
        channels = [m for m in getattr(r, f"layer{stage}").modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features
        self.head = nn.Conv2d(channels, num_targets, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x))


def load_scenes(folder: Path) -> tuple[list[Path], list[dict], int]:
    """Image paths, scenes, and the side in pixels of the images the scenes' pixel coordinates refer to."""
    file = folder / "scenes.json"
    if not file.is_file():
        raise VQADataError(f"{file} not found; write scenes with python -m vqa_experiments.make_synthetic_vqa "
                           "--num_pretrain_images N (or point --scenes at a folder holding scenes.json and images/)")
    scenes = read_json(file, "scene file").get("scenes")
    if not isinstance(scenes, list) or not scenes:
        raise VQADataError(f"{file} holds no scenes")
    paths = [folder / "images" / scene["image_filename"] for scene in scenes]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise VQADataError(f"{len(missing)} image(s) of {file} are missing (e.g. {missing[0]})")
    return paths, scenes, read_image(paths[0], hint="").width  # one line, naming the file, if it cannot be read


def load_images(paths: list[Path], image_size: int) -> torch.Tensor:
    """All images, resized and normalised as the feature extraction does, as one ``(N, 3, S, S)`` tensor."""
    images = ImageList(paths, image_size)
    return torch.stack([images[i] for i in range(len(images))])


def train_trunk(images: torch.Tensor, targets: torch.Tensor, arch: str, stage: int, epochs: int, batch_size: int,
                lr: float, seed: int, device: torch.device, log=print) -> tuple[DenseTrunk, list[float]]:
    """SGD with Nesterov momentum, one-cycle learning rate; returns the network (eval mode) and each epoch's loss."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = DenseTrunk(arch, stage, head_size()).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * ((len(images) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.2)
    losses = []
    for epoch in range(epochs):
        net.train()
        start, total = time.time(), 0.0
        order = torch.randperm(len(images), generator=generator)
        for first in range(0, len(images), batch_size):
            rows = order[first:first + batch_size]
            flip = (torch.rand(len(rows), generator=generator) < 0.5).view(-1, 1, 1, 1)
            x = torch.where(flip, images[rows].flip(3), images[rows]).to(device)
            y = torch.where(flip, targets[rows].flip(3), targets[rows]).to(device)
            loss = dense_loss(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(rows)
        losses.append(total / len(images))
        log(f"trunk epoch {epoch + 1}/{epochs}: mean loss {losses[-1]:.4f} ({time.time() - start:.1f} s)")
    return net.eval(), losses


@torch.no_grad()
def object_accuracy(net: DenseTrunk, images: torch.Tensor, scenes: list[dict], render_size: int, device,
                    batch_size: int = 128) -> dict[str, float]:
    """Per single attribute: share of objects whose value the head predicts at the object's cell."""
    outputs = torch.cat([net(images[i:i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])
    targets = scene_targets(scenes, render_size, outputs.shape[-1])
    present = targets[:, 0] >= 0
    right, first = {}, 1
    for g, group in enumerate(GROUPS):
        width = len(group_values(group))
        if len(group) == 1:
            predicted = outputs[:, first:first + width].argmax(1)  # the value, given there is an object
            right[group[0]] = float((predicted == targets[:, g])[present].float().mean())
        first += width
    count = int(present.sum())
    return {"objects": count, **right}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", required=True, help="folder with scenes.json and images/ (CLEVR scene format)")
    parser.add_argument("--out", required=True, help="weights file to write (refused if it exists)")
    parser.add_argument("--model", default="resnet18", choices=TRUNK_ARCHS)
    parser.add_argument("--model_stage", type=int, default=3, choices=[1, 2, 3, 4],
                        help="the stage whose feature map is trained (and extracted later); deeper stages stay "
                             "untrained and are refused by the extraction")
    parser.add_argument("--image_size", type=int, default=96, help="use the size the extraction will use")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--holdout", type=int, default=100, help="scenes kept out of training to report accuracy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=default_device())
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)

    def body():
        for name in ("image_size", "epochs", "batch_size"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name} {getattr(args, name)} must be positive")
        if not args.lr > 0:
            raise ValueError(f"--lr {args.lr} must be positive")
        device = check_device(args.device)
        out = Path(args.out)
        if out.exists():
            raise ValueError(f"{out} exists; delete it or choose another --out")
        paths, scenes, render_size = load_scenes(Path(args.scenes))
        if not 0 <= args.holdout < len(scenes):
            raise ValueError(f"--holdout {args.holdout} must be between 0 and the number of scenes - 1 "
                             f"({len(scenes) - 1})")
        images = load_images(paths, args.image_size)
        with torch.no_grad():
            grid = DenseTrunk(args.model, args.model_stage, head_size()).stages.eval()(images[:1]).shape[-1]
        targets = scene_targets(scenes, render_size, grid)
        train = slice(args.holdout, None)
        start = time.time()
        net, losses = train_trunk(images[train], targets[train], args.model, args.model_stage, args.epochs,
                                  args.batch_size, args.lr, args.seed, device)
        summary = {"arch": args.model, "trained_through_stage": args.model_stage, "image_size": args.image_size,
                   "grid": grid, "epochs": args.epochs, "train_scenes": len(scenes) - args.holdout,
                   "losses": losses, "seconds": round(time.time() - start, 1), "groups": [list(g) for g in GROUPS]}
        if args.holdout:
            summary["holdout_object_accuracy"] = object_accuracy(net, images[:args.holdout], scenes[:args.holdout],
                                                                 render_size, device)
            print("held-out scenes, object attributes read at their cell: " + ", ".join(
                f"{a} {100 * v:.1f}%" for a, v in summary["holdout_object_accuracy"].items() if a != "objects"))
        out.parent.mkdir(parents=True, exist_ok=True)
        state = {k.removeprefix("resnet."): v.cpu() for k, v in net.state_dict().items()
                 if k.startswith("resnet.")}
        state.update({f"dense_head.{k}": v.cpu() for k, v in net.head.state_dict().items()})
        atomic_torch_save({"state_dict": state, "meta_json": json.dumps(summary)}, out)
        print(json.dumps({k: v for k, v in summary.items() if k != "groups"}))
    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
