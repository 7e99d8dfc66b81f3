"""Do the image features carry what the questions ask about? A linear probe of object attributes.

    python -m vqa_experiments.feature_probe --dataset clevr --data_path data/demo-vqa/clevr \\
        --scenes data/demo-vqa/raw/CLEVR_v1.0/scenes --data_order qtype

For synthetic scenes (``make_synthetic_vqa``), whose scene files give every
object's attributes and pixel position: each object's feature vector is the
feature-map cell holding its centre; a multinomial logistic regression per
attribute (colour, shape, size, material) is fitted on the train images'
objects and scored on the val images' objects. Printed next to it: the
majority class (the train objects' most frequent value, scored on val), the
accuracy a probe gets from features that say nothing.

Two feature sources: the float maps (``all_*.npy``, the trunk's output) and,
with ``--data_order``, the maps decoded from the stored PQ codes (what the
streaming models are trained on).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from remind.cli import run_main
from remind.reporting import markdown_table
from vqa_experiments.make_synthetic_vqa import ATTRIBUTES, TRAIN_IMAGE_ID_BASE, VAL_IMAGE_ID_BASE, VALUES, object_cell
from vqa_experiments.vqa_data import VQADataError, feature_paths, load_codes, load_image_map, read_json

SPLITS = ("train", "val")


def image_id(dataset: str, split: str, index: int) -> int:
    """The id the dataset's preprocessing gives the ``index``-th scene of ``split``."""
    if dataset == "clevr":
        from vqa_experiments.clevr.preprocess_clevr import clevr_image_id
        return clevr_image_id(split, index)
    return (TRAIN_IMAGE_ID_BASE if split == "train" else VAL_IMAGE_ID_BASE) + index


def object_table(scenes_dir: Path, dataset: str, id_to_row: dict[int, int], grid: tuple[int, int]) -> dict:
    """Per split: the feature row and cell of every object, and its value index for each attribute."""
    tables = {}
    for split in SPLITS:
        file = scenes_dir / f"CLEVR_{split}_scenes.json"
        data = read_json(file, "scene file")
        render = data.get("info", {}).get("image_size")
        if not isinstance(render, int):
            raise VQADataError(f"{file} does not say its image size (info.image_size); is it a synthetic scene file?")
        rows, cells, labels = [], [], {a: [] for a in ATTRIBUTES}
        for scene in data.get("scenes", []):
            row = id_to_row.get(image_id(dataset, split, int(scene["image_index"])))
            if row is None:
                raise VQADataError(f"scene {scene['image_filename']} of {file} has no features; were the features "
                                   "extracted from this dataset?")
            for obj in scene["objects"]:
                rows.append(row)
                cells.append(object_cell(obj, render, *grid))
                for a in ATTRIBUTES:
                    labels[a].append(VALUES[a].index(obj[a]))
        if not rows:
            raise VQADataError(f"{file} holds no objects")
        tables[split] = {"rows": np.array(rows), "cells": np.array(cells),
                         "labels": {a: np.array(v) for a, v in labels.items()}}
    return tables


def gather(maps, table: dict) -> torch.Tensor:
    """``(objects, C)`` float32: each object's cell of the ``(N, H, W, C)`` maps (numpy or memory-mapped)."""
    order = np.argsort(table["rows"], kind="stable")
    out = np.empty((len(order), maps.shape[3]), dtype=np.float32)
    for k in order:
        cy, cx = table["cells"][k]
        out[k] = maps[table["rows"][k], cy, cx]
    return torch.from_numpy(out)


def fit_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float = 1e-3,
              steps: int = 200) -> torch.nn.Linear:
    """Multinomial logistic regression (L-BFGS, L2 penalty) on standardised inputs."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], num_classes)
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(x), y) + weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss
    optimizer.step(closure)
    return probe


def probe_features(train_x: torch.Tensor, val_x: torch.Tensor, tables: dict) -> dict[str, dict[str, float]]:
    """Per attribute: probe accuracy on val objects and the majority-class accuracy, both in percent."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    results = {}
    for a in ATTRIBUTES:
        train_y = torch.from_numpy(tables["train"]["labels"][a])
        val_y = torch.from_numpy(tables["val"]["labels"][a])
        with torch.no_grad():
            predicted = fit_probe(train_x, train_y, len(VALUES[a]))(val_x).argmax(1)
        majority = int(torch.bincount(train_y, minlength=len(VALUES[a])).argmax())
        results[a] = {"probe": round(100.0 * float((predicted == val_y).float().mean()), 2),
                      "majority": round(100.0 * float((val_y == majority).float().mean()), 2),
                      "classes": len(VALUES[a])}
    return results


def run_probe(dataset: str, data_path, scenes_dir, data_order: str | None = None) -> dict:
    """``{"objects": {split: n}, "features": per-attribute results, "pq_decoded": ... (with data_order)}``."""
    paths = feature_paths(data_path, dataset)
    if not paths["features"].is_file():
        raise VQADataError(f"{paths['features']} not found; run the feature extraction first")
    features = np.load(paths["features"], mmap_mode="r", allow_pickle=False)
    id_to_row = load_image_map(paths["map"])
    tables = object_table(Path(scenes_dir), dataset, id_to_row, features.shape[1:3])
    out = {"objects": {s: int(len(tables[s]["rows"])) for s in SPLITS}, "feature_shape": list(features.shape[1:])}
    out["features"] = probe_features(gather(features, tables["train"]), gather(features, tables["val"]), tables)
    if data_order is not None:
        codes, codec, _ = load_codes(data_path, dataset, data_order)
        decoded = {}
        for split in SPLITS:
            rows = np.unique(tables[split]["rows"])
            maps = codec.decode(torch.from_numpy(np.asarray(codes[rows], dtype=np.int64)).reshape(
                -1, codec.num_codebooks)).reshape(len(rows), *codes.shape[1:3], -1).numpy()
            lookup = {int(r): k for k, r in enumerate(rows)}
            table = dict(tables[split], rows=np.array([lookup[int(r)] for r in tables[split]["rows"]]))
            decoded[split] = gather(maps, table)
        out["pq_decoded"] = probe_features(decoded["train"], decoded["val"], tables)
    return out


def probe_table(results: dict[str, dict]) -> str:
    """Markdown: one row per (dataset, feature source), probe vs majority class for each attribute."""
    header = ["dataset", "features", *(f"{a} probe / majority" for a in ATTRIBUTES)]
    rows = [[dataset, "trunk output" if source == "features" else "decoded PQ codes",
             *(f"{result[source][a]['probe']:.1f} / {result[source][a]['majority']:.1f}" for a in ATTRIBUTES)]
            for dataset, result in results.items() for source in ("features", "pq_decoded") if source in result]
    return markdown_table(header, rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=["clevr", "tdiuc"])
    parser.add_argument("--data_path", required=True, help="work folder holding the features and the map")
    parser.add_argument("--scenes", required=True, help="folder holding CLEVR_{train,val}_scenes.json")
    parser.add_argument("--data_order", default=None, choices=["iid", "qtype"],
                        help="also probe the maps decoded from this order's PQ codes")
    args = parser.parse_args(argv)

    def body():
        result = run_probe(args.dataset, args.data_path, args.scenes, args.data_order)
        print(probe_table({args.dataset: result}))
        print(json.dumps(result))
    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
