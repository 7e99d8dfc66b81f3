"""The original's network names, as aliases over the general splitter (:mod:`remind.split`).

Full networks (what the base-init script trains and checkpoints) are either the
original's ResNet-18 variants -- ``ResNet18``, ``ResNet18ClassifyAfterLayer4_1``
(the same network), ``ResNet18ClassifyAfterLayer4_0`` (layer4 keeps only its
first block), with parameters named ``model.<torchvision name>`` as in the
original -- or any torchvision classification model by its own name
(``resnet50``, ``mobilenet_v3_large``...).

G and F are cut from one full network by :func:`remind.split.split_network`
at a layer name. The original's names keep working: ``--base_arch
ResNet18ClassifyAfterLayer4_1 --extract_features_from model.layer4.0
--classifier ResNet18_StartAt_Layer4_1`` is the paper's split, and F keeps the
checkpoint's own names (``model.layer4.1.*``, ``model.fc.*``). (The original
deleted ``layer4[0]`` from an ``nn.Sequential``; since PyTorch renumbers what is
left, the checkpoint's ``layer4.0`` weights went where ``layer4.1`` belongs,
silently; a cut by name cannot do that.)
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

from remind.checkpoint import CheckpointError
from remind.pq import check_pq_shape
from remind.networks import (build_network, check_finite, classification_models, copy_matching_state, load_weights,
                             read_state_dict)
from remind.split import FrozenTrunk, SplitError, split_network

__all__ = ["FULL_NETWORKS", "SPLIT_FOR_HEAD", "build_full_network", "build_split", "check_classifier_rows",
           "check_finite", "copy_matching_state", "load_network_state", "resolve_network"]

def _torchvision_resnet18(num_classes: int | None) -> nn.Module:
    return torchvision.models.resnet18(weights=None, num_classes=1000 if num_classes is None else num_classes)


# ----------------------------------------------------------------- full networks
class BaseResNet18ClassifyAfterLayer4(nn.Module):
    """ResNet-18 whose layer4 keeps its first ``2 - num_del`` blocks; classifies after them."""

    def __init__(self, num_del: int = 0, num_classes: int | None = None):
        super().__init__()
        self.model = _torchvision_resnet18(num_classes)
        for _ in range(num_del):
            del self.model.layer4[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ResNet18(BaseResNet18ClassifyAfterLayer4):
    def __init__(self, num_classes: int | None = None):
        super().__init__(num_del=0, num_classes=num_classes)


class ResNet18ClassifyAfterLayer4_0(BaseResNet18ClassifyAfterLayer4):
    def __init__(self, num_classes: int | None = None):
        super().__init__(num_del=1, num_classes=num_classes)


class ResNet18ClassifyAfterLayer4_1(BaseResNet18ClassifyAfterLayer4):
    def __init__(self, num_classes: int | None = None):
        super().__init__(num_del=0, num_classes=num_classes)


FULL_NETWORKS = {
    "ResNet18": ResNet18,
    "ResNet18ClassifyAfterLayer4_0": ResNet18ClassifyAfterLayer4_0,
    "ResNet18ClassifyAfterLayer4_1": ResNet18ClassifyAfterLayer4_1,
}


# ------------------------------------------------------- names -> (network, split)
# The original's plastic heads, by the split point (last layer of G) each one goes with: ``--classifier``
# names one of these, and F is what the splitter leaves after that layer.
SPLIT_FOR_HEAD = {
    "ResNet18_StartAt_Layer4_1": "model.layer4.0",
    "ResNet18_StartAt_Layer4_0": "model.layer3",
    "ResNet18_StartAt_Layer3_1": "model.layer3.0",
    "ResNet18_StartAt_Layer3_0": "model.layer2",
    "ResNet18_StartAt_Layer2_1": "model.layer2.0",
    "ResNet18_StartAt_Layer2_0": "model.layer1",
    "ResNet18_StartAt_Layer1_1": "model.layer1.0",
    "ResNet18_StartAt_Layer1_0": "model.maxpool",
    "ResNet18_StartAt_FC": "model.layer4",
}
PAPER_ARCH, PAPER_SPLIT = "ResNet18ClassifyAfterLayer4_1", "model.layer4.0"


def build_full_network(arch: str, num_classes: int | None = None) -> nn.Module:
    """A whole network by name: the original's ResNet-18 variants (parameters ``model.*``) or any torchvision
    classification model (``resnet50``, ``mobilenet_v3_large``, ``convnext_tiny``...), randomly initialised."""
    if arch in FULL_NETWORKS:
        return FULL_NETWORKS[arch](num_classes=num_classes)
    try:
        return build_network(arch, 1000 if num_classes is None else num_classes)
    except ValueError as exc:
        raise ValueError(str(exc).replace("unknown --arch", "unknown network --arch/--base_arch")
                         + f"; or one of the original's: {', '.join(FULL_NETWORKS)}") from None


def resolve_network(arch: str | None = None, split_at: str | None = None, base_arch: str | None = None,
                    extract_features_from: str | None = None, classifier: str | None = None) -> tuple[str, str]:
    """``(arch, split_at)`` from the new flags (``--arch``, ``--split_at``) or the original's aliases
    (``--base_arch``, ``--extract_features_from``, ``--classifier``); the paper's when none is given."""
    for new, old, name in ((arch, base_arch, "--arch/--base_arch"), (split_at, extract_features_from,
                                                                      "--split_at/--extract_features_from")):
        if new is not None and old is not None and new != old:
            raise ValueError(f"{name} disagree ({new!r} vs {old!r}); give one of them")
    arch = arch or base_arch or PAPER_ARCH
    if arch not in FULL_NETWORKS and arch not in classification_models():
        build_full_network(arch)  # raises, naming the networks it knows
    split_at = split_at or extract_features_from
    if classifier is not None:
        if classifier not in SPLIT_FOR_HEAD:
            raise ValueError(f"unknown --classifier {classifier!r}; choose one of: {', '.join(SPLIT_FOR_HEAD)} "
                             "(or give --split_at LAYER: F is every layer after it)")
        if split_at is not None and split_at != SPLIT_FOR_HEAD[classifier]:
            raise ValueError(f"--classifier {classifier} starts after {SPLIT_FOR_HEAD[classifier]}, not after "
                             f"{split_at}; give one of --classifier and --split_at")
        split_at = SPLIT_FOR_HEAD[classifier]
    if split_at is None:
        if arch not in FULL_NETWORKS:
            raise ValueError(f"--arch {arch} needs --split_at LAYER (the last layer of the frozen trunk G); "
                             f"python -m remind.list_layers {arch} lists the layers it can be split at")
        split_at = PAPER_SPLIT
    return arch, split_at


