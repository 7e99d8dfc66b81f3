"""``make demo-vqa``: the whole streaming-VQA pipeline on generated CLEVR- and TDIUC-format data, on a CPU.

1. Generate scenes and questions (train and val), plus question-free scenes
   that belong to neither: the trunk's training data, standing in for the
   ImageNet on which the real runs' trunks were trained.
2. Train a ResNet-18 trunk on those scenes only (``train_scene_trunk``: which
   colour, shape, size and material each feature-map cell holds), so nothing
   of the VQA data, let alone of the later stream, shapes the features.
3. Per dataset: preprocess, extract ``layer2`` features with that trunk
   through the extraction script's ordinary ``--model/--weights/--model_stage``
   flags, train PQ on the base-init images and store uint8 codes, and probe
   the features (and the decoded codes) linearly for object colour and shape.
4. REMIND, fine-tune and the offline upper bound (``--full``) in each order
   (S-MAC on CLEVR, UpDown on TDIUC), two runs at a time, one thread each.
5. Report per-type accuracy, each type's chance level, the colour and shape
   questions on their own, and Omega, in ``OUT/results.md`` and
   ``OUT/results.json``.

Steps whose outputs exist are skipped, so a rerun only reports (trainer runs
resume); ``--fresh`` starts over.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from remind.checkpoint import atomic_write_text
from remind.metrics import omega
from remind.compute import compute_table, latest_records
from remind.reporting import markdown_table
from vqa_experiments import feature_probe, make_synthetic_vqa, pq_encoding, train_scene_trunk, vqa_trainer
from vqa_experiments.clevr import extract_image_features_clevr, preprocess_clevr
from vqa_experiments.tdiuc import extract_image_features_tdiuc, preprocess_tdiuc
from vqa_experiments.vqa_data import feature_paths, load_lut, load_questions, read_json

# The trunk both datasets' features come from (the real runs: ImageNet ResNet-101 layer3 for CLEVR, ResNet-152
# layer4 for TDIUC). layer2 of a ResNet-18 at 64 px is an 8x8 map of 128 channels: one cell per 16 px of the 128 px
# scenes, so objects seldom share a cell (layer3 is 4x4, where the probe reads shape at ~55%).
TRUNK = {"model": "resnet18", "stage": 2, "image_size": 64, "epochs": 8, "lr": 0.1, "scenes": 1000}
DATASETS = {
    # dataset: (raw folder, preprocess, extract, config)
    "clevr": ("CLEVR_v1.0", preprocess_clevr, extract_image_features_clevr, "CLEVR_demo"),
    "tdiuc": ("TDIUC", preprocess_tdiuc, extract_image_features_tdiuc, "TDIUC_demo"),
}
METHODS = {"remind": "--stream_with_rehearsal", "finetune": "--stream", "offline": "--full"}
# Questions about the colour or the shape of one object, by dataset: (question type, templates or None for all).
LOOKING_QUESTIONS = {
    "clevr": [("query_attribute", None), ("query_attribute", "query_color"), ("query_attribute", "query_shape")],
    "tdiuc": [("color", None), ("object_recognition", None)],
}


def check(code: int, what: str) -> None:
    if code != 0:
        raise SystemExit(f"error: {what} failed (exit code {code}); see the message above")


def trunk_path(data: Path) -> Path:
    return data / "trunk" / f"{TRUNK['model']}_scenes.pth"


def prepare_trunk(raw: Path, data: Path, seed: int) -> Path:
    weights = trunk_path(data)
    if not weights.is_file():
        check(train_scene_trunk.main(["--scenes", str(raw / make_synthetic_vqa.PRETRAIN_DIR), "--out", str(weights),
                                      "--model", TRUNK["model"], "--model_stage", str(TRUNK["stage"]),
                                      "--image_size", str(TRUNK["image_size"]), "--epochs", str(TRUNK["epochs"]),
                                      "--lr", str(TRUNK["lr"]), "--seed", str(seed), "--device", "cpu"]),
              "trunk training")
    return weights


def extraction_argv(dataset_folder: Path, work: Path, *trunk: str) -> list[str]:
    """The extraction command line of the demo's trunk shape; ``trunk``: ``--weights FILE`` or ``--random_init``."""
    return ["--path", str(dataset_folder), "--out", str(work), "--model", TRUNK["model"], *trunk,
            "--model_stage", str(TRUNK["stage"]), "--image_size", str(TRUNK["image_size"]), "--batch_size", "50",
            "--num_workers", "0", "--device", "cpu"]


