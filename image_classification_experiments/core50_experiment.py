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
from image_classification_experiments.REMINDModel import REMINDModel
from image_classification_experiments.resnet_models import build_full_network, load_network_state
from image_classification_experiments.utils_core50 import (NUM_CATEGORIES, ORDERINGS, Core50Split, core50_loader,
                                                           load_core50, stream_order)
from image_classification_experiments.utils_imagenet import DataError, examples_per_class
from remind.checkpoint import CheckpointError, atomic_torch_save, atomic_write_text
from remind.metrics import topk_accuracy
from remind.pq import check_pq_shape

ACCURACY_KEYS = ie.ACCURACY_KEYS


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
    g.add_argument("--eval_fraction", type=float, default=0.1, help="evaluate after every this much of the stream (0.1)")
    g.add_argument("--base_init_epochs", type=int, default=10,
                   help="epochs of offline training of F (its 10-way head included) on the base-init frames' "
                        "codes before streaming; 0 streams from F as loaded, with an untrained head (10)")
    g.add_argument("--base_init_batch_size", type=int, default=256, help="base-init mini-batch size (256)")
    g.add_argument("--base_init_lr", type=float, default=0.1,
                   help="base-init start LR, cosine-decayed to 0 over the epochs (0.1)")
    g.add_argument("--expt_name", type=str, default="remind_core50", help="experiment name (remind_core50)")
    g.add_argument("--save_dir", type=str, default=None,
                   help="results folder (default streaming_experiments/<expt_name>_<order>_seed<k>); reruns resume")
    g = p.add_argument_group("weights")
    g.add_argument("--classifier_ckpt", type=str, default=None,
                   help="weights for G and F: a torchvision ResNet-18 .pth (ImageNet, as the paper) or a project "
                        "base-init checkpoint; its fc is replaced by a random 10-way one when it has other "
                        "outputs. None: random init (no pretrained weights can be downloaded here)")
    return p


# ------------------------------------------------------------------ setup
def validate_args(args) -> None:
    check_pq_shape(args.num_channels, args.num_codebooks, args.codebook_size)
    for name in ("base_init_fraction", "eval_fraction"):
        if not 0 < getattr(args, name) <= 1:
            raise DataError(f"--{name} {getattr(args, name)} must be in (0, 1]")
    if args.base_init_epochs < 0 or args.base_init_batch_size < 1 or args.base_init_lr <= 0:
        raise DataError("--base_init_epochs must be >= 0, --base_init_batch_size >= 1 and --base_init_lr > 0")
    if args.rehearsal_samples < 0 or args.batch_size < 1 or args.image_size < 32:
        raise DataError("--rehearsal_samples must be >= 0, --batch_size >= 1 and --image_size >= 32")
    args.spatial_feat_dim = None  # read by imagenet_experiment.check_feature_shape
    if args.save_dir is None:
        args.save_dir = str(Path("streaming_experiments") / f"{args.expt_name}_{args.order}_seed{args.permutation_seed}")


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
    """The --classifier_ckpt tensors as a full ``--base_arch`` 10-way state, or None for random init.

    Accepts torchvision names (``layer4.1.conv1.weight``) or the project's (``model.layer4.1...``). Every
    tensor but ``fc`` must be there with its shape; ``fc`` is kept only if it already has 10 outputs.
    """
    if args.classifier_ckpt is None:
        return None
    state, _ = load_network_state(args.classifier_ckpt)
    target = build_full_network(args.base_arch, NUM_CATEGORIES).state_dict()
    adapted, replaced = {}, []
    for name, tensor in target.items():
        source = state.get(name, state.get(name[len("model."):]) if name.startswith("model.") else None)
        if source is not None and source.shape == tensor.shape:
            adapted[name] = source
        elif name.startswith("model.fc."):
            adapted[name] = tensor  # torch's random init of a 10-way head
            replaced.append(name)
        else:
            found = "missing" if source is None else f"shape {tuple(source.shape)} vs {tuple(tensor.shape)}"
            raise CheckpointError(f"checkpoint {args.classifier_ckpt} does not fit {args.base_arch}: {name} "
                                  f"{found}; pass a ResNet-18 checkpoint (torchvision's or this project's)")
    if replaced:
        print(f"{args.classifier_ckpt}: its fc does not have {NUM_CATEGORIES} outputs; using a random 10-way fc")
    return adapted