def build_split(arch: str, split_at: str, num_classes: int, ckpt_path: str | None = None,
                weights: str | None = None, image_size: int = 224) -> tuple[FrozenTrunk, nn.Module]:
    """G and F of ``arch`` cut after ``split_at``, with a base-init checkpoint's weights (every tensor, by
    name), or a torchvision weights file's (its classifier may have another number of classes), or random."""
    network = build_full_network(arch, num_classes)
    if ckpt_path is not None and weights is not None:
        raise ValueError("give --classifier_ckpt (a base-init checkpoint) or --weights (torchvision weights), "
                         "not both")
    if ckpt_path is not None:
        state, extras = load_network_state(ckpt_path)
        if "arch" in extras and extras["arch"] != arch:
            raise CheckpointError(f"checkpoint {ckpt_path} was trained as {extras['arch']}, not {arch}; "
                                  f"pass --arch {extras['arch']} or another checkpoint")
        copy_matching_state(network, state, ckpt_path, arch)
    elif weights is not None:
        load_weights(network, weights, arch)
    try:
        return split_network(network, split_at, image_size)
    except SplitError as exc:
        raise ValueError(f"--split_at: {exc}") from None


# ------------------------------------------------------------------ checkpoints
def load_network_state(path: str, what: str = "base-init checkpoint (--classifier_ckpt)"
                       ) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a base-init checkpoint: its state dict (``module.`` prefixes removed) and extras."""
    return read_state_dict(path, what)


# A checkpoint's ``row_order`` when row k of its classifier is the class at position k of the class order and
# ``class_names`` lists those classes (train_base_init_network_from_scratch and convert_released_checkpoint
# write both). The original trained on ImageFolder's alphabetical targets instead, and recorded neither.
ROW_ORDER = "class_order"
CONVERT_HINT = ("python -m image_classification_experiments.convert_released_checkpoint --ckpt CKPT --out NEW.pth "
                "--class_order_text_file ORDER.txt")


def check_classifier_rows(path: str, run_names: list[str | None]) -> str | None:
    """Compare the classes of a checkpoint's classifier rows with this run's labels.

    ``run_names[k]`` is the class folder this run labels ``k`` (None if unknown). Raises when the
    checkpoint records other classes for the same rows; returns a warning when it records nothing (its
    rows may follow another order, e.g. the original release's alphabetical one); None when they agree.
    """
    _, extras = load_network_state(path)
    names = extras.get("class_names")
    if extras.get("row_order") != ROW_ORDER or not isinstance(names, (list, tuple)):
        return (f"warning: {path} does not record which class each classifier row is; if it was trained on "
                "ImageFolder's alphabetical targets (the original release best_ResNet18ClassifyAfterLayer4_1_100"
                f".pth is) its base-init accuracy will be at chance: convert it first with {CONVERT_HINT}")
    wrong = [k for k, name in enumerate(run_names)
             if name is not None and k < len(names) and names[k] is not None and names[k] != name]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{path} has class {names[k]!r} in classifier row {k}, but this run's label files "
                              f"give label {k} to {run_names[k]!r} ({len(wrong)} rows differ); use the label files "
                              "it was trained with, or a checkpoint trained or converted for this class order")
    return None




# ------------------------------------------------------------------ flags
def add_network_flags(group) -> None:
    """``--arch``, ``--split_at``, ``--weights`` and the original's names for them, on an argument group."""
    group.add_argument("--arch", type=str, default=None,
                       help="the whole network: a torchvision classification model (resnet18, resnet50, "
                            "mobilenet_v3_large, efficientnet_b0, convnext_tiny, regnet_y_400mf, ...) or the "
                            f"original's {', '.join(FULL_NETWORKS)} (default: {PAPER_ARCH}, the paper's)")
    group.add_argument("--split_at", type=str, default=None,
                       help="last layer of the frozen trunk G; F is every layer after it (ResNets: layer4.0, the "
                            "paper's; MobileNetV3-Large: features.7, SIESTA's); python -m remind.list_layers ARCH lists "
                            f"them (default for the original's networks: {PAPER_SPLIT})")
    group.add_argument("--weights", type=str, default=None,
                       help="torchvision weights file of --arch you already have (nothing is downloaded); its "
                            "classifier may have another number of classes")
    group.add_argument("--base_arch", type=str, default=None, help="the original's name for --arch")
    group.add_argument("--extract_features_from", type=str, default=None, help="the original's name for --split_at")
    group.add_argument("--classifier", type=str, default=None,
                       help=f"the original's plastic head names ({', '.join(SPLIT_FOR_HEAD)}): another way to give "
                            "--split_at")
    group.add_argument("--num_channels", type=int, default=None,
                       help="channels of G's maps: read from G; checked if given")


def network_from_args(args) -> tuple[str, str]:
    """``(arch, split_at)`` of the parsed network flags."""
    return resolve_network(args.arch, args.split_at, args.base_arch, args.extract_features_from, args.classifier)


def check_map_geometry(map_shape: tuple[int, int, int], num_codebooks: int, codebook_size: int,
                       num_channels: int | None = None) -> None:
    """G's map ``(C, H, W)`` against the PQ geometry (and ``--num_channels`` when given), with a fix."""
    channels = map_shape[0]
    if num_channels is not None and num_channels != channels:
        raise ValueError(f"G gives {channels} channels but --num_channels is {num_channels}; drop the flag or set "
                         f"--num_channels {channels}")
    check_pq_shape(channels, num_codebooks, codebook_size)
