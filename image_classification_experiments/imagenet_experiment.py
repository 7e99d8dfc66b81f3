"""Class-incremental streaming with REMIND on an ImageNet-style dataset.

Base initialisation (PQ training and buffer filling) on classes
``[min_class, base_init_classes)``, then classes streamed ``class_increment``
at a time; after each increment F, the optimizer, the buffer and the codebooks
are saved under ``SAVE_DIR/remind_model/`` and top-1/top-5 accuracies on base,
non-base and all seen classes are appended to
``SAVE_DIR/accuracies_min_trained_0_max_trained_<max>.json``. Running the same
command again resumes after the last completed increment.

``--offline_epochs N`` (N > 0) runs the offline baseline through the same
steps and files: each increment's codes go into an unlimited buffer with no
SGD step, then a fresh F (from the base-init checkpoint) is trained for N
epochs on the whole buffer before each evaluation (base init included).

    python -m image_classification_experiments.imagenet_experiment \
        --images_dir /data/ImageNet2012 --label_dir ./imagenet_files \
        --classifier_ckpt best_ResNet18ClassifyAfterLayer4_1_100.pth \
        --max_buffer_size 959665 --use_random_resized_crops --use_mixup --expt_name remind_imagenet
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from remind import reporting
from image_classification_experiments.REMINDModel import REMINDModel, default_device
from image_classification_experiments.utils_imagenet import (DataError, check_class_range, default_num_workers,
                                                             examples_per_class, get_data_loader, load_labels)
from remind.checkpoint import CheckpointError, atomic_torch_save, atomic_write_text
from remind.metrics import topk_accuracy
from remind.pq import check_pq_shape

ACCURACY_KEYS = ("base_classes_top1", "non_base_classes_top1", "seen_classes_top1",
                 "base_classes_top5", "non_base_classes_top5", "seen_classes_top5")


def learner_args_parser() -> argparse.ArgumentParser:
    """The REMIND learner's flags (G/F, PQ, buffer, LR, augmentation), shared by the experiment scripts."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("network")
    g.add_argument("--base_arch", type=str, default="ResNet18ClassifyAfterLayer4_1",
                   help="architecture of the base-init checkpoint, from which G is cut")
    g.add_argument("--classifier", type=str, default="ResNet18_StartAt_Layer4_1", help="plastic head F")
    g.add_argument("--extract_features_from", type=str, default="model.layer4.0", help="last layer of G")
    g.add_argument("--num_channels", type=int, default=512, help="channels of G's feature maps (512)")
    g.add_argument("--weight_decay", type=float, default=1e-5, help="SGD weight decay on F (1e-5)")
    g.add_argument("--batch_size", type=int, default=128, help="images per G batch, streaming and testing (128)")
    g.add_argument("--image_size", type=int, default=224, help="input side (224)")
    g.add_argument("--num_workers", type=int, default=default_num_workers(), help="data-loading processes")
    g.add_argument("--device", type=str, default=default_device(), help="cuda or cpu (default: cuda if present)")
    g.add_argument("--seed", type=int, default=0, help="seed of every random draw of the run (0)")
    g = p.add_argument_group("product quantisation")
    g.add_argument("--num_codebooks", type=int, default=32, help="PQ sub-quantisers (32)")
    g.add_argument("--codebook_size", type=int, default=256, help="centroids per codebook, power of two (256)")
    g.add_argument("--pq_backend", choices=("torch", "faiss"), default="torch",
                   help="encoder: torch (any device, robust under CPU load) or faiss (CPU); same codebooks")
    g = p.add_argument_group("replay buffer")
    g.add_argument("--rehearsal_samples", type=int, default=50, help="replays per streamed example (50; 0 = fine-tune)")
    g.add_argument("--max_buffer_size", type=int, default=None,
                   help="buffer limit (ImageNet paper: 959665; default: keep everything)")
    g = p.add_argument_group("learning rate")
    g.add_argument("--lr_mode", choices=("step_lr_per_class", "constant"), default="step_lr_per_class",
                   help="per-class step decay (paper) or constant start_lr")
    g.add_argument("--lr_step_size", type=int, default=100, help="steps between decays (100)")
    g.add_argument("--start_lr", type=float, default=0.1, help="lr of a class's first step (0.1)")
    g.add_argument("--end_lr", type=float, default=0.001, help="lr reached after a class's examples (0.001)")
    g = p.add_argument_group("augmentation")
    g.add_argument("--use_random_resized_crops", action="store_true", help="feature-map crops (paper: on)")
    g.add_argument("--use_mixup", action="store_true", help="mixup of replayed examples (paper: on)")
    g.add_argument("--mixup_alpha", type=float, default=0.1, help="Beta(alpha, alpha) for mixup (0.1)")
    return p


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[learner_args_parser()])
    g = p.add_argument_group("directories and names")
    g.add_argument("--expt_name", type=str, default="remind_imagenet", help="experiment name (remind_imagenet)")
    g.add_argument("--images_dir", type=str, required=True, help="folder with train/ and val/ class folders")
    g.add_argument("--label_dir", type=str, required=True,
                   help="folder with imagenet_indices/imagenet_{train,val}_labels.npy (class order)")
    g.add_argument("--save_dir", type=str, default=None,
                   help="results folder (default streaming_experiments/<expt_name>); a rerun resumes here")
    g.add_argument("--resume_full_path", type=str, default=None,
                   help="folder of a previous run's remind_model/ to continue from, at --streaming_min_class")
    g = p.add_argument_group("base init and feature maps")
    g.add_argument("--classifier_ckpt", type=str, required=True,
                   help="base-init checkpoint (train_base_init_network_from_scratch.py)")
    g.add_argument("--spatial_feat_dim", type=int, default=None,
                   help="side of G's feature maps; checked if given (7 at 224 px), else inferred")
    g.add_argument("--lr_examples_per_class", type=str, default="1300",
                   help="examples per class in the LR decay rule: an integer (1300, ImageNet's, as the original) "
                        "or 'auto' to count each class's training examples")
    g = p.add_argument_group("stream")
    g.add_argument("--num_classes", type=int, default=1000, help="outputs of F (1000)")
    g.add_argument("--min_class", type=int, default=0, help="first class (0)")
    g.add_argument("--base_init_classes", type=int, default=100, help="classes used for base init (100)")
    g.add_argument("--class_increment", type=int, default=100, help="classes per increment/evaluation (100)")
    g.add_argument("--streaming_min_class", type=int, default=None,
                   help="first streamed class (default --base_init_classes; with --resume_full_path: the "
                        "increment to resume from)")
    g.add_argument("--streaming_max_class", type=int, default=None, help="end of the stream (default --num_classes)")
    g = p.add_argument_group("offline baseline (upper bound for Omega)")
    g.add_argument("--offline_epochs", type=int, default=0,
                   help="0: stream (REMIND/fine-tune). N > 0: at each evaluation retrain a fresh F for N epochs on "
                        "the reconstructed features of every example seen so far (try 40 on ImageNet)")
    g.add_argument("--offline_batch_size", type=int, default=256, help="offline mini-batch size (256)")
    g.add_argument("--offline_lr", type=float, default=0.1,
                   help="offline start LR, cosine-decayed to 0 over the N epochs (0.1)")
    return p