def prepare_model(args, adapted: dict | None) -> REMINDModel:
    """REMINDModel with the ImageNet run's settings, on the adapted checkpoint (written to SAVE_DIR)."""
    requested = args.classifier_ckpt
    if adapted is None:
        print("no --classifier_ckpt: G and F are randomly initialised (no pretrained weights can be downloaded "
              "here; the paper uses an ImageNet-pretrained ResNet-18, see docs/core50.md)")
    else:
        path = Path(args.save_dir) / "core50_base_network.pth"
        atomic_torch_save({"state_dict": adapted, "arch": args.base_arch}, path)
        args.classifier_ckpt = str(path)
    try:
        return build_model(args)
    finally:
        args.classifier_ckpt = requested


def build_model(args) -> REMINDModel:
    return ie.build_model(args, num_classes=NUM_CATEGORIES)


def resume(args, remind: REMINDModel, done: int, model_dir: Path, run_key: dict) -> dict:
    """Load the checkpoint after ``done`` frames; it must be this ordering, seed, stream and feature-map size."""
    meta = remind.resume(done, str(model_dir))
    saved = {k: meta.get(k) for k in run_key}
    if saved != run_key:
        raise CheckpointError(f"{model_dir} holds a run with {saved}, not {run_key}; use another --save_dir")
    if tuple(remind.replay_buffer.code_shape[:2]) != args.feature_shape:
        raise CheckpointError(f"{model_dir} holds codes of {remind.replay_buffer.code_shape[:2]} feature maps but "
                              f"G gives {args.feature_shape} at --image_size {args.image_size}; use the run's "
                              "--image_size or another --save_dir")
    return meta


# ------------------------------------------------------------------ evaluation
def evaluate(args, remind: REMINDModel, test: Core50Split, seen: np.ndarray, base: np.ndarray,
             accuracies: dict) -> np.ndarray:
    """Test on the test frames of the ``seen`` categories; appends to ``accuracies`` (None: empty group)."""
    indices = np.nonzero(np.isin(test.labels, seen))[0]
    _, probas, labels = remind.predict(core50_loader(test, indices, args.batch_size, args.image_size,
                                                     args.num_workers))
    is_base = np.isin(labels, base)
    for name, mask in (("base_classes", is_base), ("non_base_classes", ~is_base),
                       ("seen_classes", np.ones_like(is_base))):
        top1, top5 = topk_accuracy(probas[mask], labels[mask], topk=(1, 5)) if mask.any() else (None, None)
        accuracies[f"{name}_top1"].append(top1)
        accuracies[f"{name}_top5"].append(top5)
    print(f"{len(seen)} categories seen: top1={accuracies['seen_classes_top1'][-1]:.2f}% "
          f"top5={accuracies['seen_classes_top5'][-1]:.2f}% on {len(labels)} test frames")
    return probas


def write_results(args, accuracies: dict, probas: np.ndarray, frames: list[int]) -> None:
    save_dir, count = Path(args.save_dir), frames[len(accuracies["seen_classes_top1"]) - 1]
    stem = f"core50_{args.order}_%s_min_trained_0_max_trained_{count}"
    atomic_write_text(save_dir / f"{stem % 'accuracies'}.json", json.dumps(accuracies))
    atomic_torch_save(torch.from_numpy(probas), save_dir / f"{stem % 'preds'}.pth")
    ie.reporting.plot_accuracies({f"REMIND {args.order} seed {args.permutation_seed}": accuracies}, frames,
                                 save_dir / f"core50_{args.order}_accuracy_curve.png",
                                 xlabel="training frames streamed")