def prepare_dataset(dataset: str, raw: Path, work: Path, weights: Path, orders: list[str], seed: int) -> dict:
    """Preprocess, extract, encode; returns the probe results."""
    folder, preprocess, extract, _ = DATASETS[dataset]
    if not (work / f"train_{dataset}.npz").is_file():
        check(preprocess.main(["--path", str(raw / folder), "--out", str(work)]), f"{dataset} preprocessing")
    paths = feature_paths(work, dataset)
    made_with = read_json(paths["map"], "image id map").get("weights") if paths["map"].is_file() else None
    if made_with is not None and Path(made_with).resolve() != weights.resolve():
        raise SystemExit(f"error: {work} holds features of another trunk (an older demo?); pass --fresh or run "
                         "make clean-results")
    if not paths["features"].is_file():
        check(extract.main(extraction_argv(raw / folder, work, "--weights", str(weights))),
              f"{dataset} feature extraction")
    for order in orders:
        if not feature_paths(work, dataset, order)["codes"].is_file():
            check(pq_encoding.run(dataset, ["--data_path", str(work), "--data_order", order, "--device", "cpu",
                                            "--seed", str(seed)]), f"{dataset} PQ encoding")
    probe_file = work / "probe.json"
    if not probe_file.is_file():
        result = feature_probe.run_probe(dataset, work, raw / "CLEVR_v1.0" / "scenes", orders[0])
        atomic_write_text(probe_file, json.dumps(result, indent=1))
    return json.loads(probe_file.read_text())


def random_trunk_probe(raw: Path, data: Path) -> dict:
    """The same probe on the CLEVR images through a randomly initialised trunk of the same shape."""
    work = data / "clevr_random_trunk"
    probe_file = work / "probe.json"
    if not probe_file.is_file():
        if not feature_paths(work, "clevr")["features"].is_file():
            check(extract_image_features_clevr.main(extraction_argv(raw / "CLEVR_v1.0", work, "--random_init")),
                  "random-trunk feature extraction")
        result = feature_probe.run_probe("clevr", work, raw / "CLEVR_v1.0" / "scenes")
        atomic_write_text(probe_file, json.dumps(result, indent=1))
    return json.loads(probe_file.read_text())


def trainer_args(dataset: str, method: str, order: str, work: Path, run_dir: Path, seed: int) -> list[str]:
    return ["--config_name", DATASETS[dataset][3], "--expt_name", f"{dataset}_{method}_{order}",
            "--data_path", str(work), "--data_order", order, METHODS[method], "--output_dir", str(run_dir),
            "--device", "cpu", "--seed", str(seed)]