# ------------------------------------------------------------------ checks
def validate_args(args) -> None:
    """Every check that can fail before anything is written."""
    check_pq_shape(args.num_channels, args.num_codebooks, args.codebook_size)
    if args.streaming_min_class is None:
        args.streaming_min_class = args.base_init_classes
    if args.streaming_max_class is None:
        args.streaming_max_class = args.num_classes
    if args.streaming_max_class > args.num_classes:
        raise DataError(f"--streaming_max_class {args.streaming_max_class} exceeds --num_classes "
                        f"{args.num_classes}; raise --num_classes")
    if args.class_increment <= 0 or args.rehearsal_samples < 0:
        raise DataError("--class_increment must be positive and --rehearsal_samples non-negative")
    if args.offline_epochs < 0 or args.offline_batch_size <= 0 or args.offline_lr <= 0:
        raise DataError("--offline_epochs must be non-negative, --offline_batch_size and --offline_lr positive")
    if args.offline_epochs and args.max_buffer_size is not None:
        raise DataError("the offline baseline trains on every example seen: drop --max_buffer_size")
    for split in ("train", "val"):
        labels = load_labels(args.images_dir, args.label_dir, split)
        check_class_range(labels, args.min_class, args.base_init_classes, f"base init ({split})")
        if args.streaming_min_class < args.streaming_max_class:
            check_class_range(labels, args.streaming_min_class, args.streaming_max_class, f"stream ({split})")
    if args.lr_examples_per_class == "auto":
        train_labels = load_labels(args.images_dir, args.label_dir, "train")
        args.lr_examples = examples_per_class(train_labels, args.num_classes)
    elif re.fullmatch(r"\d+", args.lr_examples_per_class) and int(args.lr_examples_per_class) > 0:
        args.lr_examples = int(args.lr_examples_per_class)
    else:
        raise DataError(f"--lr_examples_per_class {args.lr_examples_per_class!r} must be a positive integer or auto")
    if args.resume_full_path is not None and not (Path(args.resume_full_path) /
                                                  f"remind_buffer_{args.streaming_min_class}.pth").is_file():
        raise CheckpointError(f"no remind_buffer_{args.streaming_min_class}.pth in {args.resume_full_path}; "
                              "pass the run's remind_model/ folder and the increment it reached as "
                              "--streaming_min_class")


