"""ResNet-18 variants used by REMIND, split into a frozen trunk G and a plastic head F.

Full networks (what the base-init script trains and checkpoints):
  ``ResNet18``, ``ResNet18ClassifyAfterLayer4_1`` (the same network),
  ``ResNet18ClassifyAfterLayer4_0`` (layer4 keeps only its first block).
Their parameters are named ``model.<torchvision name>``, as in the original.

Plastic heads F (``ResNet18_StartAt_<Layer>_<block>`` and ``ResNet18_StartAt_FC``)
hold the blocks from a split point onwards *under their original names*: F for
``Layer4_1`` has ``model.layer4.1.*`` and ``model.fc.*``. The mapping from a
checkpoint to F is therefore explicit and checked name by name in
:func:`load_plastic_weights`. (The original deleted ``layer4[0]`` from an
``nn.Sequential``; since PyTorch renumbers what is left, the checkpoint's
``layer4.0`` weights went where ``layer4.1`` belongs, silently.)

The trunk G is :class:`FeatureTrunk`: the full network's modules run only up
to and including the split layer (e.g. ``model.layer4.0``), in eval mode.
"""
from __future__ import annotations

import re
from collections import OrderedDict

import torch
import torch.nn as nn
import torchvision

from remind.checkpoint import CheckpointError, safe_load

STAGES = ("layer1", "layer2", "layer3", "layer4")
STEM = ("conv1", "bn1", "relu", "maxpool")


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


# ----------------------------------------------------------------- plastic heads
class ResNet18StartAt(nn.Module):
    """The part of ResNet-18 from ``start_stage``'s block ``start_block`` to ``fc``.

    Args:
        start_stage: one of ``layer1..layer4``, or None for the classifier only.
        start_block: first block kept in ``start_stage`` (0 or 1).
        num_classes: outputs of ``fc``.
    Input ``(N, C, H, W)`` feature maps, output ``(N, num_classes)`` logits.
    """

    def __init__(self, start_stage: str | None, start_block: int = 0, num_classes: int | None = None):
        super().__init__()
        full = _torchvision_resnet18(num_classes)
        self.model = nn.Module()
        self.stage_names: list[str] = []
        if start_stage is not None:
            for stage in STAGES[STAGES.index(start_stage):]:
                blocks = getattr(full, stage)
                first = start_block if stage == start_stage else 0
                # Keep the original block numbers as module names (see module docstring).
                kept = OrderedDict((str(i), blocks[i]) for i in range(first, len(blocks)))
                setattr(self.model, stage, nn.Sequential(kept))
                self.stage_names.append(stage)
        self.model.fc = full.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stage_names:
            x = getattr(self.model, stage)(x)
        x = x.mean(dim=(2, 3))
        return self.model.fc(x)


def _start_at(stage: str | None, block: int = 0):
    def build(num_classes: int | None = None) -> ResNet18StartAt:
        return ResNet18StartAt(stage, block, num_classes)
    return build


FULL_NETWORKS = {
    "ResNet18": ResNet18,
    "ResNet18ClassifyAfterLayer4_0": ResNet18ClassifyAfterLayer4_0,
    "ResNet18ClassifyAfterLayer4_1": ResNet18ClassifyAfterLayer4_1,
}
PLASTIC_NETWORKS = {
    "ResNet18_StartAt_Layer4_1": _start_at("layer4", 1),
    "ResNet18_StartAt_Layer4_0": _start_at("layer4", 0),
    "ResNet18_StartAt_Layer3_1": _start_at("layer3", 1),
    "ResNet18_StartAt_Layer3_0": _start_at("layer3", 0),
    "ResNet18_StartAt_Layer2_1": _start_at("layer2", 1),
    "ResNet18_StartAt_Layer2_0": _start_at("layer2", 0),
    "ResNet18_StartAt_Layer1_1": _start_at("layer1", 1),
    "ResNet18_StartAt_Layer1_0": _start_at("layer1", 0),
    "ResNet18_StartAt_FC": _start_at(None),
}
# The split point (last layer of G) that goes with each head.
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


def _lookup(name: str, registry: dict, flag: str):
    if name not in registry:
        raise ValueError(f"unknown {flag} {name!r}; choose one of: {', '.join(registry)}")
    return registry[name]


def build_full_network(arch: str, num_classes: int | None = None) -> nn.Module:
    return _lookup(arch, FULL_NETWORKS, "--base_arch/--arch")(num_classes=num_classes)


def build_plastic_network(arch: str, num_classes: int | None = None) -> ResNet18StartAt:
    return _lookup(arch, PLASTIC_NETWORKS, "--classifier")(num_classes=num_classes)