def run_trainers(jobs: list[tuple[str, list[str], Path]], workers: int) -> None:
    """Run ``vqa_trainer`` for each (name, argv, log file) in subprocesses, ``workers`` at a time.

    The VQA models run many small operations per step, which a second thread barely speeds up; two
    single-threaded runs side by side use the 2 cores about twice as well as one run with both.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("OMP_WAIT_POLICY", None)
    pending, running, failed = list(jobs), [], []
    while pending or running:
        while pending and len(running) < workers:
            name, argv, log = pending.pop(0)
            log.parent.mkdir(parents=True, exist_ok=True)
            handle = open(log, "a")  # a rerun appends: the first run's log is kept
            process = subprocess.Popen([sys.executable, "-m", "vqa_experiments.vqa_trainer", *argv], stdout=handle,
                                       stderr=subprocess.STDOUT, env=env)
            running.append((name, process, handle, log, time.time()))
            print(f"started {name} (log: {log})", flush=True)
        time.sleep(0.5)
        for entry in list(running):
            name, process, handle, log, start = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            handle.close()
            if process.returncode != 0:
                failed.append(f"{name} (exit code {process.returncode}; see {log})")
            print(f"finished {name} in {time.time() - start:.0f} s" if process.returncode == 0 else
                  f"FAILED {name}: exit code {process.returncode}; last lines of {log}:\n"
                  + "".join(log.read_text().splitlines(keepends=True)[-5:]), flush=True)
    if failed:
        raise SystemExit("error: " + "; ".join(failed))


# ------------------------------------------------------------------ reporting
def question_templates(raw: Path, dataset: str, split: str) -> dict[int, tuple[str, str]]:
    """question id -> (template, answer), from the generated files (the synthetic data records templates)."""
    if dataset == "clevr":
        data = read_json(raw / "CLEVR_v1.0" / "questions" / f"CLEVR_{split}_questions.json", "CLEVR questions")
        return {int(q["question_index"]): (make_synthetic_vqa.CLEVR_FAMILIES[q["question_family_index"]],
                                           str(q["answer"])) for q in data["questions"]}
    data = read_json(raw / "TDIUC" / "Annotations" / f"mscoco_{split}2014_annotations.json", "TDIUC annotations")
    return {int(a["question_id"]): (a["question_family"], a["answers"][0]["answer"]) for a in data["annotations"]}


class ValQuestions:
    """The val questions of one dataset: type, template and answer of each, and what a guess would score."""

    def __init__(self, raw: Path, work: Path, dataset: str):
        lut = load_lut(work, dataset)
        type_names = {k: name for name, k in lut["qtype2idx"].items()}
        self.answer_names = {k: name for name, k in lut["a2idx"].items()}
        val = load_questions(work, dataset, "val")
        self.type_of = {int(q): type_names[int(t)] for q, t in zip(val.qid, val.qtypeidx)}
        self.template = question_templates(raw, dataset, "val")
        self.template_answers = collections.defaultdict(set)
        for template, answer in question_templates(raw, dataset, "train").values():
            self.template_answers[template].add(answer)

    def select(self, qtype: str, template: str | None = None) -> list[int]:
        return [q for q, t in self.type_of.items() if t == qtype and (template is None or self.template[q][0] ==
                                                                      template)]

    def chance(self, qids: list[int]) -> float:
        """Guessing uniformly among the answers each question's template can have (its train answers):
        knowing what is asked, not looking at the image. Percent, averaged over ``qids``."""
        return 100.0 * sum(1.0 / len(self.template_answers[self.template[q][0]]) for q in qids) / max(len(qids), 1)

    def accuracy(self, predictions: dict, qids: list[int]) -> float:
        right = sum(self.answer_names.get(predictions.get(str(q))) == self.template[q][1] for q in qids)
        return 100.0 * right / max(len(qids), 1)


def dataset_report(dataset: str, raw: Path, work: Path, runs: dict[str, Path]) -> dict:
    """Final accuracies, chance levels, the colour/shape questions and Omega of one dataset's three runs."""
    summaries = {m: json.loads((d / "summary.json").read_text()) for m, d in runs.items()}
    val = ValQuestions(raw, work, dataset)
    types = summaries["offline"]["question_types"]
    final = summaries["offline"]["boundaries"][-1]
    predictions = {m: json.loads((d / f"results_boundary_{final}.json").read_text()) for m, d in runs.items()}
    looking = {}
    for qtype, template in LOOKING_QUESTIONS[dataset]:
        qids = val.select(qtype, template)
        looking[qtype if template is None else f"{qtype}: {template}"] = {
            "questions": len(qids), "chance": round(val.chance(qids), 2),
            **{m: round(val.accuracy(predictions[m], qids), 2) for m in runs}}
    omegas = {m: {metric: round(omega(summaries[m][metric], summaries["offline"][metric]), 4)
                  for metric in ("mean_per_type", "overall")} for m in ("remind", "finetune")}
    return {"chance": {t: round(val.chance(val.select(t)), 2) for t in types}, "looking": looking, "omega": omegas,
            "final": {m: {"overall": s["overall"][-1], "mean_per_type": s["mean_per_type"][-1],
                          "per_type": {t: s["per_type"][t][-1] for t in types}} for m, s in summaries.items()}}


def final_table(report: dict) -> str:
    """Per-type final accuracy of each method next to the type's chance level."""
    types = list(report["chance"])
    rows = [[method, f"{final['mean_per_type']:.2f}", f"{final['overall']:.2f}",
             *(f"{final['per_type'][t]:.2f}" for t in types)] for method, final in report["final"].items()]
    rows.append(["chance", "", "", *(f"{report['chance'][t]:.2f}" for t in types)])
    return markdown_table(["method", "mean per type", "overall", *types], rows)


def looking_table(report: dict) -> str:
    methods = list(report["final"])
    rows = [[name, str(row["questions"]), f"{row['chance']:.2f}", *(f"{row[m]:.2f}" for m in methods)]
            for name, row in report["looking"].items()]
    return markdown_table(["questions", "n", "chance", *methods], rows)


