"""Streaming CORe50 (10 categories) with REMIND, in one of the four orderings.

The training frames (sessions 1, 2, 4, 5, 6, 8, 9, 11) are put in stream order (``--order``, one random
permutation per ``--permutation_seed``). The first ``--base_init_fraction`` of the stream is the base
initialisation (PQ training and buffer filling); the rest is streamed one frame at a time, and after every
``--eval_fraction`` of the stream the learner is tested on the test sessions' (3, 7, 10) frames of the
categories seen so far. Results go to ``SAVE_DIR/core50_<order>_accuracies_min_trained_0_max_trained_<frames
streamed>.json`` (the original's CORe50 naming) and ``SAVE_DIR/core50_<order>_accuracy_curve.png``; a rerun
of the same command resumes after the last evaluation. See docs/core50.md.

    python -m image_classification_experiments.core50_experiment --data_dir data/core50_128x128 \
        --order class_instance --permutation_seed 0 --classifier_ckpt resnet18-f37072fd.pth \
        --use_random_resized_crops --use_mixup
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from image_classification_experiments import imagenet_experiment as ie
from image_classification_experiments.configs import config_from_args, config_identity, file_fingerprint
from image_classification_experiments.REMINDModel import REMINDModel
from image_classification_experiments.resnet_models import (
    build_full_network,
    check_finite,
    load_network_state,
    network_from_args,
)
from remind.networks import classifier_prefix
from image_classification_experiments.stream_run import (
    OfflineTraining,
    REMINDStream,
    ResultFiles,
    StreamSpec,
    feature_shape,
    keep_policy,
    run_stream,
    stream_budget,
)
from image_classification_experiments.utils_core50 import (
    NUM_CATEGORIES,
    ORDERINGS,
    Core50Split,
    core50_loader,
    load_core50,
    stream_order,
)
from image_classification_experiments.utils_imagenet import DataError, refuse_unreadable
from remind import reporting
from remind.autosave import Autosave, check_every_minutes
from remind.checkpoint import CheckpointError, atomic_torch_save
from remind.cli import add_preflight_flags, check_device, run_main
from remind.lock import FolderLock


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[ie.learner_args_parser()])
    g = p.add_argument_group("data and stream")
    g.add_argument("--data_dir", type=str, required=True, help="folder holding CORe50's s1/ ... s11/ (128x128)")
    g.add_argument("--order", choices=ORDERINGS, default="iid", help="stream ordering (iid)")
    g.add_argument("--permutation_seed", type=int, default=0,
                   help="seed of the ordering's random permutation; use several for several runs (0)")
    g.add_argument("--frame_stride", type=int, default=20,
                   help="keep every k-th frame of each 20 fps video (20 = 1 fps, the authors' subsampling; 1 = all)")
    g.add_argument("--base_init_fraction", type=float, default=0.1,
                   help="fraction of the stream used for base initialisation (0.1)")
    g.add_argument("--eval_fraction", type=float, default=0.1,
                   help="evaluate after every this much of the stream (0.1)")
    g.add_argument("--base_init_epochs", type=int, default=10,
                   help="epochs of offline training of F (its 10-way head included) on the base-init frames' "
                        "codes before streaming; 0 streams from F as loaded, with an untrained head (10)")
    g.add_argument("--base_init_batch_size", type=int, default=256, help="base-init mini-batch size (256)")
    g.add_argument("--base_init_lr", type=float, default=0.1,
                   help="base-init start LR, cosine-decayed to 0 over the epochs (0.1)")
    g.add_argument("--expt_name", type=str, default="remind_core50", help="experiment name (remind_core50)")
    g.add_argument("--save_dir", type=str, default=None,
                   help="results folder (default streaming_experiments/<expt_name>_<order>_seed<k>); reruns resume")
    g.add_argument("--check_images", action="store_true",
                   help="open and decode every frame (training and test sessions) before starting, and refuse "
                        "the run if any cannot be read")
    add_preflight_flags(g, "--save_dir")
    g = p.add_argument_group("weights")
    g.add_argument("--classifier_ckpt", type=str, default=None,
                   help="weights for G and F: a torchvision ResNet-18 .pth (ImageNet, as the paper) or a project "
                        "base-init checkpoint; its fc is replaced by a random 10-way one when it has other "
                        "outputs. None: random init (no pretrained weights can be downloaded here)")
    return p


# ------------------------------------------------------------------ setup
def validate_args(args) -> None:
    network_from_args(args)
    if args.weights is not None and args.classifier_ckpt is not None:
        raise DataError("give --classifier_ckpt or --weights (the same kind of file here), not both")
    check_device(args.device)
    for name in ("base_init_fraction", "eval_fraction"):
        if not 0 < getattr(args, name) <= 1:
            raise DataError(f"--{name} {getattr(args, name)} must be in (0, 1]")
    if args.base_init_epochs < 0 or args.base_init_batch_size < 1 or args.base_init_lr <= 0:
        raise DataError("--base_init_epochs must be >= 0, --base_init_batch_size >= 1 and --base_init_lr > 0")
    if args.permutation_seed < 0:
        raise DataError(f"--permutation_seed must be non-negative, got {args.permutation_seed}")
    keep_policy(args.keep_checkpoints)
    check_every_minutes(args.checkpoint_every_minutes)
    if args.rehearsal_samples < 0 or args.batch_size < 1 or args.image_size < 32:
        raise DataError("--rehearsal_samples must be >= 0, --batch_size >= 1 and --image_size >= 32")


def save_dir_of(args) -> Path:
    if args.save_dir is not None:
        return Path(args.save_dir)
    return Path("streaming_experiments") / f"{args.expt_name}_{args.order}_seed{args.permutation_seed}"


def eval_points(stream_length: int, base_fraction: float, eval_fraction: float) -> tuple[int, list[int]]:
    """(frames used for base init, frames streamed at each later evaluation), the last one the whole stream."""
    base = min(max(1, int(round(base_fraction * stream_length))), stream_length)
    points, k = [], 1
    while (point := int(round(k * eval_fraction * stream_length))) < stream_length:
        if point > base:
            points.append(point)
        k += 1
    if base < stream_length:
        points.append(stream_length)
    return base, points


def adapted_checkpoint(args) -> dict | None:
    """The --classifier_ckpt (or --weights) tensors as a full 10-way ``--arch`` state, or None for random init.

    Accepts torchvision names (``layer4.1.conv1.weight``) or the project's (``model.layer4.1...``). Every
    tensor but the classifier's must be there with its shape; the classifier is kept only if it already has
    10 outputs.
    """
    path = args.classifier_ckpt or args.weights
    if path is None:
        return None
    arch, _ = network_from_args(args)
    state, _ = load_network_state(path)
    network = build_full_network(arch, NUM_CATEGORIES)
    target, head = network.state_dict(), classifier_prefix(network)

    def own_name(name: str) -> str:
        return name if name in target or f"model.{name}" not in target else f"model.{name}"
    extra = [name for name in state if own_name(name) not in target
             and not (head and own_name(name).startswith(head + "."))]
    if extra:  # e.g. a ResNet-34: its first blocks have ResNet-18's names and shapes, the rest would be dropped
        raise CheckpointError(f"checkpoint {path} does not fit {arch}: it holds {len(extra)} tensors {arch} has no "
                              f"place for (e.g. {extra[0]}; a deeper network?); pass a checkpoint of --arch {arch} "
                              "(torchvision's or this project's)")
    adapted, replaced = {}, []
    for name, tensor in target.items():
        source = state.get(name, state.get(name[len("model."):]) if name.startswith("model.") else None)
        if source is not None and source.shape == tensor.shape:
            adapted[name] = source
        elif head is not None and name.startswith(head + "."):
            adapted[name] = tensor  # torch's random init of a 10-way head
            replaced.append(name)
        else:
            found = "missing" if source is None else f"shape {tuple(source.shape)} vs {tuple(tensor.shape)}"
            raise CheckpointError(f"checkpoint {path} does not fit {arch}: {name} {found}; pass a checkpoint of "
                                  f"--arch {arch} (torchvision's or this project's)")
    check_finite(adapted, path)
    if replaced:
        print(f"{path}: its classifier does not have {NUM_CATEGORIES} outputs; using a random 10-way one")
    return adapted


def prepare_model(args, adapted: dict | None, train: Core50Split, save_dir: Path) -> REMINDModel:
    """REMINDModel with the ImageNet run's settings, on the adapted checkpoint (written to SAVE_DIR)."""
    checkpoint = None
    if adapted is None:
        print("no --classifier_ckpt: G and F are randomly initialised (no pretrained weights can be downloaded "
              "here; the paper uses an ImageNet-pretrained ResNet-18, see docs/core50.md)")
    else:
        checkpoint = save_dir / "core50_base_network.pth"
        atomic_torch_save({"state_dict": adapted, "arch": network_from_args(args)[0]}, checkpoint)
    # CORe50's own frame counts, not ImageNet's 1300, in the LR rule
    lr_examples = ie.resolve_lr_examples("auto", lambda: train.labels, NUM_CATEGORIES)
    config = config_from_args(args, num_classes=NUM_CATEGORIES, lr_examples_per_class=lr_examples)
    return ie.build_model(args, config, None if checkpoint is None else str(checkpoint), weights=None)


