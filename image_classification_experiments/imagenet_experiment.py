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

from image_classification_experiments.configs import (
    FLAGS,
    PRESETS,
    add_config_flags,
    config_from_args,
    config_identity,
    file_fingerprint,
    preset_defaults,
)
from image_classification_experiments.REMINDModel import REMINDModel
from image_classification_experiments.resnet_models import (
    add_network_flags,
    check_classifier_rows,
    check_map_geometry,
    network_from_args,
)
from image_classification_experiments.stream_run import (
    ACCURACY_KEYS,
    OfflineTraining,
    REMINDStream,
    ResultFiles,
    StreamSpec,
    feature_shape,
    keep_policy,
    run_stream,
    stream_budget,
)
from image_classification_experiments.utils_imagenet import (
    DataError,
    check_class_range,
    class_names_by_position,
    default_num_workers,
    examples_per_class,
    get_data_loader,
    image_paths,
    label_file,
    load_labels,
    refuse_unreadable,
)
from remind import reporting
from remind.autosave import Autosave, check_every_minutes
from remind.checkpoint import CheckpointError, load_state
from remind.cli import add_preflight_flags, check_device, default_device, run_main
from remind.config import check_num_classes_fit
from remind.lock import FolderLock

__all__ = ["ACCURACY_KEYS", "get_args_parser", "learner_args_parser", "main"]


def learner_args_parser() -> argparse.ArgumentParser:
    """The REMIND learner's flags (network and split, PQ, buffer, LR, augmentation), shared by the experiment
    scripts. The learner's settings come from :class:`remind.REMINDConfig` (defaults and help included)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="start from a named set of learner settings (imagenet_paper: the paper's ImageNet run; "
                        "core50; digits_demo); any flag given explicitly still wins")
    g = p.add_argument_group("network")
    add_network_flags(g)
    g.add_argument("--batch_size", type=int, default=128, help="images per G batch, streaming and testing (128)")
    g.add_argument("--image_size", type=int, default=224, help="input side (224)")
    g.add_argument("--num_workers", type=int, default=default_num_workers(), help="data-loading processes")
    g.add_argument("--device", type=str, default=default_device(), help="cuda or cpu (default: cuda if present)")
    groups = {"network": g}
    add_config_flags(p, fields=tuple(f for f in FLAGS if f not in ("num_classes", "lr_examples_per_class")),
                     groups=groups)
    g = p.add_argument_group("checkpoints")
    g.add_argument("--checkpoint_every_minutes", type=float, default=10.0,
                   help="also save the run state inside an increment this often (fractions allowed; 0: only "
                        "after each increment); SIGINT/SIGTERM save it too, and a rerun continues from it (10)")
    g.add_argument("--keep_checkpoints", type=str, default="1",
                   help="increment states remind_buffer_<K>.pth kept: the latest N, or 'all' (the original's "
                        "layout, one per increment, about 1.5 GB each on ImageNet); each increment's F, "
                        "accuracies and predictions are always kept (1)")
    g.add_argument("--allow_changed_settings", action="store_true",
                   help="resume a run whose saved settings differ from these (refused otherwise); the "
                        "differences are recorded in SAVE_DIR/settings_changes.txt")
    g.add_argument("--eval_from_images", action="store_true",
                   help="run G over the test images at every evaluation (the original's way) instead of "
                        "encoding each test image once and keeping its codes (remind_model/eval_codes.pth)")
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
    g.add_argument("--check_images", action="store_true",
                   help="open and decode every image the run will use before starting (slow on ImageNet: "
                        "minutes per 100k images), and refuse the run if any cannot be read")
    add_preflight_flags(g, "--save_dir")
    g.add_argument("--resume_full_path", type=str, default=None,
                   help="folder of a previous run's remind_model/ to continue from, at --streaming_min_class")
    g = p.add_argument_group("base init and feature maps")
    g.add_argument("--classifier_ckpt", type=str, default=None,
                   help="base-init checkpoint of --arch (train_base_init_network_from_scratch.py); required unless "
                        "--weights gives the network instead")
    g.add_argument("--spatial_feat_dim", type=int, default=None,
                   help="side of G's feature maps; checked if given (7 at 224 px), else inferred")
    add_config_flags(p, fields=("lr_examples_per_class",), groups={"learning rate": g})
    g = p.add_argument_group("stream")
    add_config_flags(p, fields=("num_classes",), groups={"stream": g})
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


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse with ``--preset``'s values as the defaults, so explicit flags override the preset."""
    known, _ = parser.parse_known_args(argv)
    if getattr(known, "preset", None):
        parser.set_defaults(**preset_defaults(known.preset))
    return parser.parse_args(argv)


