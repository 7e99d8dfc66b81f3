"""Omega of streaming runs against the offline baseline, with a results table and one plot.

Omega (Hayes et al.) is the mean over evaluation points of a learner's accuracy
divided by the offline baseline's at the same point. Each folder is a
``--save_dir`` of ``imagenet_experiment.py``; its latest
``accuracies_min_trained_*_max_trained_*.json`` is read.

    python -m image_classification_experiments.compute_omega --offline results/offline \
        --runs remind=results/remind finetune=results/finetune --out results/omega

writes ``OUT/omega.json`` (run name -> {"top1", "top5", "base_top1", "base_top5",
"non_base_top1", "non_base_top5"}; top1/top5 are over all seen classes),
``OUT/results.md`` (with each run's compute record, when its folder has
``compute.json``) and ``OUT/accuracy_curves.png`` (every run and the offline one).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from remind import reporting
from remind.checkpoint import atomic_write_text
from remind.compute import compute_table, latest_records
from remind.cli import run_main
from remind.metrics import omega

# omega.json key -> accuracy-file key
OMEGA_KEYS = {"top1": "seen_classes_top1", "top5": "seen_classes_top5",
              "base_top1": "base_classes_top1", "base_top5": "base_classes_top5",
              "non_base_top1": "non_base_classes_top1", "non_base_top5": "non_base_classes_top5"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--offline", required=True, help="results folder of the offline run (--offline_epochs N)")
    p.add_argument("--runs", required=True, nargs="+", metavar="NAME=DIR",
                   help="learner results folders, e.g. remind=results/remind finetune=results/finetune")
    p.add_argument("--out", required=True, help="folder for omega.json, results.md and accuracy_curves.png")
    return p


def accuracy_files(folder: Path) -> dict[int, Path]:
    """``max_trained`` -> accuracy JSON in ``folder``."""
    if not folder.is_dir():
        raise ValueError(f"results folder {folder} does not exist")
    files = {int(m.group(1)): f for f in folder.glob("accuracies_min_trained_*_max_trained_*.json")
             if (m := re.fullmatch(r"accuracies_min_trained_\d+_max_trained_(\d+)\.json", f.name))}
    if not files:
        raise ValueError(f"no accuracies_min_trained_*_max_trained_*.json in {folder}; run imagenet_experiment.py "
                         "with --save_dir there first")
    return files


def load_latest(folder: Path) -> tuple[dict, list[int]]:
    """The latest accuracies of a run, and the classes seen at each of its evaluations."""
    files = accuracy_files(folder)
    try:
        accuracies = json.loads(files[max(files)].read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {files[max(files)]}: {exc}") from None
    if not isinstance(accuracies, dict) or not isinstance(accuracies.get("seen_classes_top1"), list):
        raise ValueError(f"{files[max(files)]} has no seen_classes_top1 list")
    for key, values in accuracies.items():
        if key in OMEGA_KEYS.values() and (not isinstance(values, list) or not all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values)):
            raise ValueError(f"{files[max(files)]}: {key} must be a list of numbers (accuracies in percent); "
                             "re-create the file with imagenet_experiment.py")
        bad = [v for v in values if v is not None and not math.isfinite(v)] if key in OMEGA_KEYS.values() else []
        if bad:  # json reads NaN and Infinity; Omega would be NaN without a word
            raise ValueError(f"{files[max(files)]}: {key} holds {bad[0]}, not a finite number (accuracies in "
                             "percent); re-create the file with imagenet_experiment.py")
    points = sorted(files)
    if len(points) != len(accuracies["seen_classes_top1"]):  # e.g. a resumed run: count evaluations instead
        points = list(range(1, len(accuracies["seen_classes_top1"]) + 1))
    return accuracies, points


def aligned(values: list, length: int) -> list:
    """Non-base lists have no base-init entry: pad them in front so index t is evaluation t."""
    return [None] * (length - len(values)) + list(values)


def run_omegas(learner: dict, offline: dict) -> dict[str, float]:
    length = len(offline["seen_classes_top1"])
    result = {}
    for name, key in OMEGA_KEYS.items():
        if key not in learner or key not in offline:
            raise ValueError(f"accuracy file lacks {key}")
        if len(learner["seen_classes_top1"]) != length:
            raise ValueError(f"learner has {len(learner['seen_classes_top1'])} evaluations, offline {length}")
        result[name] = omega(aligned(learner[key], length), aligned(offline[key], length))
    return result


def results_markdown(omegas: dict, runs: dict, classes: list[int], costs: dict | None = None) -> str:
    header = "| run | " + " | ".join(f"Omega {k.replace('_', ' ')}" for k in OMEGA_KEYS) + " |"
    rows = [header, "|" + "---|" * (len(OMEGA_KEYS) + 1)]
    rows += [f"| {name} | " + " | ".join(f"{values[k]:.3f}" for k in OMEGA_KEYS) + " |"
             for name, values in omegas.items()]
    return ("## Omega (learner / offline, mean over evaluations)\n\n" + "\n".join(rows)
            + "\n\n## Seen-class accuracy (%)\n\n" + reporting.format_table(runs, classes) + "\n"
            + (f"\n## Compute (whole run; learning s = data + G + replay + offline training)\n\n"
               f"{compute_table(costs)}\n" if costs else ""))


def compute(offline_dir: str, run_dirs: dict[str, str], out: str) -> dict:
    """Writes omega.json, results.md and accuracy_curves.png in ``out``; returns the Omega dict."""
    offline, classes = load_latest(Path(offline_dir))
    runs = {name: load_latest(Path(folder))[0] for name, folder in run_dirs.items()}
    omegas = {}
    for name, accuracies in runs.items():
        try:
            omegas[name] = run_omegas(accuracies, offline)
        except ValueError as exc:
            raise ValueError(f"run {name} ({run_dirs[name]}) against {offline_dir}: {exc}") from None
    out_dir = Path(out)
    refuse_run_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    all_runs = {**runs, "offline": offline}
    atomic_write_text(out_dir / "omega.json", json.dumps(omegas, indent=2))
    # what each run spent, from its compute.json (runs written before it existed have none)
    costs = latest_records({**run_dirs, "offline": offline_dir})
    atomic_write_text(out_dir / "results.md", results_markdown(omegas, all_runs, classes, costs))
    reporting.plot_accuracies(all_runs, classes, out_dir / "accuracy_curves.png")
    return omegas


def refuse_run_folder(out_dir: Path) -> None:
    """Refuse an --out that holds a run's own results: its accuracy_curves.png (and results.md) have the same
    names as this report's and would be overwritten. A folder of an earlier report is rewritten."""
    if out_dir.is_dir() and any(out_dir.glob("accuracies_min_trained_*_max_trained_*.json")):
        raise ValueError(f"--out {out_dir} holds a run's results (accuracies_min_trained_*.json), whose "
                         "accuracy_curves.png this report would overwrite; choose another --out, e.g. "
                         "results/omega")


def parse_runs(items: list[str]) -> dict[str, str]:
    runs = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--runs entry {item!r} is not NAME=DIR")
        if name in runs or name == "offline":
            raise ValueError(f"run name {name!r} is used twice or is reserved ('offline')")
        runs[name] = folder
    return runs


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)

    def body():
        omegas = compute(args.offline, parse_runs(args.runs), args.out)
        print((Path(args.out) / "results.md").read_text())
        print(f"wrote {Path(args.out) / 'omega.json'} ({', '.join(omegas)})")
    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