# ------------------------------------------------------------------ the run
def stream_plan(args, train: Core50Split) -> tuple[np.ndarray, StreamSpec]:
    """The ordered training frames and the evaluation points."""
    stream = stream_order(train, args.order, args.permutation_seed)
    base_count, points = eval_points(len(stream), args.base_init_fraction, args.eval_fraction)
    return stream, StreamSpec(tuple([base_count] + points), 0, "frames")


def run_budget(args, train: Core50Split, test: Core50Split, save_dir: Path):
    """The preflight table (a randomly initialised model of the same shapes stands in for the checkpoint's)."""
    stream, spec = stream_plan(args, train)
    config = config_from_args(args, num_classes=NUM_CATEGORIES, lr_examples_per_class=1)
    with torch.random.fork_rng(devices=[]):  # sizes only: the run's own draws stay untouched
        model = ie.build_model(args, config, None, weights=None)
    evaluated = [int(np.isin(test.labels, np.unique(train.labels[stream[:end]])).sum()) for end in spec.points]
    return stream_budget(f"preflight: {args.expt_name} ({args.order}, seed {args.permutation_seed})", spec,
                         list(spec.points), evaluated, model, feature_shape(model, args.image_size), save_dir,
                         keep_policy(args.keep_checkpoints))


def streaming(args, model: REMINDModel, train: Core50Split, test: Core50Split, save_dir: Path) -> dict:
    stream, spec = stream_plan(args, train)
    base = np.unique(train.labels[stream[:spec.points[0]]])

    pin = str(args.device).startswith("cuda")

    def train_loader(start: int, end: int):
        return core50_loader(train, stream[start:end], args.batch_size, args.image_size, args.num_workers, pin)

    def test_loader(end: int):
        seen = np.unique(train.labels[stream[:end]])
        return core50_loader(test, np.nonzero(np.isin(test.labels, seen))[0], args.batch_size, args.image_size,
                             args.num_workers, pin)

    identity = {"order": args.order, "permutation_seed": args.permutation_seed, "stream_length": len(stream),
                **config_identity(model.config), "frame_stride": args.frame_stride, "image_size": args.image_size,
                "base_init_fraction": args.base_init_fraction, "eval_fraction": args.eval_fraction,
                "base_init_epochs": args.base_init_epochs, "base_init_batch_size": args.base_init_batch_size,
                "base_init_lr": args.base_init_lr, "classifier_ckpt_sha256": file_fingerprint(args.classifier_ckpt)}
    # F's 10-way head starts random: train F offline on the base-init codes (the buffer holds exactly them),
    # then stream with a fresh optimizer, as after the ImageNet base initialisation.
    base_training = OfflineTraining(args.base_init_epochs, args.base_init_batch_size, args.base_init_lr)
    autosave = Autosave(args.checkpoint_every_minutes)
    method = REMINDStream(model, train_loader, test_loader, save_dir / "remind_model", identity,
                          feature_shape(model, args.image_size), base_training=base_training, autosave=autosave,
                          keep=keep_policy(args.keep_checkpoints),
                          eval_from_images=args.eval_from_images, allow_changes=args.allow_changed_settings)
    files = ResultFiles(save_dir, f"REMIND {args.order} seed {args.permutation_seed}", prefix=f"core50_{args.order}_",
                        plot_name=f"core50_{args.order}_accuracy_curve.png", xlabel="training frames streamed")
    with autosave:
        return run_stream(spec, method, files, lambda labels: np.isin(labels, base),
                          omit_non_base_at_base_init=False)


def main(argv=None) -> int:
    args = ie.parse_args(get_args_parser(), argv)

    def body():
        validate_args(args)
        save_dir = save_dir_of(args)
        torch.manual_seed(args.seed)  # random init of G/F (or of the 10-way fc)
        train, test = load_core50(args.data_dir, args.frame_stride)
        if args.check_images:
            refuse_unreadable([*train.paths, *test.paths], f"{len(train)} training and {len(test)} test frames",
                              hint="")
        adapted = adapted_checkpoint(args)  # fails here, before anything is written, if it is bad
        plan = run_budget(args, train, test, save_dir)
        if plan.preflight(args.dry_run, args.skip_disk_check):
            return 0
        with FolderLock(save_dir):  # one run per folder
            model = prepare_model(args, adapted, train, save_dir)
            feature_shape(model, args.image_size)
            print(f"git commit {reporting.git_commit()}; {len(train)} training and {len(test)} test frames; "
                  "arguments:\n" + json.dumps(vars(args), indent=2, sort_keys=True))
            streaming(args, model, train, test, save_dir)
    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
