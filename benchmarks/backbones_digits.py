"""REMIND and fine-tuning on the digits stream with several backbones, through the real entry points.

For each backbone: the base-init trainer trains the whole ``--arch`` network on
the first 4 digit classes (``train_base_init_network_from_scratch.py``), then
``imagenet_experiment.py --arch ARCH --split_at LAYER`` streams the other 6
classes two at a time as REMIND (50 replays, crops, mixup: ``--preset
digits_demo``) and as fine-tuning (no replay). Prints one Markdown table
(backbone, split, G's map shape, bytes of codes per example, final seen-class
top-1 of both, seconds per streamed example on this machine) and writes it with
the raw numbers as JSON.

    python benchmarks/backbones_digits.py --out results/backbones            # the four of the table
    python benchmarks/backbones_digits.py --only mobilenet_v3_large --epochs 5
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from image_classification_experiments import imagenet_experiment  # noqa: E402
from image_classification_experiments import make_digits_imagefolder  # noqa: E402
from image_classification_experiments import train_base_init_network_from_scratch as base_init  # noqa: E402
from remind.checkpoint import atomic_write_text  # noqa: E402
from remind.reporting import markdown_table  # noqa: E402

BASE_CLASSES, INCREMENT, NUM_CLASSES = 4, 2, 10
# (torchvision name, split layer, codebooks, base-init epochs, batch size, lr): the paper's split, a deeper
# ResNet, SIESTA's split (8 codebooks of its 80 channels), and a ConvNeXt stage. ResNet-50 from scratch on 531
# small images needs a smaller batch and LR and more epochs than ResNet-18 (20 epochs, 64, 0.05: 55% on its
# 4 base classes; 40, 32, 0.02: 97%).
BACKBONES = [
    ("resnet18", "layer4.0", 32, 20, 64, 0.05),
    ("resnet50", "layer4.0", 32, 40, 32, 0.02),
    ("mobilenet_v3_large", "features.7", 8, 20, 64, 0.05),
    ("convnext_tiny", "features.5", 32, 20, 64, 0.05),
]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/digits", help="digits ImageFolder tree (written when missing)")
    p.add_argument("--out", default="results/backbones", help="results folder (runs, table, JSON)")
    p.add_argument("--only", nargs="*", default=None, help="backbones to run (torchvision names); default all")
    p.add_argument("--epochs", type=int, default=None,
                   help="base-init epochs of every network (default: each backbone's own, 20 or 40)")
    p.add_argument("--image_size", type=int, default=64, help="input side (64)")
    p.add_argument("--num_workers", type=int, default=2, help="data-loading processes (2)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of base init and stream (0)")
    return p


def run_backbone(args, arch: str, split_at: str, codebooks: int, epochs: int, batch_size: int, lr: float) -> dict:
    out = Path(args.out) / arch
    ckpt = out / "base_init" / f"best_{arch}_{BASE_CLASSES}.pth"
    if not ckpt.is_file():
        code = base_init.main([
            "--data", args.data, "--labels_dir", args.data, "--arch", arch, "--base_max_class", str(BASE_CLASSES),
            "--num_classes", str(NUM_CLASSES), "--image_size", str(args.image_size), "--crop_scale_min", "0.5",
            "--no_hflip", "--epochs", str(epochs), "--lr_step_epochs", str(max(1, epochs * 2 // 5)),
            "-b", str(batch_size), "--lr", str(lr), "-j", str(args.num_workers), "--device", args.device,
            "--seed", str(args.seed), "--save_dir", str(out / "base_init")])
        if code != 0:
            raise SystemExit(f"base init of {arch} failed (exit {code})")
    row = {"backbone": arch, "split_at": split_at, "num_codebooks": codebooks,
           "base_init": {"epochs": epochs, "batch_size": batch_size, "lr": lr}}
    for method, replays in (("remind", 50), ("finetune", 0)):
        save_dir = out / method
        argv = ["--images_dir", args.data, "--label_dir", args.data, "--classifier_ckpt", str(ckpt),
                "--arch", arch, "--split_at", split_at, "--num_codebooks", str(codebooks),
                "--preset", "digits_demo", "--base_init_classes", str(BASE_CLASSES),
                "--class_increment", str(INCREMENT), "--image_size", str(args.image_size),
                "--rehearsal_samples", str(replays), "--num_workers", str(args.num_workers),
                "--device", args.device, "--seed", str(args.seed), "--expt_name", method,
                "--save_dir", str(save_dir), "--checkpoint_every_minutes", "0"]
        started = time.perf_counter()
        if imagenet_experiment.main(argv) != 0:
            raise SystemExit(f"{method} stream of {arch} failed")
        seconds = time.perf_counter() - started
        accuracies = json.loads((save_dir / f"accuracies_min_trained_0_max_trained_{NUM_CLASSES}.json").read_text())
        row[f"{method}_top1"] = accuracies["seen_classes_top1"][-1]
        row[f"{method}_seconds"] = seconds
    args_model = imagenet_experiment.parse_args(imagenet_experiment.get_args_parser(), argv)
    model = imagenet_experiment.build_model(args_model, imagenet_experiment.config_from_args(
        args_model, lr_examples_per_class=1))
    channels, height, width = model.map_shape(args.image_size)
    row.update(map_shape=[channels, height, width], code_bytes=height * width * codebooks)
    streamed = len(base_init_labels(args.data)) - base_examples(args.data)
    row["streamed_examples"] = streamed
    row["remind_s_per_example"] = row["remind_seconds"] / streamed  # whole run (base init, evaluations) / stream
    return row


def base_init_labels(data: str):
    from image_classification_experiments.utils_imagenet import load_labels
    return load_labels(data, data, "train")


def base_examples(data: str) -> int:
    return int((base_init_labels(data) < BASE_CLASSES).sum())


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if not (Path(args.data) / "imagenet_indices").is_dir():
        make_digits_imagefolder.main(["--out", args.data, "--seed", str(args.seed)])
    chosen = [b if args.epochs is None else (*b[:3], args.epochs, *b[4:])
              for b in BACKBONES if args.only is None or b[0] in args.only]
    rows = [run_backbone(args, *backbone) for backbone in chosen]
    table = markdown_table(
        ["backbone", "split", "map C x H x W", "bytes of codes / example", "REMIND top-1", "fine-tune top-1",
         "REMIND run s / streamed example"],
        [[r["backbone"], r["split_at"], " x ".join(map(str, r["map_shape"])), f"{r['code_bytes']:,}",
          f"{r['remind_top1']:.2f}", f"{r['finetune_top1']:.2f}", f"{r['remind_s_per_example']:.3f}"]
         for r in rows])
    print(f"\ndigits, {args.image_size} px, base init on {BASE_CLASSES} classes, then {INCREMENT} at a time; final "
          "seen-class top-1 (%)\n\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "backbones.json", json.dumps({"rows": rows, "settings": vars(args)}, indent=2))
    atomic_write_text(out / "backbones.md", table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