def increments(args) -> list[int]:
    """Class counts after each increment (the checkpoint numbers)."""
    return [min(c + args.class_increment, args.streaming_max_class)
            for c in range(args.streaming_min_class, args.streaming_max_class, args.class_increment)]


def latest_checkpoint(model_dir: Path, allowed: list[int]) -> int | None:
    done = [int(m.group(1)) for f in model_dir.glob("remind_buffer_*.pth")
            if (m := re.fullmatch(r"remind_buffer_(\d+)\.pth", f.name)) and int(m.group(1)) in allowed]
    return max(done) if done else None


def check_feature_shape(args, remind: REMINDModel) -> None:
    """G's output on one blank image must match --num_channels (and --spatial_feat_dim if given)."""
    maps = remind._features(torch.zeros(1, 3, args.image_size, args.image_size))
    side = maps.shape[-1]
    args.feature_shape = tuple(maps.shape[-2:])
    if args.spatial_feat_dim is not None and args.spatial_feat_dim != side:
        raise DataError(f"G gives {side}x{side} feature maps at --image_size {args.image_size}, not "
                        f"--spatial_feat_dim {args.spatial_feat_dim}; drop the flag or fix --image_size")


# ------------------------------------------------------------------ evaluation
def loader(args, split: str, min_class: int, max_class: int):
    return get_data_loader(args.images_dir, args.label_dir, split, min_class, max_class,
                           batch_size=args.batch_size, image_size=args.image_size, num_workers=args.num_workers)


def evaluate(args, remind: REMINDModel, max_class: int, accuracies: dict, base_only: bool = False) -> np.ndarray:
    """One pass over the seen classes' val images; appends to ``accuracies``, returns the probabilities."""
    _, probas, labels = remind.predict(loader(args, "val", args.min_class, max_class))
    record_accuracies(args, probas, labels, accuracies, base_only)
    return probas


def record_accuracies(args, probas: np.ndarray, labels: np.ndarray, accuracies: dict, base_only: bool) -> None:
    """Append top-1/top-5 on base, non-base and all seen classes (the original's keys) to ``accuracies``."""
    base = labels < args.base_init_classes
    for name, mask in (("base_classes", base), ("non_base_classes", ~base), ("seen_classes", np.ones_like(base))):
        if base_only and name == "non_base_classes":
            continue  # as the original: no non-base entry at base initialisation
        top1, top5 = topk_accuracy(probas[mask], labels[mask], topk=(1, 5))
        accuracies[f"{name}_top1"].append(top1)
        accuracies[f"{name}_top5"].append(top5)
    print(f"classes {args.min_class}-{int(labels.max()) if len(labels) else args.min_class}: "
          f"seen top1={accuracies['seen_classes_top1'][-1]:.2f}% "
          f"top5={accuracies['seen_classes_top5'][-1]:.2f}% | base top1={accuracies['base_classes_top1'][-1]:.2f}%")


def write_results(args, accuracies: dict, probas: np.ndarray, max_class: int) -> None:
    save_dir = Path(args.save_dir)
    name = f"accuracies_min_trained_{args.min_class}_max_trained_{max_class}.json"
    atomic_write_text(save_dir / name, json.dumps(accuracies))
    atomic_torch_save(torch.from_numpy(probas),
                      save_dir / f"preds_min_trained_{args.min_class}_max_trained_{max_class}.pth")
    reporting.plot_accuracies({args.expt_name: accuracies}, reporting.classes_seen(args, accuracies),
                              save_dir / "accuracy_curves.png")


# ------------------------------------------------------------------ the run
def build_model(args, num_classes: int | None = None) -> REMINDModel:
    """REMINDModel from the streaming flags (shared with core50_experiment, which fixes ``num_classes``)."""
    return REMINDModel(
        num_classes=num_classes or args.num_classes, classifier_G=args.base_arch, extract_features_from=args.extract_features_from,
        classifier_F=args.classifier, classifier_ckpt=args.classifier_ckpt, weight_decay=args.weight_decay,
        lr_mode=args.lr_mode, lr_step_size=args.lr_step_size, start_lr=args.start_lr, end_lr=args.end_lr,
        lr_examples_per_class=args.lr_examples, num_samples=args.rehearsal_samples, use_mixup=args.use_mixup,
        mixup_alpha=args.mixup_alpha, num_channels=args.num_channels, num_codebooks=args.num_codebooks,
        codebook_size=args.codebook_size, use_random_resize_crops=args.use_random_resized_crops,
        max_buffer_size=args.max_buffer_size, device=args.device, seed=args.seed, pq_backend=args.pq_backend)