# ------------------------------------------------------------------ the trunk G
class FeatureTrunk(nn.Module):
    """The frozen part G: runs a full network's modules up to ``split_layer`` only.

    Args:
        network: a full network (parameters named ``model.*``).
        split_layer: ``model.maxpool``, ``model.layerK`` or ``model.layerK.B``.
    """

    def __init__(self, network: nn.Module, split_layer: str):
        super().__init__()
        match = re.fullmatch(r"model\.(maxpool|layer([1-4]))(?:\.(\d+))?", split_layer)
        if match is None:
            raise ValueError(f"--extract_features_from {split_layer!r} is not a ResNet split point; use "
                             "model.layer4.0 (paper), model.layerK or model.layerK.B")
        resnet = network.model
        parts: list[tuple[str, nn.Module]] = [(name, getattr(resnet, name)) for name in STEM]
        if match.group(2) is not None:
            last_stage = int(match.group(2))
            for k in range(1, last_stage + 1):
                stage = getattr(resnet, f"layer{k}")
                if k == last_stage and match.group(3) is not None:
                    block = int(match.group(3))
                    if block >= len(stage):
                        raise ValueError(f"{split_layer} does not exist: layer{k} has {len(stage)} blocks")
                    stage = stage[:block + 1]
                parts.append((f"layer{k}", stage))
        self.split_layer = split_layer
        self.layers = nn.Sequential(OrderedDict(parts))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FeatureTrunk":
        # G is frozen: BatchNorm statistics must never move, whatever callers do.
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


# ------------------------------------------------------------------ checkpoints
def without_module_prefix(state: dict[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """A state dict with DataParallel's ``module.`` prefixes removed (the original's checkpoints have them)."""
    return OrderedDict((k[len("module."):] if k.startswith("module.") else k, v) for k, v in state.items())


def load_network_state(path: str, what: str = "base-init checkpoint (--classifier_ckpt)"
                       ) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a base-init checkpoint: its state dict (``module.`` prefixes removed) and extras."""
    obj = safe_load(path, what=what)
    if isinstance(obj, dict) and "state_dict" in obj:
        state = obj["state_dict"]
    elif isinstance(obj, dict) and "model_state" in obj:
        state = obj["model_state"]
    elif isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        state = obj
    else:
        raise CheckpointError(f"{path} holds no 'state_dict'; pass a checkpoint written by "
                              "train_base_init_network_from_scratch.py")
    state = without_module_prefix(state)
    extras = {k: v for k, v in obj.items() if k in ("arch", "num_classes", "row_order", "class_names")} \
        if isinstance(obj, dict) else {}
    return state, extras


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


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Raise if a floating-point tensor of ``state`` holds NaN or infinity (a run that diverged): a network
    built from it would train and predict on NaNs without a word."""
    for name, tensor in state.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"checkpoint {source}: {name} holds values that are not finite (NaN or inf); the "
                                  "run that wrote it diverged: use an earlier checkpoint or train again")


def copy_matching_state(target: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Copy ``state`` into ``target``, every parameter and buffer by its own name, or raise."""
    own = target.state_dict()
    check_finite({k: state[k] for k in own if k in state}, source)
    missing = [k for k in own if k not in state]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or mismatched:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if mismatched:
            detail.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[0]})")
        raise CheckpointError(f"checkpoint {source} does not fit architecture {arch}: {'; '.join(detail)}; "
                              "pass a checkpoint trained with this architecture and --num_classes")
    target.load_state_dict({k: state[k] for k in own}, strict=True)


def load_plastic_weights(plastic: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Give F the checkpoint's own tensors: F's ``model.layer4.1.conv1.weight`` is the checkpoint's
    ``model.layer4.1.conv1.weight``, and so on for every kept block and ``fc``."""
    copy_matching_state(plastic, state, source, arch)


def build_trunk(arch: str, ckpt_path: str | None, split_layer: str, num_classes: int | None) -> FeatureTrunk:
    """G: the full ``arch`` loaded from ``ckpt_path`` (random init if None), cut at ``split_layer``."""
    network = build_full_network(arch, num_classes)
    if ckpt_path is not None:
        state, extras = load_network_state(ckpt_path)
        if "arch" in extras and extras["arch"] != arch:
            raise CheckpointError(f"checkpoint {ckpt_path} was trained as {extras['arch']}, not {arch}; "
                                  f"pass --base_arch {extras['arch']} or another checkpoint")
        copy_matching_state(network, state, ckpt_path, arch)
    return FeatureTrunk(network, split_layer)


def build_plastic(arch: str, ckpt_path: str | None, num_classes: int) -> ResNet18StartAt:
    """F: the head ``arch`` with the checkpoint's tensors for its layers (random init if None)."""
    plastic = build_plastic_network(arch, num_classes)
    if ckpt_path is not None:
        state, _ = load_network_state(ckpt_path)
        load_plastic_weights(plastic, state, ckpt_path, arch)
    return plastic
