"""Train REMIND's base-initialization network from scratch, offline.

The full network (``--arch``, default ResNet-18 ``ResNet18ClassifyAfterLayer4_1``)
is trained with SGD and cross-entropy on the images of classes
``[0, --base_max_class)`` of ``DATA/train`` and validated on the same classes of
``DATA/val`` after every epoch. Its checkpoint is what REMIND later splits into
the frozen trunk G and the plastic head F.

One process (CPU or one GPU)::

    python -m image_classification_experiments.train_base_init_network_from_scratch \
        --data ./data/ImageNet2012 --labels_dir ./imagenet_files/ --base_max_class 100

Several GPUs (or CPU processes, gloo) on one machine: launch the same command
with ``torchrun --nproc_per_node N``; ``--batch_size`` is then the total over
all processes.

Checkpoints (``SAVE_DIR/CKPT_FILE`` after every epoch, ``SAVE_DIR/best_CKPT_FILE``
when validation top-1 improves) are weights-only dicts: ``state_dict`` (keys
``model.*``), ``arch``, ``num_classes``, ``image_size``, ``epoch`` (epochs done),
``best_acc1``, ``optimizer``, and ``row_order`` / ``class_names``: row k of ``fc`` is the class folder
``class_names[k]``, the class at position k of the class order (the label files' value), so REMIND can
check that a checkpoint fits its label files.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from image_classification_experiments.resnet_models import (
    FULL_NETWORKS,
    ROW_ORDER,
    build_full_network,
    copy_matching_state,
)
from image_classification_experiments.utils_imagenet import (
    DataError,
    class_names_by_position,
    default_num_workers,
    eval_transform,
    get_data_loader,
    image_paths,
    load_labels,
    refuse_unreadable,
    train_transform,
)
from remind.networks import classification_models, without_module_prefix
from remind.checkpoint import CheckpointError, atomic_torch_save, safe_load
from remind.cli import check_device, default_device, run_main
from remind.compute import ComputeMeter
from remind.lock import FolderLock
from remind.metrics import topk_accuracy


class UsageError(ValueError):
    """Flags that cannot work together or with this machine."""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, metavar="DIR",
                      help="dataset root with train/ and val/ class sub-folders (ImageNet layout)")
    data.add_argument("--labels_dir", default=None, metavar="DIR",
                      help="folder with imagenet_indices/imagenet_{train,val}_labels.npy (or the .npy files "
                           "themselves), written by make_numpy_imagenet_label_files.py; default: --data")
    data.add_argument("--base_max_class", type=int, default=100,
                      help="train on classes [0, base_max_class) of the class order (paper: 100)")
    data.add_argument("-j", "--workers", type=int, default=default_num_workers(),
                      help="data-loading worker processes per process (default: min(8, CPU count))")
    data.add_argument("--image_size", type=int, default=224, help="side of the training crops (224)")
    data.add_argument("--crop_scale_min", type=float, default=0.08,
                      help="lower bound of RandomResizedCrop's area scale (0.08, torchvision's default)")
    data.add_argument("--no_hflip", action="store_true", help="disable random horizontal flips")
    data.add_argument("--check_images", action="store_true",
                      help="open and decode every train and val image of the classes before starting (slow on "
                           "ImageNet: minutes per 100k images), and refuse the run if any cannot be read")

    model = parser.add_argument_group("model and checkpoints")
    model.add_argument("-a", "--arch", default="ResNet18ClassifyAfterLayer4_1", metavar="ARCH",
                       help="full network to train: any torchvision classification model (resnet18, resnet50, "
                            "mobilenet_v3_large, efficientnet_b0, convnext_tiny, ...) or the original's "
                            f"{', '.join(FULL_NETWORKS)} (ResNet18ClassifyAfterLayer4_1, as in the paper)")
    model.add_argument("--num_classes", type=int, default=1000,
                       help="outputs of fc (1000, so the stream can add classes later; >= --base_max_class)")
    model.add_argument("--ckpt_file", default=None,
                       help="checkpoint file name inside --save_dir (default: <arch>_<base_max_class>.pth)")
    model.add_argument("--save_dir", default="resnet_imagenet_ckpts",
                       help="folder for the checkpoints (created; resnet_imagenet_ckpts)")
    model.add_argument("--resume", default="", metavar="PATH",
                       help="checkpoint of this script to continue from (model, optimizer, epoch, best top-1)")
    model.add_argument("--overwrite", action="store_true",
                       help="train from scratch even if --save_dir holds this run's checkpoint (replacing it); "
                            "without it a rerun continues that checkpoint, or stops if it is complete")
    model.add_argument("-e", "--evaluate", action="store_true",
                       help="only evaluate (the --resume checkpoint, else random init) on the val classes")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=40, help="total epochs (40)")
    optim.add_argument("-b", "--batch_size", type=int, default=256,
                       help="mini-batch size summed over all processes (256)")
    optim.add_argument("--lr", "--learning-rate", type=float, default=0.1, dest="lr",
                       help="initial learning rate (0.1 for batch 256)")
    optim.add_argument("--lr_step_epochs", type=int, default=15,
                       help="multiply the learning rate by 0.1 every this many epochs (15)")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (0.9)")
    optim.add_argument("--wd", "--weight-decay", type=float, default=1e-4, dest="weight_decay",
                       help="SGD weight decay (1e-4)")

    run = parser.add_argument_group("run")
    run.add_argument("--device", default=default_device(),
                     help="cuda or cpu (default: cuda when available); under torchrun each process "
                          "uses cuda:LOCAL_RANK")
    run.add_argument("--seed", type=int, default=0, help="seed of the initial weights, shuffling and crops (0)")
    run.add_argument("-p", "--print-freq", type=int, default=10, dest="print_freq",
                     help="refresh the progress bar's loss and top-1 every this many batches (10)")
    return parser


# ------------------------------------------------------------------ processes
@dataclass(frozen=True)
class Processes:
    """Where this process sits in a torchrun launch (world_size 1 without torchrun)."""
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Processes":
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        return cls(world_size, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, procs: Processes) -> torch.device:
    device = check_device(name)
    if device.type == "cuda" and procs.distributed:
        if procs.local_rank >= torch.cuda.device_count():
            raise UsageError(f"torchrun started more processes per node than the "
                             f"{torch.cuda.device_count()} GPUs; lower --nproc_per_node")
        device = torch.device("cuda", procs.local_rank)
    return device


# ------------------------------------------------------------------ validation
def check_args(args, procs: Processes) -> None:
    """Raise UsageError for flags that cannot work; fill in the defaults that depend on others."""
    if args.arch not in FULL_NETWORKS and args.arch not in classification_models():
        try:
            build_full_network(args.arch, 1)  # its message names the fix
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.base_max_class < 1:
        raise UsageError(f"--base_max_class must be at least 1 (got {args.base_max_class}); the paper uses 100")
    if args.num_classes < args.base_max_class:
        raise UsageError(f"--num_classes {args.num_classes} is smaller than --base_max_class "
                         f"{args.base_max_class}; pass --num_classes {args.base_max_class} or more")
    if args.batch_size < procs.world_size:
        raise UsageError(f"--batch_size {args.batch_size} is split over {procs.world_size} processes; "
                         f"pass at least {procs.world_size}")
    if args.image_size < 32:  # as the stream scripts: the ResNet halves the crop five times
        raise UsageError(f"--image_size must be at least 32 (got {args.image_size})")
    positives = {"--epochs": args.epochs, "--lr_step_epochs": args.lr_step_epochs, "--print-freq": args.print_freq}
    for flag, value in positives.items():
        if value < 1:
            raise UsageError(f"{flag} must be at least 1 (got {value})")
    if args.workers < 0:
        raise UsageError(f"--workers must be 0 or more (got {args.workers})")
    if args.seed < 0:  # numpy's SeedSequence takes no negative seed
        raise UsageError(f"--seed must be non-negative (got {args.seed})")
    # NaN passes every comparison, and SGD takes lr 0 (40 epochs that change nothing): check each one
    for flag, value, positive in (("--lr", args.lr, True), ("--momentum", args.momentum, False),
                                  ("--wd", args.weight_decay, False)):
        if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
            raise UsageError(f"{flag} must be {'positive' if positive else 'non-negative'} and finite (got {value})")
    if not 0.0 < args.crop_scale_min <= 1.0:
        raise UsageError(f"--crop_scale_min must be in (0, 1] (got {args.crop_scale_min}); 0.08 is standard")
    args.ckpt_file = args.ckpt_file or f"{args.arch}_{args.base_max_class}.pth"
    if Path(args.ckpt_file).name != args.ckpt_file:
        raise UsageError(f"--ckpt_file {args.ckpt_file!r} must be a file name; put the folder in --save_dir")
    if Path(args.save_dir).exists() and not Path(args.save_dir).is_dir():
        raise UsageError(f"--save_dir {args.save_dir} exists and is not a folder; pass another --save_dir")
    existing, best = Path(args.save_dir) / args.ckpt_file, Path(args.save_dir) / f"best_{args.ckpt_file}"
    if not (args.resume or args.evaluate or args.overwrite):
        if existing.is_file():
            args.resume = str(existing)  # never start over on finished work: continue it, or stop if complete
        elif best.is_file():
            raise UsageError(f"{best} exists but {existing} (the run's last epoch) does not; pass --overwrite to "
                             "train again from scratch, or another --save_dir")
    args.labels_dir = args.labels_dir or args.data


def check_data(args) -> None:
    """Raise DataError unless both splits and their label files cover classes [0, base_max_class)."""
    for split in ("train", "val"):
        folder = Path(args.data) / split
        if not folder.is_dir():
            problem = (f"--data {args.data} is a file, not a folder" if Path(args.data).is_file() else
                       f"image folder {folder} does not exist")
            raise DataError(f"{problem}; pass --data pointing at a folder with "
                            "train/ and val/ class sub-folders (for a small local dataset run "
                            "python -m image_classification_experiments.make_digits_imagefolder)")
        labels = load_labels(args.data, args.labels_dir, split)
        num_labelled = int(labels.max()) + 1 if len(labels) else 0
        if args.base_max_class > num_labelled:
            raise DataError(f"--base_max_class {args.base_max_class} goes past the {num_labelled} classes in "
                            f"the {split} label files under {args.labels_dir}; pass --base_max_class "
                            f"{num_labelled} or fewer")


def load_resume(path: str, args, network: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, float]:
    """Restore network and optimizer from a checkpoint of this script; return (epochs done, best top-1)."""
    ckpt = safe_load(path, what="--resume checkpoint")
    if not isinstance(ckpt, dict) or not {"state_dict", "optimizer", "epoch"} <= ckpt.keys():
        raise CheckpointError(f"--resume {path} is not a checkpoint of this script (it needs state_dict, "
                              "optimizer and epoch); pass a file written by train_base_init_network_from_scratch")
    if ckpt.get("arch", args.arch) != args.arch:
        raise CheckpointError(f"--resume {path} was trained as {ckpt['arch']}, not {args.arch}; "
                              f"pass --arch {ckpt['arch']}")
    state = without_module_prefix(ckpt["state_dict"])
    copy_matching_state(network, state, path, args.arch)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"--resume {path} holds an optimizer state that does not fit this model ({exc}); "
                              "resume from a checkpoint of the same --arch and --num_classes") from None
    return int(ckpt["epoch"]), float(ckpt.get("best_acc1", 0.0))


# ------------------------------------------------------------------ setup
@dataclass
class Run:
    device: torch.device
    network: nn.Module            # the bare network; ``model`` may wrap it in DDP
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader
    val_loader: DataLoader
    class_names: list            # the class folder of each classifier row (None: no images)
    start_epoch: int = 0
    compute: ComputeMeter | None = None  # counts the optimizer steps for a caller's compute record
    best_acc1: float = 0.0


def _seed_worker(worker_id: int, rank: int) -> None:
    # DataLoader broadcasts rank 0's worker seed to every rank; offset it so that
    # ranks do not draw the same crops for their (different) images.
    torch.manual_seed((torch.initial_seed() + 1_000_003 * rank) % 2**63)


def build_loaders(args, procs: Processes, device: torch.device) -> tuple[DataLoader, DataLoader]:
    """Train loader (seeded shuffle per epoch via DistributedSampler) and val loader (a shard per rank)."""
    per_process_batch = args.batch_size // procs.world_size
    # Labels are the label files' positions in the class order, as everywhere in this project. (The
    # original trained on ImageFolder's alphabetical targets; its released checkpoint's rows are in that
    # order, which convert_released_checkpoint.py maps to the class order.)
    train_set = get_data_loader(args.data, args.labels_dir, "train", 0, args.base_max_class,
                                image_size=args.image_size, num_workers=0,
                                transform=train_transform(args.image_size, args.crop_scale_min,
                                                          hflip=not args.no_hflip)).dataset
    val_set = get_data_loader(args.data, args.labels_dir, "val", 0, args.base_max_class,
                              image_size=args.image_size, num_workers=0,
                              transform=eval_transform(args.image_size)).dataset
    sampler = DistributedSampler(train_set, num_replicas=procs.world_size, rank=procs.rank,
                                 shuffle=True, seed=args.seed)
    common = dict(num_workers=args.workers, pin_memory=device.type == "cuda",
                  worker_init_fn=functools.partial(_seed_worker, rank=procs.rank))
    # A last batch of one image cannot train BatchNorm at small image sizes: drop it.
    train_loader = DataLoader(train_set, batch_size=per_process_batch, sampler=sampler,
                              drop_last=len(sampler) % per_process_batch == 1, **common)
    # Validation shards are disjoint (no padding, unlike DistributedSampler), so the
    # summed counts are exactly those of the whole val subset.
    val_loader = DataLoader(val_set, batch_size=per_process_batch,
                            sampler=range(procs.rank, len(val_set), procs.world_size), **common)
    return train_loader, val_loader


def prepare(args, procs: Processes) -> Run:
    """Check every input and build the run; writes nothing."""
    check_args(args, procs)
    device = resolve_device(args.device, procs)
    check_data(args)
    if args.check_images:
        refuse_unreadable([path for split in ("train", "val")
                           for path in image_paths(args.data, args.labels_dir, split, 0, args.base_max_class)],
                          f"classes 0-{args.base_max_class - 1}", report=procs.is_main)
    train_loader, val_loader = build_loaders(args, procs, device)
    torch.manual_seed(args.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    network = build_full_network(args.arch, args.num_classes).to(device)
    optimizer = torch.optim.SGD(network.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    class_names = class_names_by_position(args.data, args.labels_dir, args.num_classes)
    run = Run(device, network, optimizer, train_loader, val_loader, class_names)
    if args.resume:
        run.start_epoch, run.best_acc1 = load_resume(args.resume, args, network, optimizer)
    return run


def init_distributed(procs: Processes, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


# ------------------------------------------------------------------ epochs
def set_learning_rate(optimizer: torch.optim.Optimizer, args, epoch: int) -> float:
    lr = args.lr * 0.1 ** (epoch // args.lr_step_epochs)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def sum_over_processes(values: list[float], device: torch.device, procs: Processes) -> list[float]:
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    if procs.distributed:
        torch_dist.all_reduce(totals)
    return totals.tolist()


def train_one_epoch(model: nn.Module, run: Run, args, epoch: int, procs: Processes) -> tuple[float, float]:
    """One pass over this rank's shard; returns (mean loss, top-1 %) over all ranks."""
    model.train()
    run.train_loader.sampler.set_epoch(epoch)
    # Crops and flips draw from torch's global RNG (and worker seeds from it): seed it
    # per epoch and rank so a resumed run repeats the uninterrupted run's draws.
    torch.manual_seed(int(np.random.SeedSequence([args.seed, epoch, procs.rank]).generate_state(1)[0]))
    criterion = nn.CrossEntropyLoss()
    loss_sum = correct = count = 0.0
    bar = tqdm(run.train_loader, desc=f"epoch {epoch + 1}/{args.epochs} train", disable=not procs.is_main,
               leave=False, dynamic_ncols=True)
    for step, (images, labels, _ids) in enumerate(bar):
        images = images.to(run.device, non_blocking=True)
        labels = labels.to(run.device, non_blocking=True)
        logits = model(images)
        loss = criterion(logits, labels)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        batch = labels.numel()
        if run.compute is not None:
            run.compute.count_update(batch)
        loss_sum += loss.item() * batch
        correct += topk_accuracy(logits.detach(), labels, (1,))[0] * batch / 100.0
        count += batch
        if step % args.print_freq == 0:
            bar.set_postfix(loss=f"{loss_sum / count:.4f}", top1=f"{100.0 * correct / count:.2f}")
    loss_sum, correct, count = sum_over_processes([loss_sum, correct, count], run.device, procs)
    return loss_sum / max(count, 1.0), 100.0 * correct / max(count, 1.0)


