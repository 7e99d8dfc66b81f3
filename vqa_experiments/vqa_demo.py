"""``make demo-vqa``: the whole streaming-VQA pipeline on generated CLEVR- and TDIUC-format data, on a CPU.

Generate scenes and questions -> preprocess -> extract ResNet features
(ResNet-101 ``layer3`` for CLEVR, ResNet-152 ``layer4`` for TDIUC; random
init, since no pretrained weights can be downloaded) -> train PQ on the base-init
images and store uint8 codes -> REMIND and fine-tune in ``qtype`` order (S-MAC
on CLEVR, UpDown on TDIUC). Writes ``results/demo-vqa/{clevr,tdiuc}/{remind,finetune}/``
and prints per-type tables. Steps whose outputs exist are skipped, so a rerun
only prints (trainer runs resume); ``--fresh`` starts over.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from vqa_experiments import make_synthetic_vqa, pq_encoding, vqa_trainer
from vqa_experiments.clevr import extract_image_features_clevr, preprocess_clevr
from vqa_experiments.tdiuc import extract_image_features_tdiuc, preprocess_tdiuc
from remind.checkpoint import atomic_write_text
from vqa_experiments.vqa_data import feature_paths

DATASETS = {
    # dataset: (raw folder, preprocess, extract, config, extraction image size)
    "clevr": ("CLEVR_v1.0", preprocess_clevr, extract_image_features_clevr, "CLEVR_demo", 64),
    "tdiuc": ("TDIUC", preprocess_tdiuc, extract_image_features_tdiuc, "TDIUC_demo", 96),
}
METHODS = {"remind": "--stream_with_rehearsal", "finetune": "--stream"}


def check(code: int, what: str) -> None:
    if code != 0:
        raise SystemExit(f"error: {what} failed (exit code {code}); see the message above")


def run_dataset(dataset: str, raw: Path, work: Path, out: Path, order: str, seed: int) -> dict:
    folder, preprocess, extract, config, image_size = DATASETS[dataset]
    if not (work / f"train_{dataset}.npz").is_file():
        check(preprocess.main(["--path", str(raw / folder), "--out", str(work)]), f"{dataset} preprocessing")
    paths = feature_paths(work, dataset, order)
    if not paths["features"].is_file():
        check(extract.main(["--path", str(raw / folder), "--out", str(work), "--random_init", "--image_size",
                            str(image_size), "--batch_size", "50", "--num_workers", "0", "--device", "cpu"]),
              f"{dataset} feature extraction")
    if not paths["codes"].is_file():
        check(pq_encoding.run(dataset, ["--data_path", str(work), "--data_order", order, "--device", "cpu",
                                        "--seed", str(seed)]), f"{dataset} PQ encoding")
    summaries = {}
    for method, flag in METHODS.items():
        run_dir = out / dataset / method
        check(vqa_trainer.main(["--config_name", config, "--expt_name", f"{dataset}_{method}_{order}",
                                "--data_path", str(work), "--data_order", order, flag, "--output_dir",
                                str(run_dir), "--device", "cpu", "--seed", str(seed)]), f"{dataset} {method}")
        summaries[method] = json.loads((run_dir / "summary.json").read_text())
    return summaries


def comparison_table(results: dict) -> str:
    lines = ["| dataset | method | final overall | final mean per type |", "|---|---|---|---|"]
    for dataset, summaries in results.items():
        for method, summary in summaries.items():
            lines.append(f"| {dataset} | {method} | {summary['overall'][-1]:.2f} | {summary['mean_per_type'][-1]:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/demo-vqa")
    parser.add_argument("--data", default="data/demo-vqa", help="generated datasets and their work folders")
    parser.add_argument("--data_order", default="qtype", choices=["qtype", "iid"])
    parser.add_argument("--num_train_images", type=int, default=400)
    parser.add_argument("--num_val_images", type=int, default=100)
    parser.add_argument("--questions_per_image", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="delete --data and --out first")
    args = parser.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if args.fresh:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    start = time.time()
    raw = data / "raw"
    if not (raw / "CLEVR_v1.0").exists():
        make_synthetic_vqa.generate(raw, num_train_images=args.num_train_images, num_val_images=args.num_val_images,
                                    questions_per_image=args.questions_per_image, image_size=128, seed=args.seed)
    results = {}
    for dataset in DATASETS:
        results[dataset] = run_dataset(dataset, raw, data / dataset, out, args.data_order, args.seed)
    report = []
    for dataset, summaries in results.items():
        for method, summary in summaries.items():
            report.append(f"### {dataset} {method} ({args.data_order} order)\n\n{vqa_trainer.per_type_table(summary)}\n")
    report.append(comparison_table(results))
    text = "\n".join(report)
    atomic_write_text(out / "results.md", text + "\n")
    print("\n" + text)
    print(f"\ndemo-vqa finished in {time.time() - start:.0f} s; tables in {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
