"""Networks by torchvision name, weights from files the user has, and G/F from both: nothing is downloaded.

    >>> G, F = split_torchvision("mobilenet_v3_large", "features.7", num_classes=10)   # SIESTA's split
    >>> G(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 80, 14, 14])
"""
from __future__ import annotations

import difflib
from collections import OrderedDict

import torch
import torch.nn as nn
import torchvision

from remind.checkpoint import CheckpointError, safe_load
from remind.split import FrozenTrunk, split_network


def classification_models() -> list[str]:
    """torchvision's image classification models by name (``resnet18``, ``convnext_tiny``, ...)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_network(arch: str, num_classes: int) -> nn.Module:
    """torchvision's ``arch`` with random weights and ``num_classes`` outputs (weights are never downloaded)."""
    names = classification_models()
    if arch not in names:
        close = difflib.get_close_matches(arch.lower(), names, n=5, cutoff=0.6)
        raise ValueError(f"unknown --arch {arch!r}: not a torchvision classification model"
                         + (f" (did you mean {', '.join(close)}?)" if close else "")
                         + "; python -c 'import remind; print(remind.classification_models())' lists them")
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def without_module_prefix(state: dict[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """A state dict with DataParallel's ``module.`` prefixes removed (the original's checkpoints have them)."""
    return OrderedDict((k[len("module."):] if k.startswith("module.") else k, v) for k, v in state.items())


def read_state_dict(path: str, what: str = "weights file") -> tuple[dict[str, torch.Tensor], dict]:
    """A network's state dict from a file (bare, or under 'state_dict' / 'model_state_dict' / 'model_state',
    ``module.`` prefixes removed), and the file's other plain entries (``arch``, ``num_classes``...).
    Loaded without pickle."""
    obj = safe_load(path, what=what)
    state = None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model_state"):
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
        if state is None and obj and all(torch.is_tensor(v) for v in obj.values()):
            state = obj
    if state is None:
        raise CheckpointError(f"{path} holds no state dict; pass a torchvision .pth file or a checkpoint of "
                              "train_base_init_network_from_scratch.py")
    extras = {k: v for k, v in obj.items() if k in ("arch", "num_classes", "row_order", "class_names")}
    return without_module_prefix(state), extras


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Raise if a floating-point tensor of ``state`` holds NaN or infinity (a run that diverged): a network
    built from it would train and predict on NaNs without a word."""
    for name, tensor in state.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"checkpoint {source}: {name} holds values that are not finite (NaN or inf); the "
                                  "run that wrote it diverged: use an earlier checkpoint or train again")


def classifier_prefix(network: nn.Module) -> str | None:
    """Qualified name of the network's last ``nn.Linear`` (its classifier), or None."""
    last = None
    for name, module in network.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return last


def copy_matching_state(target: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str,
                        new_classifier: bool = False) -> list[str]:
    """Copy ``state`` into ``target``, every parameter and buffer by its own name, or raise naming what differs.

    With ``new_classifier`` the last linear layer's tensors may differ in shape (ImageNet weights for a
    10-class run): they keep their random init. Returns the names of the tensors left so.
    """
    own = target.state_dict()
    check_finite({k: state[k] for k in own if k in state}, source)
    head = classifier_prefix(target) if new_classifier else None
    fresh = [k for k, v in own.items() if head is not None and k.startswith(head + ".")
             and k in state and state[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in own.items() if k in state and state[k].shape != v.shape and k not in fresh]
    # tensors the network has no place for: a deeper network of the same family (ResNet-34 weights for a
    # ResNet-18 have all of its names and shapes, and more), whose first blocks would load without a word
    unexpected = [k for k in state if k not in own and torch.is_tensor(state[k])]
    if missing or mismatched or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} tensors it has no place for (e.g. {unexpected[0]})")
        if mismatched:
            detail.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[0]})")
        raise CheckpointError(f"checkpoint {source} does not fit architecture {arch}: {'; '.join(detail)}; "
                              "pass a checkpoint trained with this architecture and --num_classes")
    target.load_state_dict({k: (own[k] if k in fresh else state[k]) for k in own}, strict=True)
    return fresh


def load_weights(network: nn.Module, path: str, arch: str, new_classifier: bool = True) -> None:
    """Load a torchvision-style state dict file into ``network`` (``--weights``); a classifier of another
    number of classes is left at random init, and that is said."""
    state, _ = read_state_dict(path)
    fresh = copy_matching_state(network, state, path, arch, new_classifier=new_classifier)
    if fresh:
        print(f"{path}: classifier {', '.join(fresh)} has another number of classes; it starts from random init",
              flush=True)


def split_torchvision(arch: str, split_at: str, num_classes: int, weights: str | None = None,
                      image_size: int = 224) -> tuple[FrozenTrunk, nn.Module]:
    """G and F of torchvision's ``arch`` cut after layer ``split_at``, from a weights file or random init.

    ``weights``: a torchvision state dict you have (e.g. ``resnet18-f37072fd.pth``; nothing is downloaded).
    """
    network = build_network(arch, num_classes)
    if weights is not None:
        load_weights(network, weights, arch)
    return split_network(network, split_at, image_size)
