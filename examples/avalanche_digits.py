"""REMIND, Avalanche's Naive and Avalanche's Replay on a class-incremental digits benchmark, side by side.

Needs the ``avalanche`` extra (``pip install -e '.[avalanche]'``); no download: the 8x8 digits ship with
scikit-learn. The 10 classes come in a fixed seeded order, 4 base classes then 3 experiences of 2.

1. Base initialisation: a torchvision ResNet-18 (random init) is trained offline on the first experience's
   images for ``--epochs`` epochs (SGD, momentum 0.9, cosine LR, random shifts), then copied for each method.
2. REMIND (``remind.integrations.avalanche.REMINDStrategy``): the copy is cut at ``--split`` into frozen G
   and plastic F; the first experience trains the PQ and fills the buffer, every later example gets one
   replay step (50 replays, feature-map crops, mixup, per-class LR decay).
3. Naive: Avalanche's fine-tuning of the whole network; Replay: the same with Avalanche's class-agnostic
   replay buffer of ``--replay_mem`` images. Both: SGD (momentum 0.9, ``--baseline_lr``), ``train_epochs=1``,
   mini-batches of 32, trained on every experience (the first one included, which fills Replay's memory).

After each experience every method is evaluated by Avalanche's stream accuracy on the test images of all
classes seen so far. Prints a Markdown table and writes ``--out`` (JSON).

    python examples/avalanche_digits.py --out results/avalanche_digits.json
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as nnf
import torchvision
from torch.utils.data import TensorDataset

from remind import PRESETS, split_network
from remind.checkpoint import atomic_write_text

BASE_CLASSES, INCREMENT, NUM_CLASSES = 4, 2, 10
METRIC = "Top1_Acc_Stream/eval_phase/test_stream"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/avalanche_digits.json", help="JSON results file")
    parser.add_argument("--epochs", type=int, default=15, help="base-init epochs of the whole network (15)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, class order, networks, stream (0)")
    parser.add_argument("--image_size", type=int, default=32, help="side of the upscaled digits (32)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--split", default="layer3", help="REMIND's cut of the ResNet-18 (layer3: 2x2 maps at 32 px)")
    parser.add_argument("--replays", type=int, default=50, help="REMIND's replays per example (50)")
    parser.add_argument("--baseline_lr", type=float, default=0.01, help="SGD LR of Naive and Replay (0.01)")
    parser.add_argument("--replay_mem", type=int, default=200, help="images in Avalanche Replay's memory (200)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--train_per_class", type=int, default=None,
                        help="at most this many training images per class (default: all, about 135)")
    return parser


class Digits(TensorDataset):
    """Images ``(N, 3, S, S)`` float32 and labels ``(N,)`` int64, with the ``targets`` Avalanche reads."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        super().__init__(images, labels)
        self.targets = labels.tolist()