# ------------------------------------------------------------------ the run
def start_or_resume(args, remind, train, test, stream, base_count, points, model_dir) -> tuple[int, dict]:
    """(frames trained so far, accuracies so far) after base init or a resume."""
    run_key = {"order": args.order, "permutation_seed": args.permutation_seed, "stream_length": len(stream)}
    done = ie.latest_checkpoint(model_dir, [base_count] + points)
    if done is not None:
        print(f"resuming from {model_dir}/remind_buffer_{done}.pth")
        return done, resume(args, remind, done, model_dir, run_key)["accuracies"]
    print(f"base initialisation on the first {base_count} of {len(stream)} frames ({args.order} order)")
    remind.fit_pq(core50_loader(train, stream[:base_count], args.batch_size, args.image_size, args.num_workers))
    if args.base_init_epochs:
        # F's 10-way head starts random: train F offline on the base-init codes (the buffer holds exactly them),
        # then stream with a fresh optimizer, as after the ImageNet base initialisation.
        loss = remind.fit_offline(args.base_init_epochs, args.base_init_batch_size, args.base_init_lr)
        remind.reset_optimizer()
        print(f"base init: F trained {args.base_init_epochs} epochs on {len(remind.replay_buffer)} frames, "
              f"last-epoch loss {loss:.4f}")
    accuracies = {k: [] for k in ACCURACY_KEYS}
    seen = np.unique(train.labels[stream[:base_count]])
    probas = evaluate(args, remind, test, seen, seen, accuracies)
    remind.save(base_count, str(model_dir), {"accuracies": accuracies, **run_key})
    write_results(args, accuracies, probas, [base_count] + points)
    return base_count, accuracies


def streaming(args, remind: REMINDModel, train: Core50Split, test: Core50Split) -> dict:
    stream = stream_order(train, args.order, args.permutation_seed)
    base_count, points = eval_points(len(stream), args.base_init_fraction, args.eval_fraction)
    model_dir = Path(args.save_dir) / "remind_model"
    trained, accuracies = start_or_resume(args, remind, train, test, stream, base_count, points, model_dir)
    base = np.unique(train.labels[stream[:base_count]])
    run_key = {"order": args.order, "permutation_seed": args.permutation_seed, "stream_length": len(stream)}
    for point in points:
        if point <= trained:
            continue
        print(f"\nstreaming frames {trained}-{point - 1} of {len(stream)}")
        loss = remind.fit_incremental_batch(core50_loader(train, stream[trained:point], args.batch_size,
                                                          args.image_size, args.num_workers))
        print(f"mean streaming loss {loss:.4f}")
        probas = evaluate(args, remind, test, np.unique(train.labels[stream[:point]]), base, accuracies)
        remind.save(point, str(model_dir), {"accuracies": accuracies, **run_key})
        write_results(args, accuracies, probas, [base_count] + points)
        trained = point
    return accuracies


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        validate_args(args)
        torch.manual_seed(args.seed)  # random init of G/F (or of the 10-way fc)
        train, test = load_core50(args.data_dir, args.frame_stride)
        args.lr_examples = examples_per_class(train.labels, NUM_CATEGORIES)  # CORe50's own counts, not 1300
        adapted = adapted_checkpoint(args)  # fails here, before anything is written, if it is bad
        Path(args.save_dir).mkdir(parents=True, exist_ok=True)
        remind = prepare_model(args, adapted)
        ie.check_feature_shape(args, remind)
        print(f"git commit {ie.reporting.git_commit()}; {len(train)} training and {len(test)} test frames; arguments:\n"
              + json.dumps({k: v for k, v in vars(args).items() if k not in ("lr_examples", "feature_shape")},
                           indent=2, sort_keys=True))
        streaming(args, remind, train, test)
    except (DataError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