def run_mode(args) -> str:
    return "offline" if args.offline_epochs else "stream"


def fit_offline(args, remind: REMINDModel) -> None:
    loss = remind.fit_offline(args.offline_epochs, args.offline_batch_size, args.offline_lr)
    print(f"offline: F trained {args.offline_epochs} epochs on {len(remind.replay_buffer)} examples, "
          f"last-epoch loss {loss:.4f}")


def resume(args, remind: REMINDModel, inc: int, folder: str) -> dict:
    """Load increment ``inc`` from ``folder``, checking its codes fit G's maps at this --image_size."""
    meta = remind.resume(inc, folder)
    if meta.get("mode", "stream") != run_mode(args):
        raise CheckpointError(f"{folder} holds a {meta.get('mode', 'stream')} run but this is a {run_mode(args)} "
                              "run (--offline_epochs); use another --save_dir")
    saved = tuple(remind.replay_buffer.code_shape[:2])
    if saved != args.feature_shape:
        raise CheckpointError(f"{folder} holds codes of {saved[0]}x{saved[1]} feature maps but G gives "
                              f"{args.feature_shape[0]}x{args.feature_shape[1]} at --image_size "
                              f"{args.image_size}; use the run's --image_size or another --save_dir")
    return meta


def start_or_resume(args, remind: REMINDModel, model_dir: Path) -> tuple[int, dict]:
    """Returns (classes trained so far, accuracies so far) after base init or a resume."""
    if args.resume_full_path is not None:
        meta = resume(args, remind, args.streaming_min_class, args.resume_full_path)
        return args.streaming_min_class, meta.get("accuracies", {k: [] for k in ACCURACY_KEYS})
    done = latest_checkpoint(model_dir, [args.base_init_classes] + increments(args))
    if done is not None:
        print(f"resuming from {model_dir}/remind_buffer_{done}.pth")
        meta = resume(args, remind, done, str(model_dir))
        return done, meta["accuracies"]
    print("base initialisation: training the PQ and filling the buffer")
    remind.fit_pq(loader(args, "train", args.min_class, args.base_init_classes))
    if args.offline_epochs:
        fit_offline(args, remind)
    accuracies = {k: [] for k in ACCURACY_KEYS}
    probas = evaluate(args, remind, args.base_init_classes, accuracies, base_only=True)
    remind.save(args.base_init_classes, str(model_dir), {"accuracies": accuracies, "mode": run_mode(args)})
    write_results(args, accuracies, probas, args.base_init_classes)
    return args.base_init_classes, accuracies


def streaming(args, remind: REMINDModel) -> dict:
    model_dir = Path(args.save_dir) / "remind_model"
    trained, accuracies = start_or_resume(args, remind, model_dir)
    for max_class in increments(args):
        if max_class <= trained:
            continue
        first = max(trained, max_class - args.class_increment)
        print(f"\ntraining classes {first}-{max_class - 1}")
        if args.offline_epochs:
            remind.store_incremental_batch(loader(args, "train", first, max_class))
            fit_offline(args, remind)
        else:
            loss = remind.fit_incremental_batch(loader(args, "train", first, max_class))
            print(f"mean streaming loss {loss:.4f}")
        probas = evaluate(args, remind, max_class, accuracies)
        remind.save(max_class, str(model_dir), {"accuracies": accuracies, "mode": run_mode(args)})
        write_results(args, accuracies, probas, max_class)
        trained = max_class
    print(reporting.format_table({args.expt_name: accuracies}, reporting.classes_seen(args, accuracies)))
    return accuracies


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        validate_args(args)
        if args.save_dir is None:
            args.save_dir = str(Path("streaming_experiments") / args.expt_name)
        remind = build_model(args)  # reads the checkpoint: fails here, before writing, if it is bad
        check_feature_shape(args, remind)
        Path(args.save_dir).mkdir(parents=True, exist_ok=True)
        print(f"git commit {reporting.git_commit()}; arguments:\n"
              + json.dumps({k: v for k, v in vars(args).items() if k != "lr_examples"}, indent=2, sort_keys=True))
        streaming(args, remind)
    except (DataError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
