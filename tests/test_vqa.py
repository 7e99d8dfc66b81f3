"""The streaming-VQA pipeline on generated data: preprocessing, stream orders, PQ codes on disk, the
trainer's three modes, buffer eviction, resume, bad inputs, the models and the metric.

One tiny dataset (synthetic CLEVR + TDIUC, 64 px, ResNet-18 features, 8 codebooks of 16 centroids) is
built once for the module; every trainer run uses shrunken models and one base-init epoch. Expected
values are recomputed here from the raw JSON files, not read back from the code under test.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from remind.buffer import ReplayBuffer
from remind.checkpoint import load_state
from remind.compute import read_records
from remind.pq import PQCodec
from vqa_experiments import make_synthetic_vqa, metric, vqa_data, vqa_trainer
from vqa_experiments.clevr import extract_image_features_clevr, pq_encoding_clevr, preprocess_clevr
from vqa_experiments.configs import get_config
from vqa_experiments.tdiuc import extract_image_features_tdiuc, pq_encoding_tdiuc, preprocess_tdiuc
from vqa_experiments.vqa_data import QuestionRecord, Questions, VQADataError, stream_order, write_question_files
from vqa_experiments.vqa_models import build_model, load_word_vectors
from helpers import CLEVR_TYPE, TDIUC_TYPES

REPO = Path(__file__).resolve().parents[1]
TRAIN_IMAGES, VAL_IMAGES, QPI, IMAGE_SIZE = 40, 12, 5, 64
CODEBOOKS, CODEBOOK_SIZE = 8, 16
TINY = {"clevr": ["--config_name", "CLEVR_demo", "--set", "mac_max_step=2", "--set", "mac_dim=16",
                  "--set", "emb_dim=16"],
        "tdiuc": ["--config_name", "TDIUC_demo", "--set", "emb_dim=16", "--set", "lstm_out=16",
                  "--set", "num_hidden=16", "--set", "attention_hidden=16"]}
COMMON = ["--set", "max_epochs=1", "--set", "num_rehearsal_samples=8", "--device", "cpu"]
FEATURE_FILE = {"clevr": "all_clevr_resnet_largestage3", "tdiuc": "all_tdiuc_resnet"}
MAP_FILE = {"clevr": "map_clevr_resnet_largestage3.json", "tdiuc": "map_tdiuc_resnet.json"}


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def quiet_and_single_threaded():
    """One torch thread (tiny models are many times faster so on a shared 2-core machine, and runs are
    bitwise reproducible), and no ``git rev-parse`` from the trainer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vqa_trainer.reporting, "git_commit", lambda: "test")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("vqa_pipeline")
    raw, clevr, tdiuc = root / "raw", root / "clevr", root / "tdiuc"
    assert make_synthetic_vqa.main(["--out", str(raw), "--num_train_images", str(TRAIN_IMAGES),
                                    "--num_val_images", str(VAL_IMAGES), "--questions_per_image", str(QPI),
                                    "--image_size", str(IMAGE_SIZE), "--seed", "0"]) == 0
    assert preprocess_clevr.main(["--path", str(raw / "CLEVR_v1.0"), "--out", str(clevr)]) == 0
    assert preprocess_tdiuc.main(["--path", str(raw / "TDIUC"), "--out", str(tdiuc)]) == 0
    features = ["--random_init", "--image_size", str(IMAGE_SIZE), "--batch_size", "32", "--num_workers", "0",
                "--model", "resnet18", "--device", "cpu"]
    assert extract_image_features_clevr.main(["--path", str(raw / "CLEVR_v1.0"), "--out", str(clevr)] + features) == 0
    assert extract_image_features_tdiuc.main(["--path", str(raw / "TDIUC"), "--out", str(tdiuc)] + features) == 0
    pq = ["--codebook_size", str(CODEBOOK_SIZE), "--num_codebooks", str(CODEBOOKS), "--device", "cpu"]
    for order in ("qtype", "iid"):
        assert pq_encoding_clevr.main(["--data_path", str(clevr), "--data_order", order] + pq) == 0
        assert pq_encoding_tdiuc.main(["--data_path", str(tdiuc), "--data_order", order] + pq) == 0
    return SimpleNamespace(root=root, raw=raw, work={"clevr": clevr, "tdiuc": tdiuc})


def trainer_argv(data, dataset: str, order: str, mode: str, out: Path, *extra: str) -> list[str]:
    return ["--expt_name", "t", "--data_path", str(data.work[dataset]), "--data_order", order, f"--{mode}",
            "--output_dir", str(out), *TINY[dataset], *COMMON, *extra]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """Run the trainer once per distinct command and return its output folder (runs are shared by tests)."""
    cache: dict[tuple, Path] = {}

    def run(dataset: str, order: str, mode: str, *extra: str) -> Path:
        key = (dataset, order, mode, extra)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"{dataset}_{order}_{mode}") / "out"
            assert vqa_trainer.main(trainer_argv(data, dataset, order, mode, out, *extra)) == 0
            cache[key] = out
        return cache[key]

    return run


def load_table(data, dataset: str, split: str) -> dict[str, np.ndarray]:
    with np.load(data.work[dataset] / f"{split}_{dataset}.npz") as table:
        return {k: table[k] for k in table.files}


def load_json(path: Path):
    return json.loads(Path(path).read_text())


def clevr_json(data, split: str) -> list[dict]:
    return load_json(data.raw / "CLEVR_v1.0" / "questions" / f"CLEVR_{split}_questions.json")["questions"]


def num_valid_classes(data, dataset: str) -> int:
    return min(get_config(TINY[dataset][1]).num_classes,
               len(load_json(data.work[dataset] / f"LUT_{dataset}.json")["a2idx"]))