def load_digits(image_size: int, seed: int, test_fraction: float = 0.25,
                train_per_class: int | None = None) -> tuple[Digits, Digits]:
    """scikit-learn's digits, a seeded per-class train/test split (at most ``train_per_class`` training images
    of each class when given), upscaled to ``(3, S, S)`` and normalised."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    rng = np.random.default_rng(seed)
    train, test = [], []
    for digit in range(NUM_CLASSES):
        members = rng.permutation(np.nonzero(data.target == digit)[0])
        n_test = int(round(len(members) * test_fraction))
        test.extend(members[:n_test])
        train.extend(members[n_test:][:train_per_class])

    def tensors(rows) -> Digits:
        rows = rng.permutation(np.asarray(rows))  # a shuffled stream within each experience
        x = torch.from_numpy(data.images[rows]).float().div(16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
        x = nnf.interpolate(x, size=image_size, mode="bilinear", align_corners=False)
        return Digits(((x - 0.3) / 0.4).expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(data.target[rows]))

    return tensors(train), tensors(test)


def random_shift(x: torch.Tensor, generator: torch.Generator, pad: int) -> torch.Tensor:
    """Each image of ``x (B, 3, S, S)`` shifted by up to ``pad`` px (edge padding)."""
    padded = nnf.pad(x, (pad,) * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2, len(x)), generator=generator).tolist()
    s = x.shape[-1]
    return torch.stack([padded[k, :, dy[k]:dy[k] + s, dx[k]:dx[k] + s] for k in range(len(x))])


def base_init(images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int, device: str) -> nn.Module:
    """A ResNet-18 with 10 outputs trained offline on the base classes' ``images (N, 3, S, S)``."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(num_classes=NUM_CLASSES).to(device)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    batch, steps = 64, epochs * math.ceil(len(labels) / 64)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    net.train()
    for epoch in range(epochs):
        order, correct = torch.randperm(len(labels), generator=gen), 0
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            x = random_shift(images[rows], gen, pad=max(1, images.shape[-1] // 16)).to(device)
            y = labels[rows].to(device)
            out = net(x)
            loss = nnf.cross_entropy(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            correct += int((out.argmax(1) == y).sum())
        print(f"  base init epoch {epoch + 1}/{epochs}: train accuracy {100.0 * correct / len(labels):.1f}%",
              flush=True)
    return net.eval()


def evaluator():
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No loggers specified": the script prints its own table
        return EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])


def run(name: str, strategy, benchmark, seed: int) -> list[float]:
    """Train ``strategy`` on each experience, evaluate on the test data of all seen classes: accuracies (%)."""
    accuracies = []
    torch.manual_seed(seed)  # Avalanche's shuffled loaders draw from torch's global generator
    for k, experience in enumerate(benchmark.train_stream):
        start = time.time()
        # Avalanche 0.6's own Replay plugin calls a function it deprecates (and forces that warning on):
        # keep its DeprecationWarnings out of the output, show any other warning.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            strategy.train(experience)
        for w in caught:
            if not issubclass(w.category, DeprecationWarning):
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        accuracy = 100.0 * strategy.eval(benchmark.test_stream[:k + 1])[METRIC]
        accuracies.append(accuracy)
        print(f"  {name}: experience {k} ({len(experience.dataset)} images, classes "
              f"{sorted(experience.classes_in_this_experience)}): {accuracy:.1f}% on seen classes "
              f"({time.time() - start:.1f}s)", flush=True)
    return accuracies


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
        from avalanche.training import Naive, Replay

        from remind.integrations.avalanche import REMINDStrategy
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    started = time.time()
    train, test = load_digits(args.image_size, args.seed, train_per_class=args.train_per_class)
    class_order = np.random.default_rng(args.seed).permutation(NUM_CLASSES).tolist()
    per_exp = [BASE_CLASSES] + [INCREMENT] * ((NUM_CLASSES - BASE_CLASSES) // INCREMENT)
    benchmark = class_incremental_benchmark({"train": train, "test": test}, class_order=class_order,
                                            num_classes_per_exp=per_exp)
    print(f"digits at {args.image_size} px: {len(train)} train / {len(test)} test images; class order "
          f"{class_order}, experiences of {per_exp} classes", flush=True)

    base = benchmark.train_stream[0].dataset
    base_x = torch.stack([base[i][0] for i in range(len(base))])
    base_y = torch.tensor([int(base[i][1]) for i in range(len(base))])
    network = base_init(base_x, base_y, args.epochs, args.seed, args.device)

    counts = np.bincount(train.tensors[1].numpy(), minlength=NUM_CLASSES)
    config = dataclasses.replace(PRESETS["digits_demo"], num_classes=NUM_CLASSES, replays_per_step=args.replays,
                                 lr_examples_per_class=tuple(int(c) for c in counts), num_codebooks=32,
                                 codebook_size=64, seed=args.seed)
    results, timings = {}, {}

    start = time.time()
    G, F = split_network(copy.deepcopy(network), args.split, image_size=args.image_size)
    remind = REMINDStrategy(trunk=G, head=F, config=config, device=args.device, train_mb_size=32,
                            eval_mb_size=256, evaluator=evaluator())
    results["REMIND"] = run("REMIND", remind, benchmark, args.seed)
    timings["REMIND"] = time.time() - start

    for name in ("Naive", "Replay"):
        start = time.time()
        net = copy.deepcopy(network).train()
        optimizer = torch.optim.SGD(net.parameters(), lr=args.baseline_lr, momentum=0.9, weight_decay=1e-5)
        common = dict(model=net, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), train_mb_size=32,
                      train_epochs=1, eval_mb_size=256, device=args.device, evaluator=evaluator())
        strategy = Naive(**common) if name == "Naive" else Replay(mem_size=args.replay_mem, **common)
        results[name] = run(name, strategy, benchmark, args.seed)
        timings[name] = time.time() - start

    header = "| method | " + " | ".join(f"after exp {k} ({sum(per_exp[:k + 1])} classes)"
                                        for k in range(len(per_exp))) + " | final |"
    lines = [header, "|" + "---|" * (len(per_exp) + 2)]
    for name, accs in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{a:.1f}" for a in accs) + f" | **{accs[-1]:.1f}** |")
    table = "\n".join(lines)
    total = time.time() - started
    print("\nAverage accuracy (%) over all seen classes (Avalanche's stream accuracy):\n")
    print(table)
    print(f"\nREMIND - Naive at the end: {results['REMIND'][-1] - results['Naive'][-1]:+.1f} points; "
          f"wall time {total:.0f}s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({
        "accuracy_seen_classes": results, "final": {k: v[-1] for k, v in results.items()},
        "seconds": {**timings, "total": total}, "class_order": class_order, "classes_per_experience": per_exp,
        "settings": {**vars(args), "remind_config": dataclasses.asdict(config),
                     "baselines": {"optimizer": "SGD momentum 0.9, weight decay 1e-5", "lr": args.baseline_lr,
                                   "train_epochs": 1, "train_mb_size": 32}},
        "markdown": table}, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
