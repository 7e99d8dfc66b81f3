"""The embedded demo: REMIND, fine-tuning and the offline baseline on scikit-learn's digits, no downloads.

Runs the real scripts on the digits written as an ImageNet-style dataset:

1. ``make_digits_imagefolder`` (10 classes, 64 px inputs, 2x2 feature maps);
2. ``train_base_init_network_from_scratch`` on the first 4 classes of the order;
3. ``imagenet_experiment`` three times on the same stream of the other 6
   classes, two at a time: REMIND (50 replays, crops, mixup), fine-tune (0
   replays) and offline (F retrained for ``--offline_epochs`` on everything seen);
4. ``compute_omega``: ``OUT/omega.json`` (remind and finetune against offline),
   ``OUT/results.md`` (accuracy, Omega, and each method's compute: updates,
   sample passes, examples per second) and all three runs in
   ``OUT/accuracy_curves.png``.

Each step is skipped when its output exists, and the runs resume, so a rerun
finishes quickly.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from image_classification_experiments import compute_omega, imagenet_experiment
from image_classification_experiments import train_base_init_network_from_scratch as base_init
from image_classification_experiments.make_digits_imagefolder import write_digits
from image_classification_experiments.stream_run import StreamSpec
from remind import reporting
from remind.compute import compute_table, latest_records

BASE_CLASSES, INCREMENT, NUM_CLASSES, IMAGE_SIZE = 4, 2, 10, 64
ARCH = "ResNet18ClassifyAfterLayer4_1"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/digits", help="where the digits dataset is written (data/digits)")
    parser.add_argument("--out", default="results/demo", help="results folder (results/demo)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--epochs", type=int, default=20, help="base-init epochs (20)")
    parser.add_argument("--offline_epochs", type=int, default=30,
                        help="epochs of the offline baseline at each evaluation (30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data split, base init and stream (0)")
    parser.add_argument("--num_workers", type=int, default=2, help="data-loading processes (2)")
    return parser


def base_init_checkpoint(args) -> Path:
    save_dir = Path(args.out) / "base_init"
    best = save_dir / f"best_{ARCH}_{BASE_CLASSES}.pth"
    if best.is_file():
        print(f"base-init network exists: {best}")
        return best
    code = base_init.main([
        "--data", args.data, "--labels_dir", args.data, "--arch", ARCH, "--base_max_class", str(BASE_CLASSES),
        "--num_classes", str(NUM_CLASSES), "--image_size", str(IMAGE_SIZE), "--crop_scale_min", "0.5",
        "--no_hflip", "--epochs", str(args.epochs), "--lr_step_epochs", str(max(1, args.epochs * 2 // 5)),
        "-b", "64", "--lr", "0.05", "-j", str(args.num_workers), "--device", args.device,
        "--seed", str(args.seed), "--save_dir", str(save_dir)])
    if code != 0:
        raise SystemExit(code)
    return best


def stream(args, ckpt: Path, name: str, replays: int, *extra: str) -> dict:
    save_dir = Path(args.out) / name
    code = imagenet_experiment.main([
        "--images_dir", args.data, "--label_dir", args.data, "--classifier_ckpt", str(ckpt),
        "--expt_name", name, "--save_dir", str(save_dir),
        # 10 classes, crops and mixup (alpha 0.1), and the LR decayed over each class's own count
        # (134 training digits per class, not ImageNet's 1300)
        "--preset", "digits_demo", "--base_init_classes", str(BASE_CLASSES), "--class_increment", str(INCREMENT),
        "--image_size", str(IMAGE_SIZE), "--rehearsal_samples", str(replays), "--num_workers", str(args.num_workers),
        "--device", args.device, "--seed", str(args.seed), *extra])
    if code != 0:
        raise SystemExit(code)
    latest = max(save_dir.glob("accuracies_min_trained_0_max_trained_*.json"),
                 key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return json.loads(latest.read_text())


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if not (Path(args.data) / "imagenet_indices" / "imagenet_val_labels.npy").is_file():
        write_digits(args.data, seed=args.seed)
    ckpt = base_init_checkpoint(args)
    runs = {"remind": stream(args, ckpt, "remind", 50), "finetune": stream(args, ckpt, "finetune", 0),
            # 64-example batches: the digits have 536 to 1,340 training examples, too few for 256
            "offline": stream(args, ckpt, "offline", 0, "--offline_epochs", str(args.offline_epochs),
                              "--offline_batch_size", "64", "--offline_lr", "0.1")}
    out = Path(args.out)
    omegas = compute_omega.compute(str(out / "offline"), {name: str(out / name) for name in ("remind", "finetune")},
                                   str(out))
    spec = StreamSpec.class_increments(BASE_CLASSES, INCREMENT, NUM_CLASSES)
    print("\nDigits demo: seen-class accuracy (%) after each increment")
    print(reporting.format_table(runs, spec.seen_at(len(runs["remind"]["seen_classes_top1"]))))
    print("\nCompute (whole run on this machine; learning s = data + G + replay + offline training):")
    print(compute_table(latest_records({name: out / name for name in runs})))
    print("\nOmega (mean over evaluations of learner / offline accuracy, all seen classes):")
    for name, values in omegas.items():
        print(f"  {name:<9} top-1 {values['top1']:.3f}   top-5 {values['top5']:.3f}")
    final = {name: acc["seen_classes_top1"][-1] for name, acc in runs.items()}
    print(f"\nfinal seen-class top-1: REMIND {final['remind']:.2f}%, fine-tune {final['finetune']:.2f}%, offline "
          f"{final['offline']:.2f}% ({out / 'omega.json'}, {out / 'results.md'}, {out / 'accuracy_curves.png'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