def order_of(data, dataset: str, order: str):
    train = vqa_data.load_questions(data.work[dataset], dataset, "train")
    names = list(load_json(data.work[dataset] / f"LUT_{dataset}.json")["qtype2idx"])
    return train, stream_order(train, order, num_valid_classes(data, dataset), names)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def expect_error(capsys, rc: int, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


# ------------------------------------------------------------------------------- 1. preprocessing
@pytest.mark.parametrize("dataset", ["clevr", "tdiuc"])
def test_question_tables_have_consistent_fields(data, dataset):
    dictionary = load_json(data.work[dataset] / f"dictionary_{dataset}.json")["idx2word"]
    lut = load_json(data.work[dataset] / f"LUT_{dataset}.json")
    max_len = vqa_data.MAX_QUESTION_LENGTH[dataset]
    for split, images in (("train", TRAIN_IMAGES), ("val", VAL_IMAGES)):
        t = load_table(data, dataset, split)
        n = images * QPI
        assert sorted(t) == sorted(vqa_data.QUESTION_FIELDS)
        for field in ("qid", "iid"):
            assert t[field].shape == (n,) and t[field].dtype == np.int64
        for field in ("qlen", "aidx", "atypeidx", "qtypeidx"):
            assert t[field].shape == (n,) and t[field].dtype == np.int32, field
        assert t["q"].shape == t["a"].shape == (n,) and t["q"].dtype.kind == t["a"].dtype.kind == "U"
        assert t["tokens"].shape == (n, max_len) and t["tokens"].dtype == np.int32
        assert t["ten_aidx"].shape == (n, 10) and t["ten_aidx"].dtype == np.int32
        assert len(set(t["qid"].tolist())) == n
        assert np.all(t["qlen"] >= 1) and np.all(t["qlen"] <= max_len)
        for row in range(n):
            assert np.all(t["tokens"][row, t["qlen"][row]:] == len(dictionary))  # padding index = ntoken
            assert np.all(t["tokens"][row, :t["qlen"][row]] < len(dictionary))
        np.testing.assert_array_equal(t["aidx"], t["ten_aidx"][:, 0])
        np.testing.assert_array_equal(t["ten_aidx"], np.repeat(t["aidx"][:, None], 10, axis=1))  # one answer each
        np.testing.assert_array_equal(t["aidx"], [lut["a2idx"].get(a, -1) for a in t["a"]])
        assert np.all(t["atypeidx"] == 0)
        if split == "train":
            assert np.all(t["aidx"] >= 0)  # every train answer is in the LUT built from train


def test_clevr_types_ids_and_answers_from_the_json(data):
    lut = load_json(data.work["clevr"] / "LUT_clevr.json")
    assert set(lut["qtype2idx"]) == set(CLEVR_TYPE.values())
    for split, prefix in (("train", "1"), ("val", "2")):
        t = load_table(data, "clevr", split)
        questions = clevr_json(data, split)
        assert len(questions) == len(t["qid"])
        for row, q in enumerate(questions):
            assert t["qid"][row] == q["question_index"]
            assert t["iid"][row] == int(prefix + str(q["image_index"]))
            assert t["q"][row] == q["question"] and t["a"][row] == q["answer"]
            assert t["qtypeidx"][row] == lut["qtype2idx"][CLEVR_TYPE[q["program"][-1]["function"]]], q
        assert len(set(t["qtypeidx"].tolist())) == 5


@pytest.mark.parametrize("dataset", ["clevr", "tdiuc"])
def test_lookup_tables_are_ordered_by_frequency(data, dataset):
    t = load_table(data, dataset, "train")
    lut = load_json(data.work[dataset] / f"LUT_{dataset}.json")
    for key, values in (("a2idx", t["a"].tolist()), ("qtype2idx", None)):
        table = lut[key]
        assert sorted(table.values()) == list(range(len(table)))
        if values is None:
            names = {v: k for k, v in table.items()}
            values = [names[int(i)] for i in t["qtypeidx"]]
        counts = Counter(values)
        assert set(table) == set(counts)
        by_index = sorted(table, key=table.get)
        assert [counts[v] for v in by_index] == sorted(counts.values(), reverse=True), (key, counts)
    answers = Counter(t["a"].tolist())
    assert lut["a2idx"][answers.most_common(1)[0][0]] == 0


@pytest.mark.parametrize("dataset", ["clevr", "tdiuc"])
def test_tokens_decode_to_the_question_words(data, dataset):
    words = load_json(data.work[dataset] / f"dictionary_{dataset}.json")["idx2word"]
    assert words[0] == "<unk>" and len(set(words)) == len(words)
    index = {w: i for i, w in enumerate(words)}
    train_words = set()
    for split in ("train", "val"):
        t = load_table(data, dataset, split)
        for row in range(len(t["qid"])):
            expected = t["q"][row].lower().replace("?", "").split()
            ids = t["tokens"][row, :t["qlen"][row]].tolist()
            if split == "train":
                train_words.update(expected)
                assert [words[i] for i in ids] == expected
            else:
                assert ids == [index.get(w, 0) for w in expected]
    assert set(words[1:]) == train_words  # the dictionary is built from training questions only


def test_val_words_and_answers_missing_from_train(tmp_path):
    train = [QuestionRecord(1, 10, "What color is the cube?", ["blue"], "query"),
             QuestionRecord(2, 10, "Is it red?", ["red"], "exist"),
             QuestionRecord(3, 11, "What color is the ball's top?", ["red"], "query"),
             QuestionRecord(4, 11, "Is it blue?", ["blue"], "exist"),
             QuestionRecord(5, 12, "What shape, then?", ["cube"], "query")]
    val = [QuestionRecord(6, 20, "What colour is the sphere?", ["green"], "query"),
           QuestionRecord(7, 20, "Is it red?", ["red"], "exist")]
    summary = write_question_files(tmp_path, "clevr", {"train": train, "val": val})
    assert summary["num_answers"] == 3 and summary["num_val_questions"] == 2
    lut = load_json(tmp_path / "LUT_clevr.json")
    assert lut["a2idx"] == {"blue": 0, "red": 1, "cube": 2}  # tie of blue and red: first seen first
    assert lut["qtype2idx"] == {"query": 0, "exist": 1}
    words = load_json(tmp_path / "dictionary_clevr.json")["idx2word"]
    assert words == ["<unk>", "what", "color", "is", "the", "cube", "it", "red", "ball", "'s", "top", "blue",
                     "shape", "then"]
    v = load_table(SimpleNamespace(work={"clevr": tmp_path}), "clevr", "val")
    assert v["qlen"].tolist() == [5, 3]
    assert v["tokens"][0, :5].tolist() == [1, 0, 3, 4, 0]  # "colour" and "sphere" are <unk>
    assert v["tokens"][1, :3].tolist() == [3, 6, 7]
    assert np.all(v["tokens"][0, 5:] == len(words))
    assert v["aidx"].tolist() == [-1, 1] and v["ten_aidx"][0].tolist() == [-1] * 10
    t = load_table(SimpleNamespace(work={"clevr": tmp_path}), "clevr", "train")
    assert t["tokens"][2, :7].tolist() == [1, 2, 3, 4, 8, 9, 10]
    with pytest.raises(VQADataError, match="absent from train"):
        write_question_files(tmp_path / "again", "clevr",
                             {"train": train, "val": [QuestionRecord(8, 20, "Is it red?", ["red"], "count")]})


def test_tdiuc_types_and_answers_match_the_annotations(data):
    lut = load_json(data.work["tdiuc"] / "LUT_tdiuc.json")
    assert set(lut["qtype2idx"]) == TDIUC_TYPES
    for split in ("train", "val"):
        base = data.raw / "TDIUC"
        questions = load_json(base / "Questions" / f"OpenEnded_mscoco_{split}2014_questions.json")["questions"]
        annotations = load_json(base / "Annotations" / f"mscoco_{split}2014_annotations.json")["annotations"]
        text = {q["question_id"]: q["question"] for q in questions}
        t = load_table(data, "tdiuc", split)
        assert len(annotations) == len(t["qid"])
        for row, ann in enumerate(annotations):
            assert t["qid"][row] == ann["question_id"] and t["iid"][row] == ann["image_id"]
            assert t["q"][row] == text[ann["question_id"]]
            assert t["a"][row] == ann["answers"][0]["answer"]
            assert t["qtypeidx"][row] == lut["qtype2idx"][ann["question_type"]]
        assert len(set(t["qtypeidx"].tolist())) == 7


# ------------------------------------------------------------------------------- 2. stream orders
def hand_table(aidx, qtypeidx) -> Questions:
    n = len(aidx)
    return Questions(qid=np.arange(n), iid=np.arange(n) // 2, q=np.array(["q"] * n), a=np.array(["a"] * n),
                     tokens=np.zeros((n, 3), np.int32), qlen=np.ones(n, np.int32),
                     aidx=np.array(aidx, np.int32), ten_aidx=np.repeat(np.array(aidx, np.int32)[:, None], 10, 1),
                     atypeidx=np.zeros(n, np.int32), qtypeidx=np.array(qtypeidx, np.int32))


@pytest.mark.parametrize("dataset", ["clevr", "tdiuc"])
def test_iid_order_is_the_seeded_shuffle(data, dataset):
    train, order = order_of(data, dataset, "iid")
    rows = list(range(len(train)))
    random.Random(666).shuffle(rows)
    assert order.rows.tolist() == rows
    n = len(rows)
    assert order.boundaries == [int(n * k / 10) for k in range(1, 11)]
    assert order.segment_names == [f"{k}%" for k in range(10, 101, 10)]


def test_iid_order_drops_answers_past_num_classes():
    aidx = [0, 3, 1, 5, 2, -1, 4, 0, 1, 3, 2, 6, 0]
    table = hand_table(aidx, [0] * len(aidx))
    order = stream_order(table, "iid", 4, ["only"])
    valid = [r for r, a in enumerate(aidx) if 0 <= a < 4]
    random.Random(666).shuffle(valid)
    assert order.rows.tolist() == valid
    assert order.boundaries == [int(len(valid) * k / 10) for k in range(1, 11)]
    with pytest.raises(VQADataError, match="num_classes"):
        stream_order(hand_table([5, 6], [0, 0]), "iid", 4, ["only"])
    with pytest.raises(VQADataError, match="data_order"):
        stream_order(table, "random", 4, ["only"])


def check_qtype_order(table: Questions, order, num_classes: int, names: list[str]):
    valid = [r for r in range(len(table)) if 0 <= table.aidx[r] < num_classes]
    rows = order.rows.tolist()
    assert sorted(rows) == valid  # every valid question exactly once
    kinds = [int(table.qtypeidx[r]) for r in rows]
    runs = [kinds[0]] + [b for a, b in zip(kinds, kinds[1:]) if a != b]
    assert len(runs) == len(set(runs)) == len({int(table.qtypeidx[r]) for r in valid})  # contiguous types
    for t in runs:
        assert [r for r in rows if table.qtypeidx[r] == t] == [r for r in valid if table.qtypeidx[r] == t]
    ends = [i + 1 for i in range(len(kinds) - 1) if kinds[i] != kinds[i + 1]] + [len(kinds)]
    assert order.boundaries == ends
    assert order.segment_names == [names[t] for t in runs]
    # the original's type order: sort by keymap[type], keymap = the present types shuffled by Random(666)
    present = sorted(set(kinds))
    keymap = list(present)
    random.Random(666).shuffle(keymap)
    assert runs == sorted(present, key=lambda t: keymap[present.index(t)])


@pytest.mark.parametrize("dataset", ["clevr", "tdiuc"])
def test_qtype_order_groups_types(data, dataset):
    train, order = order_of(data, dataset, "qtype")
    names = list(load_json(data.work[dataset] / f"LUT_{dataset}.json")["qtype2idx"])
    check_qtype_order(train, order, num_valid_classes(data, dataset), names)
    assert len(order.boundaries) == len(names)


def test_qtype_order_on_a_hand_made_table():
    aidx = [0, 1, 9, 2, 0, 1, 7, 3, 2, 0, 1, 2]
    qtypes = [2, 0, 1, 2, 1, 0, 2, 1, 0, 2, 3, 3]
    table = hand_table(aidx, qtypes)
    names = ["t0", "t1", "t2", "t3"]
    order = stream_order(table, "qtype", 4, names)
    check_qtype_order(table, order, 4, names)
    assert 2 not in order.rows and 6 not in order.rows
    assert len(order.rows) == 10


# ------------------------------------------------------------------------------- 3. codes on disk
@pytest.mark.parametrize("dataset", ["clevr", "tdiuc"])
@pytest.mark.parametrize("order_name", ["qtype", "iid"])
def test_codes_on_disk(data, dataset, order_name):
    work = data.work[dataset]
    paths = vqa_data.feature_paths(work, dataset, order_name)
    features = np.load(paths["features"])
    id_to_row = vqa_data.load_image_map(paths["map"])
    n_images = (TRAIN_IMAGES + VAL_IMAGES)
    grid = IMAGE_SIZE // (16 if dataset == "clevr" else 32)  # ResNet layer3 / layer4 strides
    channels = 256 if dataset == "clevr" else 512
    assert features.dtype == np.float32 and features.shape == (n_images, grid, grid, channels)
    assert len(id_to_row) == n_images and sorted(id_to_row.values()) == list(range(n_images))
    for split in ("train", "val"):
        assert set(load_table(data, dataset, split)["iid"].tolist()) <= set(id_to_row)

    codes = np.load(paths["codes"])
    assert codes.dtype == np.uint8 and codes.shape == (n_images, grid, grid, CODEBOOKS)
    assert codes.max() < CODEBOOK_SIZE
    size = os.path.getsize(paths["codes"])
    assert codes.size < size <= codes.size + 256  # the codes plus the .npy header, nothing else
    assert size * 50 < os.path.getsize(paths["features"])

    tensors, meta = load_state(paths["codec"], "codec")
    codec = PQCodec(tensors["centroids"])
    assert codec.num_codebooks == CODEBOOKS and codec.num_channels == channels
    flat = torch.from_numpy(features.reshape(-1, channels))
    decoded = codec.decode(torch.from_numpy(codes.reshape(-1, CODEBOOKS)))
    error = float(((decoded - flat) ** 2).sum())
    baseline = float(((flat - flat.mean(0)) ** 2).sum())
    assert error / baseline < 0.5, error / baseline

    train, order = order_of(data, dataset, order_name)
    base = vqa_data.base_init_image_ids(train, order)
    independent = {int(train.iid[r]) for r in order.rows[:order.boundaries[0]]}
    assert sorted(independent) == base.tolist()
    assert meta["base_init_images"] == len(independent)
    if order_name == "iid" or dataset == "tdiuc":  # (each CLEVR image has a question of every type)
        assert len(independent) < TRAIN_IMAGES
    assert meta["data_order"] == order_name and meta["feature_shape"] == [grid, grid, channels]


def test_codec_is_trained_on_base_init_vectors_only(data, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    for name in ("LUT_clevr.json", "dictionary_clevr.json", "train_clevr.npz", "val_clevr.npz",
                 MAP_FILE["clevr"], FEATURE_FILE["clevr"] + ".npy"):
        shutil.copy(data.work["clevr"] / name, work / name)
    seen = []
    original = PQCodec.train.__func__

    def spy(cls, vectors, *args, **kwargs):
        seen.append(np.array(vectors, copy=True))
        return original(cls, vectors, *args, **kwargs)

    monkeypatch.setattr(PQCodec, "train", classmethod(spy))
    assert pq_encoding_clevr.main(["--data_path", str(work), "--data_order", "iid", "--codebook_size",
                                   str(CODEBOOK_SIZE), "--num_codebooks", str(CODEBOOKS), "--train_vectors", "200",
                                   "--device", "cpu"]) == 0
    assert len(seen) == 1 and seen[0].shape == (200, 256)
    features = np.load(work / (FEATURE_FILE["clevr"] + ".npy"))
    id_to_row = vqa_data.load_image_map(work / MAP_FILE["clevr"])
    train, order = order_of(SimpleNamespace(work={"clevr": work}), "clevr", "iid")
    base_rows = {id_to_row[int(train.iid[r])] for r in order.rows[:order.boundaries[0]]}
    base = {v.tobytes() for r in base_rows for v in features[r].reshape(-1, 256)}
    other = {v.tobytes() for r in set(range(len(features))) - base_rows for v in features[r].reshape(-1, 256)}
    vectors = [v.tobytes() for v in seen[0]]
    assert len(base_rows) < TRAIN_IMAGES / 2 and len(base) == len(base_rows) * 16
    assert len(set(vectors)) == 200  # distinct locations
    assert all(v in base for v in vectors) and not any(v in other for v in vectors)


# ------------------------------------------------------------------------------- 4. trainer modes
def check_outputs(data, dataset: str, order_name: str, out: Path) -> dict:
    summary = load_json(out / "summary.json")
    train, order = order_of(data, dataset, order_name)
    names = list(load_json(data.work[dataset] / f"LUT_{dataset}.json")["qtype2idx"])
    boundaries = summary["boundaries"]
    if order_name == "iid":
        n = len(order.rows)
        assert boundaries == [int(n * k / 10) for k in range(1, 11)]
    else:  # base init (the first type) + one per later type
        assert len(boundaries) == len(names)
        sizes = np.diff([0] + boundaries).tolist()
        assert sorted(sizes) == sorted(Counter(train.qtypeidx[train.aidx < num_valid_classes(data, dataset)]
                                               .tolist()).values())
        assert sorted(summary["segments"]) == sorted(names)
    assert boundaries == order.boundaries == summary["stream_boundaries"]
    k = len(boundaries)
    assert len(summary["overall"]) == len(summary["mean_per_type"]) == len(summary["segments"]) == k
    assert list(summary["per_type"]) == names and all(len(v) == k for v in summary["per_type"].values())
    val = load_table(data, dataset, "val")
    for i, boundary in enumerate(boundaries):
        values = [summary["per_type"][name][i] for name in names]
        assert all(0 <= v <= 100 for v in values + [summary["overall"][i], summary["mean_per_type"][i]])
        assert summary["mean_per_type"][i] == pytest.approx(np.mean(values), abs=1e-3)
        predictions = load_json(out / f"results_boundary_{boundary}.json")
        assert sorted(map(int, predictions)) == sorted(val["qid"].tolist())
        pred = np.array([predictions[str(q)] for q in val["qid"]])
        correct = (pred == val["aidx"]) & (val["aidx"] >= 0)
        assert summary["overall"][i] == pytest.approx(100 * correct.mean(), abs=1e-3)
        for t, name in enumerate(names):
            assert summary["per_type"][name][i] == pytest.approx(100 * correct[val["qtypeidx"] == t].mean(), abs=1e-3)
    with open(out / "train_log.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["questions_seen", "segment", "overall", "mean_per_type", *names]
    assert [int(r[0]) for r in rows[1:]] == boundaries
    assert [float(r[2]) for r in rows[1:]] == summary["overall"]
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.glob("results_boundary_*.json")) == sorted(
        f"results_boundary_{b}.json" for b in boundaries)
    return summary


def check_compute_record(data, dataset: str, mode: str, out: Path, summary: dict) -> None:
    """compute.json: a record per boundary whose counts are what the mode's schedule implies."""
    records, boundaries = read_records(out), summary["boundaries"]
    assert [r["position"] for r in records] == boundaries and {r["unit"] for r in records} == {"questions"}
    epochs, batch = summary["config"]["max_epochs"], summary["config"]["train_batch_size"]
    val_questions = len(load_table(data, dataset, "val")["qid"])
    offline_updates = offline_samples = 0
    for i, (record, boundary) in enumerate(zip(records, boundaries)):
        streamed = boundary - boundaries[0]
        assert record["examples_streamed"] == streamed and record["eval_examples"] == (i + 1) * val_questions
        if mode == "full":  # a fresh network on everything up to each boundary
            offline_updates += epochs * -(-boundary // batch)
            offline_samples += epochs * boundary
            assert (record["optimizer_updates"], record["sample_passes"]) == (offline_updates, offline_samples)
        else:  # base-init epochs, then one update per streamed question (on it alone, or with its replays)
            base_updates, base_samples = epochs * -(-boundaries[0] // batch), epochs * boundaries[0]
            assert record["optimizer_updates"] == base_updates + streamed
            if mode == "stream":
                assert record["sample_passes"] == base_samples + streamed
            elif streamed:
                assert record["sample_passes"] > base_samples + streamed
        assert record["seconds"]["base_init"] > 0 and record["seconds"]["evaluation"] > 0
        assert (record["examples_per_second"] is None) == (streamed == 0)


@pytest.mark.parametrize("dataset", ["clevr", "tdiuc"])
@pytest.mark.parametrize("mode", ["stream", "stream_with_rehearsal", "full"])
def test_trainer_modes_write_consistent_outputs(data, trained, dataset, mode):
    out = trained(dataset, "qtype", mode)
    summary = check_outputs(data, dataset, "qtype", out)
    assert summary["mode"] == mode and summary["data_order"] == "qtype"
    check_compute_record(data, dataset, mode, out, summary)
    state = checkpoint_parts(out)
    assert (state["buffer"] is not None) == (mode == "stream_with_rehearsal")
    if mode == "stream_with_rehearsal":  # default rehearsal keeps every streamed question
        train, order = order_of(data, dataset, "qtype")
        buffer = state["buffer"]
        ids = buffer["ids"].numpy()
        assert sorted(ids.tolist()) == sorted(order.rows.tolist())
        np.testing.assert_array_equal(buffer["labels"].numpy(), train.aidx[ids])
        assert "codes" not in buffer  # references: the codes are read through each question's image


def test_full_mode_on_the_iid_order(data, trained):
    summary = check_outputs(data, "tdiuc", "iid", trained("tdiuc", "iid", "full"))
    assert summary["segments"] == [f"{k}%" for k in range(10, 101, 10)]


def test_exponential_averaging(data, trained):
    plain = load_json(trained("tdiuc", "qtype", "stream") / "summary.json")
    out = trained("tdiuc", "qtype", "stream", "--use_exponential_averaging", "--set", "ema_decay=0.0")
    state = checkpoint_parts(out)
    assert state["ema"].keys() == state["model"].keys()
    assert all(torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])  # decay 0: a copy
    averaged = load_json(out / "summary.json")
    for key in ("boundaries", "overall", "mean_per_type", "per_type"):
        assert averaged[key] == plain[key]
    out = trained("tdiuc", "qtype", "stream", "--use_exponential_averaging", "--set", "ema_decay=0.9")
    check_outputs(data, "tdiuc", "qtype", out)
    state = checkpoint_parts(out)
    assert not torch.equal(state["ema"]["classifier.lin1.weight"], state["model"]["classifier.lin1.weight"])


def checkpoint_parts(out: Path) -> dict:
    """The trainer's checkpoint.pt, by part: network weights, buffer arrays (None without), EMA, progress."""
    tensors, meta = load_state(out / "checkpoint.pt")
    learner = tensors.get("learner", {})
    return {"model": learner.get("plastic_net", tensors.get("network")), "buffer": learner.get("buffer"),
            "ema": tensors.get("ema"), "meta": meta}


# ------------------------------------------------------------------------------- 5. buffer strategies
def codes_for(example_id: int) -> torch.Tensor:
    return ((torch.arange(4) * 5 + example_id * 11) % 256).to(torch.uint8).reshape(1, 2, 2)


class ReferenceQueue:
    """Arrival-ordered list; when full, drop the oldest example of the largest class (lowest label on ties)."""

    def __init__(self, num_classes: int, max_size: int):
        self.items: list[tuple[int, int]] = []
        self.num_classes, self.max_size = num_classes, max_size

    def insert(self, example_id: int, label: int):
        evicted = None
        if len(self.items) >= self.max_size:
            counts = [sum(1 for _, l in self.items if l == c) for c in range(self.num_classes)]
            largest = counts.index(max(counts))
            position = next(i for i, (_, l) in enumerate(self.items) if l == largest)
            evicted = self.items.pop(position)[0]
        self.items.append((example_id, label))
        return evicted


def test_queue_evicts_the_oldest_of_the_largest_class():
    buf = ReplayBuffer((1, 2, 2), 3, max_size=6)
    rng = np.random.default_rng(0)
    for example_id, label in zip(range(10, 16), [0, 0, 1, 0, 2, 1]):
        assert buf.insert(codes_for(example_id), label, example_id, rng, strategy="queue") is None
    # counts 3/2/1: class 0's oldest (10) goes, then on the 2/2/2 tie class 0's next oldest (11),
    # then class 1 (3 examples) loses 12, then the tie again takes class 0's last original, 13.
    assert buf.insert(codes_for(16), 2, 16, rng, strategy="queue") == 10
    assert buf.insert(codes_for(17), 1, 17, rng, strategy="queue") == 11
    assert buf.insert(codes_for(18), 0, 18, rng, strategy="queue") == 12
    assert buf.insert(codes_for(19), 1, 19, rng, strategy="queue") == 13
    buf.check_invariants()
    assert sorted(buf.ids[:buf.size].tolist()) == [14, 15, 16, 17, 18, 19]


@pytest.mark.parametrize("seed", [0, 1])
def test_queue_matches_a_reference_queue_through_a_state_round_trip(seed):
    rng = np.random.default_rng(seed)
    num_classes, max_size = 4, 25
    labels = rng.integers(0, num_classes, 300)
    labels[100:180] = 2  # a burst of one class
    buf = ReplayBuffer((1, 2, 2), num_classes, max_size=max_size)
    reference = ReferenceQueue(num_classes, max_size)
    base = 12
    buf.add_batch(torch.stack([codes_for(i) for i in range(base)]), labels[:base], np.arange(base))
    for i in range(base):
        reference.insert(i, int(labels[i]))
    for i in range(base, len(labels)):
        if i == 150:
            state = buf.state_dict()
            buf = ReplayBuffer((1, 2, 2), num_classes, max_size=max_size)
            buf.load_state_dict(state)
        assert buf.insert(codes_for(i), int(labels[i]), i, rng, strategy="queue") == reference.insert(i, int(labels[i]))
        buf.check_invariants()
        assert buf.size == min(i + 1, max_size)
    assert sorted(buf.ids[:buf.size].tolist()) == sorted(i for i, _ in reference.items)
    codes, stored = buf.gather(np.arange(buf.size))
    for slot in range(buf.size):
        example = int(buf.ids[slot])
        assert torch.equal(codes[slot], codes_for(example)) and int(stored[slot]) == labels[example]


def test_random_evicts_some_example_of_the_largest_class():
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(8, int), np.ones(4, int), np.full(3, 2)]
    evicted_positions = Counter()
    for trial in range(200):
        buf = ReplayBuffer((1, 2, 2), 3, max_size=15)
        buf.add_batch(torch.stack([codes_for(i) for i in range(15)]), labels, np.arange(15))
        counts_before = buf.class_counts.copy()
        evicted = buf.insert(codes_for(99), 2, 99, rng, strategy="random")
        assert labels[evicted] == int(np.argmax(counts_before)) == 0
        evicted_positions[evicted] += 1
        buf.check_invariants()
        assert 99 in buf.ids[:buf.size] and evicted not in buf.ids[:buf.size]
    assert set(evicted_positions) == set(range(8))  # not always the oldest
    with pytest.raises(ValueError, match="strategy"):
        buf.insert(codes_for(100), 0, 100, rng, strategy="lifo")


@pytest.mark.parametrize("strategy", ["queue", "random"])
def test_limited_buffer_through_the_trainer(data, trained, strategy):
    out = trained("tdiuc", "qtype", "stream_with_rehearsal", "--rehearsal_mode", "limited_buffer",
                  "--max_buffer_size", "20", "--buffer_replacement_strategy", strategy)
    check_outputs(data, "tdiuc", "qtype", out)
    buffer = checkpoint_parts(out)["buffer"]
    ids = buffer["ids"].numpy()
    assert len(ids) == len(buffer["labels"]) == 20 and int(buffer["max_size"]) == 20 and "codes" not in buffer
    train, order = order_of(data, "tdiuc", "qtype")
    assert len(set(ids.tolist())) == 20 and set(ids.tolist()) <= set(order.rows.tolist())
    np.testing.assert_array_equal(buffer["labels"].numpy(), train.aidx[ids])
    if strategy == "queue":
        reference = ReferenceQueue(num_valid_classes(data, "tdiuc"), 20)
        for row in order.rows:
            reference.insert(int(row), int(train.aidx[row]))
        assert sorted(ids.tolist()) == sorted(i for i, _ in reference.items)
        assert order.rows[-1] in ids  # the newest question is always kept


# ------------------------------------------------------------------------------- 6. resume
def interrupt_after(monkeypatch, records: int):
    original = vqa_trainer.record
    calls = []

    def record(*args, **kwargs):
        original(*args, **kwargs)
        calls.append(args[2])
        if len(calls) == records:
            raise KeyboardInterrupt

    monkeypatch.setattr(vqa_trainer, "record", record)
    return calls


@pytest.mark.parametrize("dataset,mode,stop", [("clevr", "stream_with_rehearsal", 2), ("tdiuc", "full", 3)])
def test_resume_gives_the_uninterrupted_result(data, trained, tmp_path, monkeypatch, dataset, mode, stop):
    out_a = trained(dataset, "qtype", mode)
    out_b = tmp_path / "b"
    argv = trainer_argv(data, dataset, "qtype", mode, out_b)
    calls = interrupt_after(monkeypatch, stop)
    with pytest.raises(KeyboardInterrupt):
        vqa_trainer.main(argv)
    monkeypatch.undo()
    summary_a = load_json(out_a / "summary.json")
    assert calls == summary_a["boundaries"][:stop]
    assert load_json(out_b / "summary.json")["boundaries"] == calls  # recorded, the checkpoint is one behind
    meta = checkpoint_parts(out_b)["meta"]
    assert meta["position"] == calls[-2]

    assert vqa_trainer.main(argv) == 0
    assert load_json(out_b / "summary.json") == summary_a
    for boundary in summary_a["boundaries"]:
        name = f"results_boundary_{boundary}.json"
        assert load_json(out_b / name) == load_json(out_a / name)
    state_a, state_b = checkpoint_parts(out_a), checkpoint_parts(out_b)
    assert state_a["model"].keys() == state_b["model"].keys()
    for key in state_a["model"]:
        assert torch.equal(state_a["model"][key], state_b["model"][key]), key
    if state_a["buffer"] is not None:
        for key in state_a["buffer"]:
            assert torch.equal(state_a["buffer"][key], state_b["buffer"][key]), key


def test_finished_run_is_not_redone_and_other_settings_are_refused(data, trained, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(trained("clevr", "qtype", "stream_with_rehearsal"), out)
    before = snapshot(out)
    argv = trainer_argv(data, "clevr", "qtype", "stream_with_rehearsal", out)
    assert vqa_trainer.main(argv) == 0  # same command: nothing left to do, nothing rewritten
    assert snapshot(out) == before
    capsys.readouterr()
    expect_error(capsys, vqa_trainer.main(argv + ["--seed", "1"]), "other settings", "seed")
    assert snapshot(out) == before
    expect_error(capsys, vqa_trainer.main(trainer_argv(data, "clevr", "qtype", "stream", out)),
                 "other settings", "mode")
    assert snapshot(out) == before


# ------------------------------------------------------------------------------- 7. bad inputs
def map_without_image(data, tmp_path) -> tuple[Path, int]:
    work = tmp_path / "work"
    shutil.copytree(data.work["clevr"], work)
    mapping = load_json(work / MAP_FILE["clevr"])
    missing = int(load_table(data, "clevr", "train")["iid"][7])
    row = mapping["image_id_to_ix"].pop(str(missing))
    mapping["image_id_to_ix"]["987654321"] = row  # same number of images, one id changed
    (work / MAP_FILE["clevr"]).write_text(json.dumps(mapping))
    return work, missing


@pytest.mark.parametrize("case", ["config", "empty_data", "no_codes", "id_mismatch", "buffer_size", "set_field",
                                  "set_value", "glove_missing", "glove_dim"])
def test_trainer_refuses_bad_input(data, tmp_path, capsys, case):
    out = tmp_path / "out"
    argv = trainer_argv(data, "clevr", "qtype", "stream_with_rehearsal", out)
    expected = []
    if case == "config":
        argv[argv.index("CLEVR_demo")] = "CLEVR_nope"
        expected = ["CLEVR_nope", "CLEVR_demo", "CLEVR_streaming", "TDIUC_demo", "TDIUC_streaming"]
    elif case == "empty_data":
        (tmp_path / "empty").mkdir()
        argv[argv.index(str(data.work["clevr"]))] = str(tmp_path / "empty")
        expected = ["LUT_clevr.json", "not found"]
    elif case == "no_codes":
        work = tmp_path / "work"
        shutil.copytree(data.work["clevr"], work, ignore=shutil.ignore_patterns("*pq_qtype_*"))
        argv[argv.index(str(data.work["clevr"]))] = str(work)
        expected = ["pq_qtype_codes.npy", "pq_encoding_clevr"]
    elif case == "id_mismatch":
        work, missing = map_without_image(data, tmp_path)
        argv[argv.index(str(data.work["clevr"]))] = str(work)
        expected = [f"image id {missing}", "train"]
    elif case == "buffer_size":
        argv += ["--rehearsal_mode", "limited_buffer"]
        expected = ["--max_buffer_size"]
    elif case == "set_field":
        argv += ["--set", "bogus_field=3"]
        expected = ["bogus_field", "mac_dim"]
    elif case == "set_value":
        argv += ["--set", "mac_dim=big"]
        expected = ["mac_dim", "int"]
    elif case == "glove_missing":
        argv += ["--glove", str(tmp_path / "glove.txt")]
        expected = ["glove.txt", "not found"]
    elif case == "glove_dim":
        words = load_json(data.work["clevr"] / "dictionary_clevr.json")["idx2word"]
        (tmp_path / "glove.txt").write_text(f"{words[1]} 0.1 0.2 0.3\n")
        argv += ["--glove", str(tmp_path / "glove.txt")]
        expected = ["emb_dim=3"]
    expect_error(capsys, vqa_trainer.main(argv), *expected)
    assert not out.exists()


def test_trainer_cli_exit_code_and_stderr(data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    argv = trainer_argv(data, "clevr", "qtype", "stream", tmp_path / "out", "--rehearsal_mode", "limited_buffer",
                        "--max_buffer_size", "10")
    result = subprocess.run([sys.executable, "-m", "vqa_experiments.vqa_trainer", *argv], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr == "error: --rehearsal_mode limited_buffer only applies to --stream_with_rehearsal\n"
    assert result.stdout == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module,what", [(preprocess_clevr, "CLEVR train questions"),
                                         (preprocess_tdiuc, "TDIUC train questions")])
def test_preprocessing_without_question_files(tmp_path, capsys, module, what):
    (tmp_path / "data").mkdir()
    rc = module.main(["--path", str(tmp_path / "data"), "--out", str(tmp_path / "work")])
    expect_error(capsys, rc, what, "not found")
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("flags", [[], ["--random_init", "--weights", "w.pth"]])
def test_feature_extraction_needs_weights_or_random_init(data, tmp_path, capsys, flags):
    rc = extract_image_features_clevr.main(["--path", str(data.raw / "CLEVR_v1.0"), "--out", str(tmp_path / "f"),
                                            "--model", "resnet18", "--image_size", "64", "--num_workers", "0",
                                            "--device", "cpu", *flags])
    expect_error(capsys, rc, "--weights", "--random_init")
    assert not (tmp_path / "f").exists()


def test_feature_extraction_refuses_to_overwrite(data, capsys):
    work = data.work["tdiuc"]
    before = snapshot(work)
    rc = extract_image_features_tdiuc.main(["--path", str(data.raw / "TDIUC"), "--out", str(work), "--random_init",
                                            "--model", "resnet18", "--image_size", "64", "--num_workers", "0",
                                            "--device", "cpu"])
    expect_error(capsys, rc, "all_tdiuc_resnet.npy exists", "--overwrite")
    assert snapshot(work) == before


@pytest.mark.parametrize("dataset,module", [("clevr", pq_encoding_clevr), ("tdiuc", pq_encoding_tdiuc)])
def test_pq_encoding_refuses_to_overwrite_codes(data, capsys, dataset, module):
    work = data.work[dataset]
    before = snapshot(work)
    rc = module.main(["--data_path", str(work), "--data_order", "qtype", "--codebook_size", "16",
                      "--num_codebooks", "4", "--device", "cpu"])
    expect_error(capsys, rc, "pq_qtype_codes.npy exists", "--overwrite")
    assert snapshot(work) == before


# ------------------------------------------------------------------------------- 8. models
def tiny_config(model: str, **changes):
    base = get_config("CLEVR_demo" if model == "smac" else "TDIUC_demo")
    fields = dict(num_classes=7, emb_dim=8, lstm_out=8, num_hidden=8, attention_hidden=8, mac_dim=8, mac_max_step=2)
    return dataclasses.replace(base, **{**fields, **changes})


def padded(rng: torch.Generator, ntoken: int, qlen: list[int], width: int) -> torch.Tensor:
    tokens = torch.full((len(qlen), width), ntoken, dtype=torch.long)
    for i, n in enumerate(qlen):
        tokens[i, :n] = torch.randint(1, ntoken, (n,), generator=rng)
    return tokens


@pytest.mark.parametrize("model", ["smac", "updown"])
def test_models_take_any_grid_and_ignore_padding(model):
    torch.manual_seed(0)
    ntoken, channels = 12, 6
    net = build_model(tiny_config(model), ntoken, channels).eval()
    rng = torch.Generator().manual_seed(1)
    qlen = torch.tensor([5, 2, 7])
    tokens = padded(rng, ntoken, qlen.tolist(), 11)
    with torch.no_grad():
        for grid in (3, 5):
            maps = torch.randn(3, channels, grid, grid, generator=rng)
            out = net(tokens, maps, qlen)
            assert out.shape == (3, 7) and torch.isfinite(out).all()
            garbage = tokens.clone()
            for i, n in enumerate(qlen.tolist()):
                garbage[i, n:] = torch.randint(0, ntoken + 1, (11 - n,), generator=rng)
            assert torch.equal(net(garbage, maps, qlen), out)          # values past qlen are never read
            assert torch.allclose(net(tokens[:, :7], maps, qlen), out, atol=1e-6)  # nor is the padded width
            longer = padded(rng, ntoken, [5, 2, 7], 30)
            longer[:, :7] = tokens[:, :7]
            assert torch.allclose(net(longer, maps, qlen), out, atol=1e-6)
            changed = tokens.clone()
            changed[1, 1] = 1 + changed[1, 1] % (ntoken - 1)
            assert not torch.allclose(net(changed, maps, qlen)[1], out[1])  # words inside qlen matter
            assert not torch.allclose(net(tokens, maps * 2 + 1, qlen), out)  # and so does the image
        if model == "updown":  # one question's answer does not depend on its batch
            single = net(tokens[2:3, :7], maps[2:3], qlen[2:3])
            assert torch.allclose(single, out[2:3], atol=1e-5)


def test_smac_state_dict_keys_stay_checkpoint_compatible():
    # Saved S-MAC checkpoints are loaded by these names; renaming a submodule would orphan them.
    net = build_model(tiny_config("smac"), 12, 6)
    linear = ["weight", "bias"]
    expected = (["embedding.emb.weight"]
                + [f"input_unit.conv.{i}.{p}" for i in (0, 2) for p in linear]
                + [f"input_unit.kb_proj_layer.{p}" for p in linear]
                + [f"input_unit.lstm.{p}_{kind}_l0{suffix}" for suffix in ("", "_reverse")
                   for p in ("weight", "bias") for kind in ("ih", "hh")]
                + [f"input_unit.lstm_proj.{p}" for p in linear]
                + [f"mac_unit.control.pos_aware_layers.{i}.{p}" for i in range(2) for p in linear]
                + [f"mac_unit.control.ctrl_question.{p}" for p in linear]
                + ["mac_unit.control.attn.weight"]
                + [f"mac_unit.read.concat_layer.{p}" for p in linear] + ["mac_unit.read.attn.weight"]
                + [f"mac_unit.write.{p}" for p in linear] + ["mac_unit.mem_0", "mac_unit.control_0"]
                + [f"output_unit.{i}.{p}" for i in (0, 2) for p in linear])
    assert sorted(net.state_dict()) == sorted(expected)


def write_glove(path: Path, rows: dict[str, list[float]], extra: str = "") -> None:
    path.write_text(extra + "".join(f"{w} {' '.join(map(str, v))}\n" for w, v in rows.items()))


def test_load_word_vectors(tmp_path):
    dictionary = vqa_data.Dictionary(["<unk>", "what", "color", "cube"])
    write_glove(tmp_path / "g.txt", {"zebra": [9, 9, 9], "color": [1, 2, 3], "cube": [-1, 0.5, 2]})
    weights, found = load_word_vectors(tmp_path / "g.txt", dictionary)
    assert found == 2 and weights.shape == (4, 3) and weights.dtype == np.float32
    np.testing.assert_array_equal(weights[2], [1, 2, 3])
    np.testing.assert_array_equal(weights[3], [-1, 0.5, 2])
    assert np.all(np.abs(weights[[0, 1]]) < 1) and np.any(weights[[0, 1]] != 0)  # small random rows
    write_glove(tmp_path / "none.txt", {"zebra": [1, 2, 3], "giraffe": [4, 5, 6]})
    with pytest.raises(VQADataError, match="none of the 4 question words"):
        load_word_vectors(tmp_path / "none.txt", dictionary)
    with pytest.raises(VQADataError, match="not found"):
        load_word_vectors(tmp_path / "missing.txt", dictionary)


@pytest.mark.parametrize("freeze", [True, False])
def test_glove_embedding_initialised_and_frozen_in_smac(data, tmp_path, freeze):
    words = load_json(data.work["clevr"] / "dictionary_clevr.json")["idx2word"]
    rng = np.random.default_rng(0)
    chosen = {w: rng.normal(size=6).round(3).tolist() for w in words[1:6]}
    write_glove(tmp_path / "glove.txt", {"zebra": [7.0] * 6, **chosen})
    args = vqa_trainer.get_parser().parse_args(
        trainer_argv(data, "clevr", "qtype", "stream", tmp_path / "out", "--glove", str(tmp_path / "glove.txt"),
                     "--set", "emb_dim=6", "--set", f"freeze_embedding={str(freeze).lower()}"))
    config, vdata, glove = vqa_trainer.prepare(args)
    assert config.freeze_embedding is freeze and config.model == "smac"
    torch.manual_seed(0)
    learner = vqa_trainer.VQAModel(args, config, vdata, glove)
    embedding = learner.net.embedding.emb.weight
    assert embedding.shape == (len(words) + 1, 6)
    for word, vector in chosen.items():
        np.testing.assert_allclose(embedding[words.index(word)].detach().numpy(), vector, rtol=0, atol=1e-6)
    before = {name: p.detach().clone() for name, p in learner.net.named_parameters()}
    learner.step(*vdata.batch("train", np.arange(16)))
    after = dict(learner.net.named_parameters())
    assert not torch.equal(after["output_unit.2.weight"], before["output_unit.2.weight"])
    assert torch.equal(after["embedding.emb.weight"], before["embedding.emb.weight"]) is freeze
    assert (learner.net.embedding.emb.weight.grad is None) is freeze  # frozen: no gradient at all


def test_real_configs_expect_glove_and_say_so_once(data, tmp_path, capsys):
    """The real configs were run with GloVe; without --glove they warn once at start; demo configs do not."""
    for name, warned in (("CLEVR_streaming", True), ("CLEVR_demo", False)):
        args = vqa_trainer.get_parser().parse_args(
            ["--expt_name", "t", "--data_path", str(data.work["clevr"]), "--data_order", "qtype", "--stream",
             "--output_dir", str(tmp_path / "out"), "--config_name", name, "--device", "cpu"])
        capsys.readouterr()
        vqa_trainer.prepare(args)
        err = capsys.readouterr().err
        assert ("expects GloVe" in err) is warned
        if warned:
            assert err.count("warning") == 1 and "glove.6B.300d.txt" in err and "S-MAC keeps them frozen" in err
    assert get_config("TDIUC_streaming").expects_glove and not get_config("TDIUC_streaming").freeze_embedding


def test_run_script_passes_glove(data, tmp_path):
    words = load_json(data.work["clevr"] / "dictionary_clevr.json")["idx2word"]
    write_glove(tmp_path / "glove.txt", {w: [0.5] * 16 for w in words[1:4]})
    env = {**os.environ, "DATA_PATH": str(data.work["clevr"]), "CONFIG": "CLEVR_demo", "MODE": "stream",
           "GLOVE": str(tmp_path / "glove.txt"), "OUTPUT_DIR": str(tmp_path / "out"), "DEVICE": "cpu",
           "EXTRA_ARGS": " ".join(TINY["clevr"] + COMMON[:-2]), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(REPO / "vqa_experiments" / "run_clevr_experiment.sh")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"word vectors: 3 of {len(words)} question words found in {tmp_path / 'glove.txt'}" in result.stdout
    assert (tmp_path / "out" / "summary.json").is_file()


def test_updown_embedding_from_glove(tmp_path):
    dictionary = vqa_data.Dictionary(["<unk>", "how", "many"])
    write_glove(tmp_path / "g.txt", {"many": [0.5, -0.5, 1, 2, 3, 4, 5, 6]})
    weights, _ = load_word_vectors(tmp_path / "g.txt", dictionary)
    net = build_model(tiny_config("updown"), dictionary.ntoken, 4)
    net.embedding.init_embedding(weights)
    assert torch.equal(net.embedding.emb.weight[2], torch.tensor([0.5, -0.5, 1, 2, 3, 4, 5, 6]))
    with pytest.raises(VQADataError, match="emb_dim=8"):
        build_model(tiny_config("updown", emb_dim=5), dictionary.ntoken, 4).embedding.init_embedding(weights)


# ------------------------------------------------------------------------------- 9. metric
def test_accuracy_by_type_by_hand():
    predictions = np.array([0, 1, 2, -1, 4, 3, 7])
    answers = np.array([0, 1, 1, -1, 5, 3, 7])     # the -1 answer is wrong even though the prediction is -1
    qtypes = np.array([0, 0, 0, 1, 1, 2, 2])
    result = metric.accuracy_by_type(predictions, answers, qtypes, ["a", "b", "c", "unused"])
    assert result["per_type"] == pytest.approx({"a": 200 / 3, "b": 0.0, "c": 100.0})
    assert list(result["per_type"]) == ["a", "b", "c"]  # only the types present
    assert result["overall"] == pytest.approx(400 / 7)
    assert result["mean_per_type"] == pytest.approx((200 / 3 + 0 + 100) / 3)
    empty = metric.accuracy_by_type(np.array([]), np.array([]), np.array([]), ["a"])
    assert empty == {"overall": 0.0, "mean_per_type": 0.0, "per_type": {}}


def test_updown_attention_equals_the_concatenated_mlp():
    """The split-weight attention computes the original's Linear(cat(location feature, question))."""
    from vqa_experiments.vqa_models import Attention
    torch.manual_seed(0)
    attention = Attention(imfeat_size=24, qfeat_size=10, hidden=16, dropout=False).eval()
    q, v = torch.randn(3, 10), torch.randn(3, 7, 24)
    tiled = torch.cat((v, q.unsqueeze(1).expand(-1, 7, -1)), 2)
    expected = torch.softmax(attention.attnmap(torch.relu(attention.nlin(tiled))), 1)
    assert torch.allclose(attention(q, v), expected, atol=1e-6)
    assert torch.allclose(attention(q, v).sum(1), torch.ones(3, 1))


@pytest.mark.parametrize("dataset", ["clevr", "tdiuc"])
def test_run_script_passes_its_variables_to_the_trainer(data, tmp_path, dataset):
    """run_<dataset>_experiment.sh with environment overrides runs the trainer on the work folder, and
    PREPARE=1 without WEIGHTS stops with one error line before doing anything."""
    script = REPO / "vqa_experiments" / f"run_{dataset}_experiment.sh"
    env = {**os.environ, "PYTHON": sys.executable, "DATA_PATH": str(data.work[dataset]), "MODE": "stream",
           "CONFIG": TINY[dataset][1], "OUTPUT_DIR": str(tmp_path / "out"), "DEVICE": "cpu", "OMP_NUM_THREADS": "1",
           "EXTRA_ARGS": " ".join(TINY[dataset][2:] + COMMON)}
    bad = subprocess.run(["bash", str(script)], env={**env, "PREPARE": "1"}, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: PREPARE=1 needs WEIGHTS=")
    assert not (tmp_path / "out").exists()
    run = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = load_json(tmp_path / "out" / "summary.json")
    assert summary["mode"] == "stream" and summary["data_order"] == "qtype"
    assert summary["config"]["lr"] == get_config("CLEVR_streaming" if dataset == "clevr" else "TDIUC_streaming").lr


@pytest.mark.parametrize("dataset", ["clevr", "tdiuc"])
def test_pq_encoding_straight_from_images_matches_the_feature_file_path(data, tmp_path, dataset):
    """--images runs the trunk itself: the same codes, codebooks and map as extract + encode, no float file."""
    work = tmp_path / "work"
    work.mkdir()
    for name in (f"LUT_{dataset}.json", f"dictionary_{dataset}.json", f"train_{dataset}.npz", f"val_{dataset}.npz"):
        shutil.copy(data.work[dataset] / name, work / name)
    main = pq_encoding_clevr.main if dataset == "clevr" else pq_encoding_tdiuc.main
    raw = data.raw / ("CLEVR_v1.0" if dataset == "clevr" else "TDIUC")
    argv = ["--data_path", str(work), "--data_order", "qtype", "--codebook_size", str(CODEBOOK_SIZE),
            "--num_codebooks", str(CODEBOOKS), "--device", "cpu", "--images", str(raw), "--random_init",
            "--image_size", str(IMAGE_SIZE), "--batch_size", "32", "--num_workers", "0", "--model", "resnet18"]
    assert main(argv) == 0
    stem = FEATURE_FILE[dataset]
    assert not (work / f"{stem}.npy").exists()
    ours = np.load(work / f"{stem}pq_qtype_codes.npy")
    reference = np.load(data.work[dataset] / f"{stem}pq_qtype_codes.npy")
    assert ours.shape == reference.shape and np.array_equal(ours, reference)
    assert torch.equal(load_state(work / f"{stem}pq_qtype_codec.pt")[0]["centroids"],
                       load_state(data.work[dataset] / f"{stem}pq_qtype_codec.pt")[0]["centroids"])
    assert (load_json(work / MAP_FILE[dataset])["image_id_to_ix"]
            == load_json(data.work[dataset] / MAP_FILE[dataset])["image_id_to_ix"])
    # A second run refuses to overwrite, and a work folder whose map lists other images is refused too.
    before = snapshot(work)
    assert main(argv) == 2 and snapshot(work) == before
    mapping = load_json(work / MAP_FILE[dataset])
    mapping["image_id_to_ix"] = dict(list(mapping["image_id_to_ix"].items())[1:])
    (work / MAP_FILE[dataset]).write_text(json.dumps(mapping))
    for path in work.glob(f"{stem}pq_qtype_*"):
        path.unlink()
    assert main(argv) == 2


def test_streaming_configs_carry_the_original_hyper_parameters():
    """The original's configs/config_{CLEVR,TDIUC}_streaming.py, written out independently of configs/."""
    clevr, tdiuc = get_config("CLEVR_streaming"), get_config("TDIUC_streaming")
    assert (clevr.dataset, clevr.model, clevr.num_classes, clevr.lr, clevr.train_batch_size) == \
        ("clevr", "smac", 28, 3e-4, 64)
    assert (tdiuc.dataset, tdiuc.model, tdiuc.num_classes, tdiuc.lr, tdiuc.train_batch_size) == \
        ("tdiuc", "updown", 1480, 2e-3, 512)
    for config in (clevr, tdiuc):
        assert (config.optimizer, config.max_epochs, config.replays_per_step, config.emb_dim,
                config.lstm_out, config.bidirectional, config.ema_decay) == ("adamax", 20, 50, 300, 512, True, 0.999)
    assert not clevr.imnorm and tdiuc.imnorm
    assert clevr.freeze_embedding and not clevr.embedding_dropout and tdiuc.embedding_dropout
    assert (clevr.mac_dim, clevr.mac_max_step, clevr.mac_dropout) == (512, 12, 0.15)
    assert (tdiuc.num_hidden, tdiuc.num_attn_hops, tdiuc.attention_hidden) == (1024, 2, 1024)


def test_remind_step_is_the_new_question_plus_distinct_replays(data, tmp_path, monkeypatch):
    """Each streamed REMIND step trains on the new question first, then min(r, stored) distinct replays drawn
    from the buffer after the new question entered it (so only from questions seen so far)."""
    calls = []
    original = vqa_trainer.VQAModel.replay_loss

    def recording(self, batch):
        calls.append(batch.ids.copy())
        # the buffer holds references: each row's maps are its own image's codes, decoded
        images = torch.from_numpy(self.data.train_image[batch.ids])
        assert torch.equal(batch.maps, self.data.codec.decode_maps(self.data.codes[images]))
        assert torch.equal(batch.labels, torch.from_numpy(self.data.train.aidx[batch.ids].astype(np.int64)))
        return original(self, batch)

    monkeypatch.setattr(vqa_trainer.VQAModel, "replay_loss", recording)
    out = tmp_path / "out"
    assert vqa_trainer.main(trainer_argv(data, "clevr", "qtype", "stream_with_rehearsal", out)) == 0
    _, order = order_of(data, "clevr", "qtype")
    base = order.boundaries[0]
    r = 8  # COMMON sets num_rehearsal_samples=8
    assert len(calls) == len(order.rows) - base
    for k, rows in enumerate(calls):
        position = base + k
        assert rows[0] == order.rows[position]
        replays = rows[1:]
        assert len(replays) == min(r, position + 1) and len(set(replays.tolist())) == len(replays)
        assert set(replays.tolist()) <= set(order.rows[:position + 1].tolist())


def test_dry_run_prints_the_budget_and_writes_nothing(data, tmp_path, capsys):
    out_dir = tmp_path / "out"
    argv = trainer_argv(data, "tdiuc", "qtype", "stream_with_rehearsal", out_dir, "--rehearsal_mode",
                        "limited_buffer", "--max_buffer_size", "30", "--dry_run")
    before = sorted((p, p.stat().st_mtime_ns) for p in data.work["tdiuc"].rglob("*"))
    assert vqa_trainer.main(argv) == 0
    out = capsys.readouterr().out
    assert not out_dir.exists() and sorted((p, p.stat().st_mtime_ns) for p in data.work["tdiuc"].rglob("*")) == before
    line = next(line for line in out.splitlines() if "buffer at its largest" in line)
    codes = np.load(data.work["tdiuc"] / "all_tdiuc_resnetpq_qtype_codes.npy", mmap_mode="r")
    assert line.split("buffer at its largest")[1].strip().startswith("30 questions x 10 B = 300 B, referring to "
                                                                     f"{len(codes):,} images' codes")
    assert "dry run: every check passed; nothing was written" in out


def test_killed_vqa_run_finishes_like_an_uninterrupted_one(data, trained, tmp_path):
    """The real trainer in a subprocess: SIGKILL right after a mid-segment checkpoint.pt is written and at
    seeded random times, SIGTERM once, then reruns until it finishes: summary and every results file equal
    the uninterrupted run's."""
    import random
    import signal
    import time

    reference = trained("clevr", "qtype", "stream_with_rehearsal")
    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "vqa_experiments.vqa_trainer",
            *trainer_argv(data, "clevr", "qtype", "stream_with_rehearsal", out),
            "--checkpoint_every_minutes", "0.001"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    ckpt = out / "checkpoint.pt"
    mtime = lambda: ckpt.stat().st_mtime_ns if ckpt.exists() else 0  # noqa: E731
    rng, outcomes, outputs = random.Random(11), [], []

    def run(stop=None):
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if stop is not None:
            stop(proc)
        text, _ = proc.communicate(timeout=600)
        outcomes.append(proc.returncode)
        outputs.append(text)

    def after_a_save(signum):
        def stop(proc):
            before, deadline = mtime(), time.monotonic() + 300
            while proc.poll() is None and time.monotonic() < deadline:
                if mtime() not in (0, before):
                    proc.send_signal(signum)
                    return
                time.sleep(0.002)
        return stop

    def at_random(proc):
        try:
            proc.wait(timeout=rng.uniform(3.0, 8.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)

    run(after_a_save(signal.SIGKILL))
    run(after_a_save(signal.SIGTERM))
    if outcomes[-1] != 0:
        assert outcomes[-1] == 128 + signal.SIGTERM and "stopped by SIGTERM" in outputs[-1], outputs[-1][-2000:]
    run(at_random)
    for _ in range(5):
        run()
        if outcomes[-1] == 0:
            break
    assert outcomes[-1] == 0, outputs[-1][-3000:]
    assert -signal.SIGKILL in outcomes, outcomes
    assert any("resuming" in text for text in outputs)
    summary = load_json(out / "summary.json")
    assert summary == load_json(reference / "summary.json")
    for boundary in summary["boundaries"]:
        name = f"results_boundary_{boundary}.json"
        assert load_json(out / name) == load_json(reference / name)
    assert not list(out.glob(".*.tmp"))


def test_second_run_into_an_output_folder_in_use_exits_at_once(data, tmp_path, capsys):
    from remind.lock import FolderLock

    out = tmp_path / "out"
    with FolderLock(out):
        capsys.readouterr()
        assert vqa_trainer.main(trainer_argv(data, "clevr", "qtype", "stream", out)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(out) in err[0] and f"process {os.getpid()}" in err[0]
        assert list(out.iterdir()) == []