def resolve_lr_examples(value: str, train_labels_fn, num_classes: int):
    """``--lr_examples_per_class``: a positive integer, or ``auto`` for each class's training count."""
    if value == "auto":
        return tuple(int(n) for n in examples_per_class(train_labels_fn(), num_classes))
    if re.fullmatch(r"\d+", str(value)) and int(value) > 0:
        return int(value)
    raise DataError(f"--lr_examples_per_class {value!r} must be a positive integer or auto")


# ------------------------------------------------------------------ checks
def stream_spec(args) -> StreamSpec:
    """The evaluation points the flags describe (built once; the flags are not written to)."""
    check_num_classes_fit(args.num_classes)  # before the points: a huge --num_classes would list billions
    max_class = args.num_classes if args.streaming_max_class is None else args.streaming_max_class
    if max_class > args.num_classes:
        raise DataError(f"--streaming_max_class {max_class} exceeds --num_classes {args.num_classes}; "
                        "raise --num_classes")
    if args.class_increment <= 0:
        raise DataError("--class_increment must be positive")
    return StreamSpec.class_increments(args.base_init_classes, args.class_increment, max_class, args.min_class,
                                       args.streaming_min_class)


def validate_args(args, spec: StreamSpec):
    """Every check that can fail before anything is written; returns the learner's config."""
    network_from_args(args)
    if (args.classifier_ckpt is None) == (args.weights is None):
        raise DataError("pass --classifier_ckpt (a base-init checkpoint, from train_base_init_network_from_scratch.py) "
                        "or --weights (torchvision weights of --arch), one of them")
    check_device(args.device)
    if args.offline_epochs < 0 or args.offline_batch_size <= 0 or args.offline_lr <= 0:
        raise DataError("--offline_epochs must be non-negative, --offline_batch_size and --offline_lr positive")
    if args.offline_epochs and args.max_buffer_size is not None:
        raise DataError("the offline baseline trains on every example seen: drop --max_buffer_size")
    if args.image_size < 32 or args.batch_size < 1 or args.num_workers < 0:
        raise DataError("--image_size must be at least 32, --batch_size at least 1 and --num_workers at least 0")
    streaming_min = args.base_init_classes if args.streaming_min_class is None else args.streaming_min_class
    for split in ("train", "val"):
        labels = load_labels(args.images_dir, args.label_dir, split)
        if len(labels) and labels.max() >= args.num_classes:
            raise DataError(f"the {split} label files hold label {int(labels.max())}, but F has --num_classes "
                            f"{args.num_classes} outputs; raise --num_classes or re-create the label files")
        check_class_range(labels, args.min_class, args.base_init_classes, f"base init ({split})")
        if streaming_min < spec.points[-1]:
            check_class_range(labels, streaming_min, spec.points[-1], f"stream ({split})")
    keep_policy(args.keep_checkpoints)
    check_every_minutes(args.checkpoint_every_minutes)
    if args.check_images:
        end = spec.points[-1]
        refuse_unreadable([path for split in ("train", "val")
                           for path in image_paths(args.images_dir, args.label_dir, split, args.min_class, end)],
                          f"classes {args.min_class}-{end - 1}")
    lr_examples = resolve_lr_examples(args.lr_examples_per_class,
                                      lambda: load_labels(args.images_dir, args.label_dir, "train"), args.num_classes)
    if args.resume_full_path is not None:
        state = Path(args.resume_full_path) / f"remind_buffer_{streaming_min}.pth"
        if not state.is_file():
            raise CheckpointError(f"no remind_buffer_{streaming_min}.pth in {args.resume_full_path}; "
                                  "pass the run's remind_model/ folder and the increment it reached as "
                                  "--streaming_min_class")
        load_state(state, "--resume_full_path state")  # damaged: refused here, before the results folder exists
    return config_from_args(args, lr_examples_per_class=lr_examples)


def check_checkpoint_rows(args) -> None:
    """Refuse a checkpoint whose classifier rows name other classes than the label files; warn when it names
    none (after every other check, so that an input error stays one line)."""
    if args.classifier_ckpt is None:
        return
    warning = check_classifier_rows(args.classifier_ckpt,
                                    class_names_by_position(args.images_dir, args.label_dir, args.num_classes))
    if warning:
        print(warning, file=sys.stderr, flush=True)


def run_budget(args, model: REMINDModel, spec: StreamSpec, save_dir: Path):
    """The preflight table for these flags and this data."""
    train = load_labels(args.images_dir, args.label_dir, "train")
    val = load_labels(args.images_dir, args.label_dir, "val")
    seen = [int(np.count_nonzero((train >= args.min_class) & (train < end))) for end in spec.points]
    evaluated = [int(np.count_nonzero((val >= args.min_class) & (val < end))) for end in spec.points]
    return stream_budget(f"preflight: {args.expt_name} ({run_mode(args)}), classes {args.min_class}-"
                         f"{spec.points[-1] - 1}", spec, seen, evaluated, model,
                         feature_shape(model, args.image_size, args.spatial_feat_dim), save_dir,
                         keep_policy(args.keep_checkpoints))


