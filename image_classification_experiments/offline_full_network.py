"""Whole-network offline baseline: at every evaluation point of the stream, a ResNet-18
trained from scratch, offline, on all classes seen so far.

This is the offline learner of the usual kind (what the paper's Omega
normalises by, to our reading): no PQ, no frozen trunk. Each point reuses
``train_base_init_network_from_scratch.py`` with ``--base_max_class`` set to
the classes seen, then evaluates the network on those classes' val images and
writes the same files as ``imagenet_experiment.py``
(``accuracies_min_trained_0_max_trained_<K>.json``, ``preds_...pth``, the
plot), so ``compute_omega.py --offline`` takes its folder. Networks are kept
in ``SAVE_DIR/networks/``; a rerun continues where it stopped.

    python -m image_classification_experiments.offline_full_network --images_dir /data/ImageNet2012 \
        --label_dir ./imagenet_files --save_dir results/offline_full --epochs 40
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from image_classification_experiments import imagenet_experiment as ie
from image_classification_experiments import train_base_init_network_from_scratch as base_init
from image_classification_experiments.REMINDModel import default_device
from image_classification_experiments.resnet_models import build_full_network, load_network_state
from image_classification_experiments.utils_imagenet import (DataError, check_class_range, default_num_workers,
                                                             load_labels)
from remind.checkpoint import CheckpointError


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images_dir", required=True, help="folder with train/ and val/ class folders")
    p.add_argument("--label_dir", required=True, help="folder with imagenet_indices/imagenet_{train,val}_labels.npy")
    p.add_argument("--save_dir", required=True, help="results folder; a rerun continues there")
    p.add_argument("--expt_name", default="offline_full_network", help="name in plots and tables")
    p.add_argument("--arch", default="ResNet18ClassifyAfterLayer4_1", help="network trained at each point")
    p.add_argument("--num_classes", type=int, default=1000, help="outputs of fc (1000)")
    p.add_argument("--min_class", type=int, default=0, help="first class (0)")
    p.add_argument("--base_init_classes", type=int, default=100, help="first evaluation point (100)")
    p.add_argument("--class_increment", type=int, default=100, help="classes between evaluations (100)")
    p.add_argument("--streaming_max_class", type=int, default=None, help="last point (default --num_classes)")
    p.add_argument("--epochs", type=int, default=40, help="epochs per point (40, as the base-init network)")
    p.add_argument("--train_batch_size", type=int, default=256, help="training mini-batch (256)")
    p.add_argument("--lr", type=float, default=0.1, help="initial learning rate (0.1)")
    p.add_argument("--lr_step_epochs", type=int, default=15, help="x0.1 every this many epochs (15)")
    p.add_argument("--crop_scale_min", type=float, default=0.08, help="RandomResizedCrop scale floor (0.08)")
    p.add_argument("--no_hflip", action="store_true", help="no horizontal flips (digits)")
    p.add_argument("--image_size", type=int, default=224, help="input side (224)")
    p.add_argument("--batch_size", type=int, default=128, help="evaluation batch size (128)")
    p.add_argument("--num_workers", type=int, default=default_num_workers(), help="data-loading processes")
    p.add_argument("--device", default=default_device(), help="cuda or cpu (default: cuda if present)")
    p.add_argument("--seed", type=int, default=0, help="seed of every training run (0)")
    return p


def evaluation_points(args) -> list[int]:
    args.streaming_min_class = args.base_init_classes
    return [args.base_init_classes] + ie.increments(args)


def validate(args) -> list[int]:
    if args.streaming_max_class is None:
        args.streaming_max_class = args.num_classes
    if args.epochs <= 0 or args.class_increment <= 0 or args.streaming_max_class > args.num_classes:
        raise DataError("--epochs and --class_increment must be positive and --streaming_max_class at most "
                        "--num_classes")
    for split in ("train", "val"):
        check_class_range(load_labels(args.images_dir, args.label_dir, split), args.min_class,
                          args.streaming_max_class, f"offline ({split})")
    return evaluation_points(args)


def train_network(args, classes: int) -> Path:
    """Train (or finish training) the network on classes ``[0, classes)``; returns its checkpoint."""
    folder = Path(args.save_dir) / "networks"
    ckpt = folder / f"{args.arch}_{classes}.pth"
    argv = ["--data", args.images_dir, "--labels_dir", args.label_dir, "--arch", args.arch,
            "--base_max_class", str(classes), "--num_classes", str(args.num_classes),
            "--image_size", str(args.image_size), "--crop_scale_min", str(args.crop_scale_min),
            "--epochs", str(args.epochs), "-b", str(args.train_batch_size), "--lr", str(args.lr),
            "--lr_step_epochs", str(args.lr_step_epochs), "-j", str(args.num_workers), "--device", args.device,
            "--seed", str(args.seed), "--save_dir", str(folder), "--ckpt_file", ckpt.name]
    if args.no_hflip:
        argv.append("--no_hflip")
    if ckpt.is_file():
        if int(torch.load(ckpt, weights_only=True, mmap=True).get("epoch", 0)) >= args.epochs:
            return ckpt
        argv += ["--resume", str(ckpt)]
    if base_init.main(argv) != 0:
        raise DataError(f"training the offline network on {classes} classes failed (see the error above)")
    return ckpt


@torch.no_grad()
def predict(args, ckpt: Path, max_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities ``(N, num_classes)`` and labels of the val images of classes below ``max_class``."""
    network = build_full_network(args.arch, args.num_classes)
    network.load_state_dict(load_network_state(str(ckpt))[0])
    network.to(args.device).eval()
    probas, labels = [], []
    for images, batch_labels, _ in ie.loader(args, "val", args.min_class, max_class):
        probas.append(torch.softmax(network(images.to(args.device)), dim=1).float().cpu())
        labels.append(batch_labels)
    return torch.cat(probas).numpy(), torch.cat(labels).numpy()


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        points = validate(args)
        Path(args.save_dir).mkdir(parents=True, exist_ok=True)
        accuracies = {k: [] for k in ie.ACCURACY_KEYS}
        for k, classes in enumerate(points):
            print(f"\noffline network on classes {args.min_class}-{classes - 1}")
            probas, labels = predict(args, train_network(args, classes), classes)
            ie.record_accuracies(args, probas, labels, accuracies, base_only=k == 0)
            ie.write_results(args, accuracies, probas, classes)
        print(ie.reporting.format_table({args.expt_name: accuracies}, ie.reporting.classes_seen(args, accuracies)))
    except (DataError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