def omega_table(reports: dict) -> str:
    rows = [[dataset, order, method, f"{report['omega'][method]['mean_per_type']:.3f}",
             f"{report['omega'][method]['overall']:.3f}", f"{report['final'][method]['mean_per_type']:.2f}",
             f"{report['final']['offline']['mean_per_type']:.2f}"]
            for (dataset, order), report in reports.items() for method in ("remind", "finetune")]
    return markdown_table(["dataset", "order", "method", "Omega (mean per type)", "Omega (overall)",
                           "final mean per type", "offline final mean per type"], rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/demo-vqa")
    parser.add_argument("--data", default="data/demo-vqa", help="generated datasets and their work folders")
    parser.add_argument("--data_order", nargs="+", default=["qtype"], choices=["qtype", "iid"],
                        help="stream orders to run (the paper reports both; the demo's default is qtype)")
    # 800 x 8 = 6,400 training questions per dataset: at 400 images S-MAC did not learn to read colours (45-50% on
    # query_attribute) and UpDown read shapes at 58% (chance 33%).
    parser.add_argument("--num_train_images", type=int, default=800)
    parser.add_argument("--num_val_images", type=int, default=200)
    parser.add_argument("--questions_per_image", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="trainer runs side by side (one thread each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="delete --data and --out first")
    args = parser.parse_args(argv)
    if args.workers < 1:
        raise SystemExit(f"error: --workers {args.workers} must be at least 1")
    data, out = Path(args.data), Path(args.out)
    if args.fresh:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    start = time.time()
    raw = data / "raw"
    if not (raw / "CLEVR_v1.0").exists():
        make_synthetic_vqa.generate(raw, num_train_images=args.num_train_images, num_val_images=args.num_val_images,
                                    questions_per_image=args.questions_per_image, image_size=128, seed=args.seed)
    if not (raw / make_synthetic_vqa.PRETRAIN_DIR).exists():
        make_synthetic_vqa.generate_scenes(raw, TRUNK["scenes"], image_size=128, seed=args.seed)
    weights = prepare_trunk(raw, data, args.seed)
    probes = {d: prepare_dataset(d, raw, data / d, weights, args.data_order, args.seed) for d in DATASETS}
    probes["clevr, random trunk"] = random_trunk_probe(raw, data)
    jobs, runs = [], {}
    for order in args.data_order:
        for method in ("offline", "remind", "finetune"):  # the longest runs first
            for dataset in DATASETS:
                run_dir = out / (dataset if order == "qtype" else f"{dataset}_{order}") / method
                runs.setdefault((dataset, order), {})[method] = run_dir
                jobs.append((f"{dataset} {method} ({order})", trainer_args(dataset, method, order, data / dataset,
                                                                         run_dir, args.seed), run_dir / "train.out"))
    run_trainers(jobs, args.workers)
    reports = {key: dataset_report(key[0], raw, data / key[0], methods) for key, methods in runs.items()}

    text = [f"# make demo-vqa ({', '.join(args.data_order)} order; {args.num_train_images} train / "
            f"{args.num_val_images} val images, {args.questions_per_image} questions each)\n",
            f"Trunk: {TRUNK['model']} trained on {TRUNK['scenes']} question-free scenes "
            f"({TRUNK['image_size']} px, {TRUNK['epochs']} epochs), features from layer{TRUNK['stage']}.\n",
            "### Linear probe: object attributes read from the feature-map cell at the object's centre "
            "(val objects; probe / majority class, %)\n", feature_probe.probe_table(probes), ""]
    for (dataset, order), report in reports.items():
        text += [f"### {dataset} ({order} order): final accuracy per question type (%)\n", final_table(report), "",
                 "Colour and shape questions, final accuracy (%):\n", looking_table(report), "",
                 "Compute (whole run; examples = questions; learning s = replay + offline training; runs two at a "
                 "time):\n", compute_table(latest_records(runs[(dataset, order)])), ""]
        for method in METHODS:
            summary = json.loads((runs[(dataset, order)][method] / "summary.json").read_text())
            text += [f"<details><summary>{dataset} {method}: every evaluation</summary>\n",
                     vqa_trainer.per_type_table(summary), "\n</details>\n"]
    text += ["### Omega: mean over evaluation points of learner / offline accuracy\n", omega_table(reports), "",
             "Omega is normalised on mean-per-type accuracy, as the paper does for VQA: real TDIUC's types are far "
             "from equally frequent, and half of the CLEVR-format questions here are attribute queries, so overall "
             "accuracy would let the frequent types hide forgetting of the rare ones (both are in results.json). "
             "Chance: guessing uniformly among the answers a question's template can have (its train answers), "
             "i.e. knowing what is asked but not looking."]
    markdown = "\n".join(text)
    atomic_write_text(out / "results.md", markdown + "\n")
    atomic_write_text(out / "results.json", json.dumps(
        {"trunk": TRUNK, "probe": probes, "seconds": round(time.time() - start),
         "datasets": {f"{d}_{o}": r for (d, o), r in reports.items()}}, indent=1))
    print("\n" + markdown)
    print(f"\ndemo-vqa finished in {time.time() - start:.0f} s; tables in {out / 'results.md'} and "
          f"{out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