def build_model(args, config, classifier_ckpt: str | None = "flags", weights: str | None = "flags") -> REMINDModel:
    """The learner the flags describe (or with the given checkpoint / weights file), its G's maps checked
    against the PQ geometry; nothing is written."""
    arch, split_at = network_from_args(args)
    model = REMINDModel(classifier_ckpt=args.classifier_ckpt if classifier_ckpt == "flags" else classifier_ckpt,
                        device=args.device, config=config, arch=arch, split_at=split_at,
                        weights=args.weights if weights == "flags" else weights, image_size=args.image_size)
    check_map_geometry(model.map_shape(args.image_size), args.num_codebooks, args.codebook_size, args.num_channels)
    feature_shape(model, args.image_size, getattr(args, "spatial_feat_dim", None))
    return model


def run_identity(args, model: REMINDModel) -> dict:
    """Every setting that changes what the run computes, checked when it resumes: the learner's config, the
    stream's layout, the offline schedule, and fingerprints of the base-init checkpoint and the label files."""
    identity = {"mode": run_mode(args), **config_identity(model.config), "arch": model.arch,
                "split_at": model.split_at, "map_shape": list(model.map_shape(args.image_size)),
                "weights_sha256": file_fingerprint(args.weights), "image_size": args.image_size,
                "min_class": args.min_class, "base_init_classes": args.base_init_classes,
                "class_increment": args.class_increment,
                "classifier_ckpt_sha256": file_fingerprint(args.classifier_ckpt),
                "label_files_sha256": [file_fingerprint(label_file(args.label_dir, split))
                                       for split in ("train", "val")]}
    if args.offline_epochs:
        identity.update(offline_epochs=args.offline_epochs, offline_batch_size=args.offline_batch_size,
                        offline_lr=args.offline_lr)
    return identity


def run_mode(args) -> str:
    return "offline" if args.offline_epochs else "stream"


def save_dir_of(args) -> Path:
    return Path(args.save_dir) if args.save_dir is not None else Path("streaming_experiments") / args.expt_name


def loader_factory(args, split: str):
    def make(min_class: int, max_class: int):
        return get_data_loader(args.images_dir, args.label_dir, split, min_class, max_class,
                               batch_size=args.batch_size, image_size=args.image_size, num_workers=args.num_workers,
                               pin_memory=str(args.device).startswith("cuda"))
    return make


def streaming(args, model: REMINDModel, spec: StreamSpec, save_dir: Path) -> dict:
    train, val = loader_factory(args, "train"), loader_factory(args, "val")
    offline = OfflineTraining(args.offline_epochs, args.offline_batch_size, args.offline_lr) \
        if args.offline_epochs else None
    autosave = Autosave(args.checkpoint_every_minutes)
    method = REMINDStream(model, train, lambda end: val(args.min_class, end), save_dir / "remind_model",
                          run_identity(args, model), feature_shape(model, args.image_size, args.spatial_feat_dim),
                          offline=offline, autosave=autosave, keep=keep_policy(args.keep_checkpoints),
                          eval_from_images=args.eval_from_images, allow_changes=args.allow_changed_settings)
    seed_from = None
    if args.resume_full_path is not None:
        point = args.base_init_classes if args.streaming_min_class is None else args.streaming_min_class

        def seed_from():
            return point, method.restore(point, Path(args.resume_full_path))
    files = ResultFiles(save_dir, args.expt_name, first=args.min_class)
    with autosave:
        accuracies = run_stream(spec, method, files, lambda labels: labels < args.base_init_classes,
                                seed_from=seed_from)
    print(reporting.format_table({args.expt_name: accuracies}, spec.seen_at(len(accuracies["seen_classes_top1"]))))
    return accuracies


def main(argv=None) -> int:
    args = parse_args(get_args_parser(), argv)

    def body():
        spec = stream_spec(args)
        config = validate_args(args, spec)
        save_dir = save_dir_of(args)
        torch.manual_seed(args.seed)  # the run owns torch's generator too (it is checkpointed with the learner)
        # reads the checkpoint: fails here, before writing, if it is bad
        model = build_model(args, config)
        check_checkpoint_rows(args)
        plan = run_budget(args, model, spec, save_dir)
        if plan.preflight(args.dry_run, args.skip_disk_check):
            return 0
        with FolderLock(save_dir):  # one run per folder
            print(f"git commit {reporting.git_commit()}; arguments:\n"
                  + json.dumps(vars(args), indent=2, sort_keys=True))
            streaming(args, model, spec, save_dir)
    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
