"""Whole-network offline baseline: at every evaluation point of the stream, a ResNet-18
trained from scratch, offline, on all classes seen so far.

This is the offline learner of the usual kind (what the paper's Omega
normalises by, to our reading): no PQ, no frozen trunk. Each point reuses
``train_base_init_network_from_scratch.py`` with ``--base_max_class`` set to
the classes seen, then evaluates the network on those classes' val images and
writes the same files as ``imagenet_experiment.py``
(``accuracies_min_trained_0_max_trained_<K>.json``, ``preds_...pth``, the
plot, ``compute.json``), so ``compute_omega.py --offline`` takes its folder.
Networks are kept in ``SAVE_DIR/networks/``, each with what its training cost
(``<network>.compute.json``: optimizer steps, samples, seconds; a network whose
own training was resumed counts its last session); a rerun continues where it
stopped.

    python -m image_classification_experiments.offline_full_network --images_dir /data/ImageNet2012 \
        --label_dir ./imagenet_files --save_dir results/offline_full --epochs 40
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from image_classification_experiments import train_base_init_network_from_scratch as base_init
from image_classification_experiments.resnet_models import build_full_network, load_network_state
from image_classification_experiments.stream_run import ResultFiles, StreamSpec, run_stream
from image_classification_experiments.utils_imagenet import (
    DataError,
    check_class_range,
    default_num_workers,
    get_data_loader,
    load_labels,
)
from remind import reporting
from remind.checkpoint import atomic_write_text
from remind.cli import check_device, default_device, run_main
from remind.compute import ComputeMeter
from remind.lock import FolderLock


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


def validate(args) -> StreamSpec:
    """The evaluation points, after checking the flags and the label files (writing nothing)."""
    check_device(args.device)
    max_class = args.num_classes if args.streaming_max_class is None else args.streaming_max_class
    if args.epochs <= 0 or args.class_increment <= 0 or max_class > args.num_classes:
        raise DataError("--epochs and --class_increment must be positive and --streaming_max_class at most "
                        "--num_classes")
    if args.batch_size < 1 or args.num_workers < 0:
        raise DataError(f"--batch_size must be at least 1 and --num_workers at least 0 (got {args.batch_size} and "
                        f"{args.num_workers})")
    for split in ("train", "val"):
        check_class_range(load_labels(args.images_dir, args.label_dir, split), args.min_class, max_class,
                          f"offline ({split})")
    spec = StreamSpec.class_increments(args.base_init_classes, args.class_increment, max_class, args.min_class)
    # the training flags, checked by the trainer itself now rather than after the first networks are trained
    trainer_args = base_init.get_args_parser().parse_args(trainer_argv(args, spec.points[0])[0])
    try:
        base_init.check_args(trainer_args, base_init.Processes())
    except base_init.UsageError as exc:  # name this script's flags, not the trainer's
        raise DataError(str(exc).replace("--batch_size", "--train_batch_size")) from None
    return spec


def trainer_argv(args, classes: int) -> tuple[list[str], Path]:
    """train_base_init_network_from_scratch's arguments for the network on classes ``[0, classes)``, and its
    checkpoint."""
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
    return argv, ckpt


def train_network(args, classes: int, compute: ComputeMeter | None = None, phase: str = "offline") -> Path:
    """Train (or finish training) the network on classes ``[0, classes)``; returns its checkpoint.

    What the training cost (optimizer steps, samples, seconds) is added to ``compute``: counted while it
    trains, or read from the network's ``.compute.json`` when it was trained by an earlier run."""
    argv, ckpt = trainer_argv(args, classes)
    cost_file = ckpt.with_suffix(".compute.json")
    if ckpt.is_file():
        if int(torch.load(ckpt, weights_only=True, mmap=True).get("epoch", 0)) >= args.epochs:
            if compute is not None and cost_file.is_file():
                cost = json.loads(cost_file.read_text())
                compute.add({k: cost[k] for k in ("optimizer_updates", "sample_passes")}, {phase: cost["seconds"]})
            return ckpt
        argv += ["--resume", str(ckpt)]
    session, started = ComputeMeter(args.device), time.perf_counter()
    base_init.train(base_init.get_args_parser().parse_args(argv), base_init.Processes(), session)  # errors: one line
    cost = {"optimizer_updates": session.counts["optimizer_updates"], "sample_passes": session.counts["sample_passes"],
            "seconds": time.perf_counter() - started}
    atomic_write_text(cost_file, json.dumps(cost))
    if compute is not None:  # its seconds are timed by the caller's phase
        compute.add({k: cost[k] for k in ("optimizer_updates", "sample_passes")})
    return ckpt


class WholeNetworkOffline:
    """The run loop's method: at each point, a network trained from scratch on every class seen.

    Its checkpoints are the trained networks (``networks/``); a rerun evaluates those again, so it keeps no
    run state of its own.
    """

    def __init__(self, args):
        self.args = args
        self.compute = ComputeMeter(args.device)
        self.train_labels = load_labels(args.images_dir, args.label_dir, "train")

    def completed(self, points) -> None:
        return None

    def begin(self, start: int, end: int) -> None:
        self._train(end, "base_init")

    def learn(self, start: int, end: int) -> None:
        with self.compute.phase("offline"):
            self._train(end, "offline")
        self.compute.count_streamed(int(((self.train_labels >= start) & (self.train_labels < end)).sum()))

    def _train(self, end: int, phase: str) -> None:
        print(f"offline network on classes {self.args.min_class}-{end - 1}", flush=True)
        self.network = train_network(self.args, end, self.compute, phase)

    @torch.no_grad()
    def predict(self, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Softmax probabilities ``(N, num_classes)`` and labels of the val images of classes below ``end``."""
        args = self.args
        network = build_full_network(args.arch, args.num_classes)
        network.load_state_dict(load_network_state(str(self.network))[0])
        network.to(args.device).eval()
        probas, labels = [], []
        loader = get_data_loader(args.images_dir, args.label_dir, "val", args.min_class, end,
                                 batch_size=args.batch_size, image_size=args.image_size, num_workers=args.num_workers)
        for images, batch_labels, _ in loader:
            probas.append(torch.softmax(network(images.to(args.device)), dim=1).float().cpu())
            labels.append(batch_labels)
        self.compute.count_evaluated(sum(len(b) for b in labels))
        return torch.cat(probas).numpy(), torch.cat(labels).numpy()

    def checkpoint(self, end: int, accuracies: dict) -> None:
        pass  # the trained network is this point's checkpoint


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)

    def body():
        spec = validate(args)
        save_dir = Path(args.save_dir)
        files = ResultFiles(save_dir, args.expt_name, first=args.min_class)
        with FolderLock(save_dir):  # one run per folder
            accuracies = run_stream(spec, WholeNetworkOffline(args), files,
                                    lambda labels: labels < args.base_init_classes)
        print(reporting.format_table({args.expt_name: accuracies}, spec.seen_at(len(accuracies["seen_classes_top1"]))))
    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
