"""The preflight budget tables at the real datasets' sizes, computed (not run): ImageNet with the paper's
settings, CLEVR and TDIUC with the original's configs. The same functions print the table at the start of
every real run (``--dry_run`` prints it alone); here the sizes are the datasets' published ones.

    python benchmarks/preflight_tables.py [--json results/preflight_tables.json]

Sizes assumed: ImageNet-2012 1,281,167 train / 50,000 val images, spread evenly over the classes (the real
per-class counts, 732 to 1,300, shift the per-increment figures by a few percent, not the largest buffer,
which is full at 959,665); CLEVR v1.0 699,989 / 149,991 questions on 70,000 / 15,000 images; TDIUC
1,115,299 / 538,868 questions on 110,739 / 56,698 images (``all`` code files hold train and val images).
Question tables: CLEVR padded to 46 tokens, TDIUC to 26 (int64 on the device); dictionaries of 90 (CLEVR)
and 10,000 (TDIUC) words. Buffer codes and networks on a GPU (the paper's runs).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from image_classification_experiments.configs import PRESETS  # noqa: E402
from image_classification_experiments.REMINDModel import REMINDModel  # noqa: E402
from image_classification_experiments.stream_run import StreamSpec, feature_shape, stream_budget  # noqa: E402
from remind import budget  # noqa: E402
from vqa_experiments.configs import get_config  # noqa: E402
from vqa_experiments.vqa_models import build_model  # noqa: E402
from vqa_experiments.vqa_trainer import vqa_budget  # noqa: E402

IMAGENET_TRAIN, IMAGENET_VAL, IMAGENET_CLASSES = 1_281_167, 50_000, 1000
# name -> (config, train questions, val questions, train images, val images, code shape, boundaries qtype,
#          words in the dictionary, question length)
VQA_SIZES = {
    "CLEVR": ("CLEVR_streaming", 699_989, 149_991, 70_000, 15_000, (14, 14, 32), 5, 90, 46),
    "TDIUC": ("TDIUC_streaming", 1_115_299, 538_868, 110_739, 56_698, (7, 7, 32), 12, 10_000, 26),
}
VQA_CHANNELS = {"CLEVR": 1024, "TDIUC": 2048}


def imagenet_table(keep: int | None = 1) -> budget.Budget:
    """run_imagenet_experiment.sh: 100 base-init classes, then 9 increments of 100, buffer 959,665."""
    config = PRESETS["imagenet_paper"]
    model = REMINDModel(classifier_ckpt=None, device="cpu", config=config)
    spec = StreamSpec.class_increments(100, 100, IMAGENET_CLASSES)
    seen = [round(IMAGENET_TRAIN * end / IMAGENET_CLASSES) for end in spec.points]
    evaluated = [IMAGENET_VAL * end // IMAGENET_CLASSES for end in spec.points]
    return stream_budget("ImageNet, the paper's settings (run_imagenet_experiment.sh"
                         + (", --keep_checkpoints all)" if keep is None else ")"), spec, seen, evaluated, model,
                         feature_shape(model, 224), None, keep)


def vqa_table(name: str) -> budget.Budget:
    config_name, train_q, val_q, train_images, val_images, shape, boundaries, words, qlen = VQA_SIZES[name]
    config = get_config(config_name)
    net = build_model(config, words, VQA_CHANNELS[name])
    if config.freeze_embedding:  # with GloVe, as the original
        net.embedding.emb.weight.requires_grad_(False)
    tables = (train_q + val_q) * (qlen * 8 + 8 + 8 + 8)  # tokens, lengths, answers, image rows
    return vqa_budget(f"{name}, {config_name}, REMIND (stream_with_rehearsal, qtype)", "stream_with_rehearsal",
                      train_q, val_q, train_images + val_images, boundaries, shape, 256, VQA_CHANNELS[name],
                      config.num_classes, None, net, False, tables, None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="also write the tables here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    tables = [imagenet_table(), imagenet_table(None), vqa_table("CLEVR"), vqa_table("TDIUC")]
    for table in tables:
        print(table.table() + "\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({t.title: dict(t.rows) | {"disk_bytes": t.disk_bytes}
                                               for t in tables}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