@torch.no_grad()
def evaluate(run: Run, procs: Processes, desc: str = "val") -> tuple[float, float]:
    """Top-1 and top-5 (%) on the val subset, summed over all ranks' shards."""
    network = run.network
    if procs.distributed:
        # Ranks' BatchNorm statistics drift apart between DDP's broadcasts; validate
        # the statistics that rank 0 saves.
        for buffer in network.buffers():
            torch_dist.broadcast(buffer, src=0)
    network.eval()
    correct1 = correct5 = count = 0.0
    for images, labels, _ids in tqdm(run.val_loader, desc=desc, disable=not procs.is_main, leave=False,
                                      dynamic_ncols=True):
        logits = network(images.to(run.device, non_blocking=True))
        top1, top5 = topk_accuracy(logits, labels.to(run.device), (1, 5))
        correct1 += top1 * labels.numel() / 100.0
        correct5 += top5 * labels.numel() / 100.0
        count += labels.numel()
    correct1, correct5, count = sum_over_processes([correct1, correct5, count], run.device, procs)
    return 100.0 * correct1 / max(count, 1.0), 100.0 * correct5 / max(count, 1.0)


def _to_cpu(obj):
    """Tensors (nested in dicts/lists) moved to the CPU, so the file loads on machines without a GPU."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {key: _to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(value) for value in obj)
    return obj


def save_checkpoints(run: Run, args, epochs_done: int, is_best: bool) -> None:
    ckpt = {
        "state_dict": _to_cpu(run.network.state_dict()),  # the bare network: no 'module.' prefixes
        "arch": args.arch,
        "num_classes": args.num_classes,
        "image_size": args.image_size,
        "epoch": epochs_done,
        "best_acc1": float(run.best_acc1),
        "optimizer": _to_cpu(run.optimizer.state_dict()),
        "row_order": ROW_ORDER,
        "class_names": run.class_names,
    }
    atomic_torch_save(ckpt, Path(args.save_dir) / args.ckpt_file)
    if is_best:
        atomic_torch_save(ckpt, Path(args.save_dir) / f"best_{args.ckpt_file}")


def fit(model: nn.Module, run: Run, args, procs: Processes) -> None:
    """Train epochs [start_epoch, epochs), validating and checkpointing after each."""
    for epoch in range(run.start_epoch, args.epochs):
        started = time.time()
        lr = set_learning_rate(run.optimizer, args, epoch)
        train_loss, train_top1 = train_one_epoch(model, run, args, epoch, procs)
        val_top1, val_top5 = evaluate(run, procs)
        is_best = val_top1 > run.best_acc1 or epoch == 0
        run.best_acc1 = max(val_top1, run.best_acc1)
        if procs.is_main:
            save_checkpoints(run, args, epoch + 1, is_best)
            print(f"epoch {epoch + 1}/{args.epochs}  lr {lr:.5f}  train loss {train_loss:.4f}  "
                  f"train top-1 {train_top1:.2f}  val top-1 {val_top1:.2f}  val top-5 {val_top5:.2f}  "
                  f"best top-1 {run.best_acc1:.2f}  ({time.time() - started:.1f} s)", flush=True)


# ------------------------------------------------------------------ entry point
def train(args, procs: Processes, compute: ComputeMeter | None = None) -> None:
    """Check every input (writing nothing), then train or evaluate; input errors are raised, for run_main
    (or a caller such as offline_full_network, whose ``compute`` meter counts the optimizer steps) to report."""
    lock = FolderLock(args.save_dir, "--save_dir") if procs.is_main and not args.evaluate else nullcontext()
    run = prepare(args, procs)
    run.compute = compute
    with lock:  # one training run per checkpoint folder
        if procs.is_main:
            print(json.dumps({**vars(args), "world_size": procs.world_size, "device": str(run.device)}), flush=True)
            print(f"{len(run.train_loader.dataset)} train and {len(run.val_loader.dataset)} val images of classes "
                  f"[0, {args.base_max_class}); {procs.world_size} process(es)", flush=True)
        if run.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if procs.distributed:
            init_distributed(procs, run.device)
        model = run.network
        if procs.distributed:
            model = DistributedDataParallel(run.network, device_ids=[run.device.index] if run.device.type == "cuda"
                                            else None)
        try:
            if args.evaluate:
                top1, top5 = evaluate(run, procs)
                if procs.is_main:
                    print(f"val top-1 {top1:.2f}  val top-5 {top5:.2f}", flush=True)
            elif run.start_epoch >= args.epochs:
                if procs.is_main:
                    print(f"already trained: {args.resume} has {run.start_epoch} of --epochs {args.epochs}; "
                          "nothing to do (--overwrite trains again from scratch)")
            else:
                fit(model, run, args, procs)
                if procs.is_main:
                    print(f"done: best val top-1 {run.best_acc1:.2f}; checkpoint "
                          f"{Path(args.save_dir) / args.ckpt_file}", flush=True)
        finally:
            if procs.distributed:
                torch_dist.destroy_process_group()


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    procs = Processes.from_env()
    return run_main(lambda: train(args, procs), report=procs.is_main)  # rank 0 reports an error once


if __name__ == "__main__":
    sys.exit(main())
