"""Question tables, the word dictionary, stream orders and the PQ-coded image store for streaming VQA.

Files in a dataset's work folder (``--data_path``), written by the scripts of
this package and read by ``vqa_trainer.py``:

``LUT_{dataset}.json``          answer / answer-type / question-type lookup tables (most frequent first)
``dictionary_{dataset}.json``   question words (built from training questions; ``<unk>`` for the rest)
``{split}_{dataset}.npz``       one row per question: ids, text, tokens, answer indices, question type
``map_{dataset}_{feat}.json``   image id -> row of the feature and code arrays
``all_{dataset}_{feat}.npy``    float32 feature maps ``(N, H, W, C)`` (input of PQ training only)
``all_{dataset}_{feat}pq_{order}_codes.npy``   uint8 PQ codes ``(N, H, W, M)``
``all_{dataset}_{feat}pq_{order}_codec.pt``    the PQ codebooks (weights-only torch file)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import zipfile
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from remind.checkpoint import atomic_write, atomic_write_text, load_state
from remind.cli import run_main
from remind.pq import PQCodec

# CLEVR's five question types, named by the last function of each question's program.
CLEVR_CATEGORIES = {
    "count": ["count"],
    "compare_attribute": ["equal_color", "equal_material", "equal_shape", "equal_size"],
    "exist": ["exist"],
    "compare_integer": ["greater_than", "less_than", "equal_integer"],
    "query_attribute": ["query_color", "query_material", "query_shape", "query_size"],
}
CLEVR_FUNCTION_TO_TYPE = {fn: qtype for qtype, fns in CLEVR_CATEGORIES.items() for fn in fns}

# Feature names the original used in its file names.
FEATURE_NAMES = {"clevr": "resnet_largestage3", "tdiuc": "resnet"}
MAX_QUESTION_LENGTH = {"clevr": 45, "tdiuc": 30}
UNK = "<unk>"
ORDER_SEED = 666  # the original's random.Random(666): iid shuffle and question-type order


class VQADataError(ValueError):
    """Missing, inconsistent or malformed VQA input files."""


# ------------------------------------------------------------------ small I/O
def atomic_save_npz(path: str | os.PathLike, **arrays) -> None:
    # Compressed: the padded question texts ('<U' arrays) and token rows are mostly zeros.
    atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))


@contextmanager
def atomic_npy(path: str | os.PathLike, dtype, shape):
    """A writable ``.npy`` memory map that appears at ``path`` only once the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npy")
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=tuple(shape))
        yield array
        array.flush()
        del array
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def read_json(path: str | os.PathLike, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise VQADataError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8-sig") as handle:  # -sig: a byte-order mark is not JSON's
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VQADataError(f"{what} {path} is not valid JSON ({exc}); re-create it") from None


def check_fields(entry, fields: dict[str, type], file, position: int, what: str = "question") -> None:
    """Raise a VQADataError naming ``what`` number ``position`` of ``file`` if ``entry`` holds another type in
    one of ``fields`` (a KeyError if it lacks one): str() and int() would turn a null answer into the answer
    "None" and an image_index of 1.7 into image 1, without a word."""
    if not isinstance(entry, dict):
        raise VQADataError(f"{file}: {what} {position} is a {type(entry).__name__}, not an object")
    for name, kind in fields.items():
        if name not in entry:  # a file of another kind (CLEVR's test split): the caller says which
            raise KeyError(name)
        value = entry[name]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise VQADataError(f"{file}: {what} {position} has {name} {value!r}; it must be "
                               f"{ {int: 'a non-negative integer', str: 'a string'}.get(kind, 'a ' + kind.__name__)}")


# ----------------------------------------------------------------- dictionary
class Dictionary:
    """Question words -> indices. Index ``ntoken`` is padding (the embedding has ``ntoken + 1`` rows)."""

    def __init__(self, idx2word: list[str] | None = None):
        self.idx2word = list(idx2word) if idx2word else [UNK]
        if self.idx2word[0] != UNK:
            raise VQADataError(f"dictionary must start with {UNK!r}")
        self.word2idx = {word: idx for idx, word in enumerate(self.idx2word)}

    @property
    def ntoken(self) -> int:
        return len(self.idx2word)

    @property
    def padding_idx(self) -> int:
        return len(self.idx2word)

    @staticmethod
    def words(sentence: str) -> list[str]:
        """The original's tokenisation: lower case, drop commas and '?', split "'s" off."""
        sentence = sentence.lower().replace(",", "").replace("?", "").replace("'s", " 's")
        return sentence.split()

    def add_sentence(self, sentence: str) -> None:
        for word in self.words(sentence):
            if word not in self.word2idx:
                self.word2idx[word] = len(self.idx2word)
                self.idx2word.append(word)

    def tokenize(self, sentence: str) -> list[int]:
        return [self.word2idx.get(word, 0) for word in self.words(sentence)]

    def save(self, path) -> None:
        atomic_write_text(path, json.dumps({"idx2word": self.idx2word}))

    @classmethod
    def load(cls, path) -> "Dictionary":
        data = read_json(path, "question dictionary")
        if "idx2word" not in data:
            raise VQADataError(f"{path} is not a question dictionary (no 'idx2word'); re-run preprocessing")
        return cls(data["idx2word"])


def lookup_table(values) -> dict[str, int]:
    """Most frequent first; ties keep first-seen order (Counter.most_common, as the original)."""
    return {value: idx for idx, (value, _) in enumerate(Counter(values).most_common())}


# ----------------------------------------------------------- question tables
@dataclass
class QuestionRecord:
    qid: int
    iid: int
    question: str
    answers: list[str]  # one answer (CLEVR, TDIUC) or several (VQA-style); the first is the target
    qtype: str


def write_question_files(out_dir, dataset: str, splits: dict[str, list[QuestionRecord]]) -> dict:
    """Build the lookup tables and dictionary from ``splits['train']`` and write every split's table."""
    out_dir = Path(out_dir)
    train = splits["train"]
    lut = {"a2idx": lookup_table(r.answers[0] for r in train),
           "atype2idx": {"answer_type": 0},
           "qtype2idx": lookup_table(r.qtype for r in train)}
    dictionary = Dictionary()
    for record in train:
        dictionary.add_sentence(record.question)
    max_len = MAX_QUESTION_LENGTH[dataset]
    summary = {"num_answers": len(lut["a2idx"]), "num_words": dictionary.ntoken,
               "question_types": list(lut["qtype2idx"])}
    for split, records in splits.items():
        n = len(records)
        tokens = np.full((n, max_len), dictionary.padding_idx, dtype=np.int32)
        qlen = np.zeros(n, dtype=np.int32)
        ten_aidx = np.full((n, 10), -1, dtype=np.int32)
        for row, record in enumerate(records):
            ids = dictionary.tokenize(record.question)[:max_len]
            if not ids:
                raise VQADataError(f"question {record.qid} ({split}) has no words: {record.question!r}")
            tokens[row, :len(ids)] = ids
            qlen[row] = len(ids)
            # Ten answers per question, as VQA's annotators give; one-answer datasets repeat it.
            answers = (record.answers * 10)[:10]
            ten_aidx[row] = [lut["a2idx"].get(a, -1) for a in answers]
        unknown_types = sorted({r.qtype for r in records} - set(lut["qtype2idx"]))
        if unknown_types:
            raise VQADataError(f"{split} has question types absent from train: {unknown_types}")
        atomic_save_npz(
            out_dir / f"{split}_{dataset}.npz",
            qid=np.array([r.qid for r in records], dtype=np.int64),
            iid=np.array([r.iid for r in records], dtype=np.int64),
            q=np.array([r.question for r in records], dtype=str),
            a=np.array([r.answers[0] for r in records], dtype=str),
            tokens=tokens, qlen=qlen,
            aidx=ten_aidx[:, 0].copy(), ten_aidx=ten_aidx,
            atypeidx=np.zeros(n, dtype=np.int32),
            qtypeidx=np.array([lut["qtype2idx"][r.qtype] for r in records], dtype=np.int32))
        summary[f"num_{split}_questions"] = n
    atomic_write_text(out_dir / f"LUT_{dataset}.json", json.dumps(lut, indent=1))
    dictionary.save(out_dir / f"dictionary_{dataset}.json")
    return summary


def preprocess_main(dataset: str, read_split, argv, doc: str, path_help: str) -> int:
    """The command line both preprocessing scripts share: read train and val, write the tables."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", required=True, help=path_help)
    parser.add_argument("--out", default=None, help="where to write the tables (default: --path)")
    args = parser.parse_args(argv)

    def body():
        path = Path(args.path)
        splits = {split: read_split(path, split) for split in ("train", "val")}
        print(json.dumps(write_question_files(args.out or path, dataset, splits)))
    return run_main(body)


QUESTION_FIELDS = ("qid", "iid", "q", "a", "tokens", "qlen", "aidx", "ten_aidx", "atypeidx", "qtypeidx")


@dataclass
class Questions:
    """One split's question table (numpy arrays, one row per question)."""
    qid: np.ndarray
    iid: np.ndarray
    q: np.ndarray | None  # question texts and answer strings: None unless loaded with text=True
    a: np.ndarray | None
    tokens: np.ndarray
    qlen: np.ndarray
    aidx: np.ndarray
    ten_aidx: np.ndarray
    atypeidx: np.ndarray
    qtypeidx: np.ndarray

    def __len__(self) -> int:
        return len(self.qid)


def load_questions(data_path, dataset: str, split: str, text: bool = False) -> Questions:
    """One split's table; the texts (``q``, ``a``: large for CLEVR's 700k questions) only with ``text``."""
    path = Path(data_path) / f"{split}_{dataset}.npz"
    if not path.is_file():
        raise VQADataError(f"question file not found: {path}; run vqa_experiments/{dataset}/preprocess_{dataset}.py "
                           f"--path <{dataset.upper()} folder> --out {data_path}")
    rerun = (f"re-run vqa_experiments/{dataset}/preprocess_{dataset}.py --path <{dataset.upper()} folder> "
             f"--out {data_path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [f for f in QUESTION_FIELDS if f not in data.files]
            if missing:
                raise VQADataError(f"{path} lacks {missing}; {rerun}")
            return Questions(**{f: data[f] if text or f not in ("q", "a") else None for f in QUESTION_FIELDS})
    except VQADataError:
        raise
    # truncated or damaged: not a zip, a bad member (CRC, deflate stream), a bad .npy header, a pickle
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise VQADataError(f"{path} cannot be read ({type(exc).__name__}: {exc}); it is truncated or damaged: "
                           f"{rerun}") from None


def load_lut(data_path, dataset: str) -> dict:
    path = Path(data_path) / f"LUT_{dataset}.json"
    others = sorted(p.name for p in Path(data_path).glob("LUT_*.json")) if not path.is_file() else []
    if others:  # the folder holds another dataset's preprocessed files: the config and the data disagree
        other = others[0][len("LUT_"):-len(".json")]
        raise VQADataError(f"{data_path} holds the {other} data ({others[0]}), but the config is for {dataset} "
                           f"(it reads LUT_{dataset}.json); use a {other} config or the {dataset} data folder")
    lut = read_json(path, "answer lookup table")
    for key in ("a2idx", "qtype2idx"):
        if key not in lut:
            raise VQADataError(f"LUT_{dataset}.json lacks {key!r}; re-run preprocessing")
    return lut


# -------------------------------------------------------------- stream orders
@dataclass
class StreamOrder:
    rows: np.ndarray          # training-table rows in stream order
    boundaries: list[int]     # stream positions (exclusive ends) at which to evaluate; the first ends base init
    segment_names: list[str]  # what each segment holds ("10%" or a question type)


def stream_order(train: Questions, data_order: str, num_classes: int, qtype_names: list[str],
                 seed: int = ORDER_SEED) -> StreamOrder:
    """The original's train order, reproduced exactly.

    Questions whose answer is not among the first ``num_classes`` answers are
    dropped (the original's ``train_on='valid'``). ``iid``: file order shuffled
    by ``random.Random(seed)``, evaluated every 10%. ``qtype``: grouped by
    question type, types in the order ``random.Random(seed)`` shuffles them to,
    file order within a type; evaluated at the end of each type.
    """
    valid = np.nonzero((train.aidx >= 0) & (train.aidx < num_classes))[0]
    if len(valid) == 0:
        raise VQADataError("no training question has an answer among the first --num_classes answers")
    if data_order == "iid":
        rows = [int(r) for r in valid]
        random.Random(seed).shuffle(rows)
        n = len(rows)
        boundaries = [int(n * k / 10) for k in range(1, 10)] + [n]
        return StreamOrder(np.array(rows, dtype=np.int64), boundaries, [f"{10 * k}%" for k in range(1, 11)])
    if data_order != "qtype":
        raise VQADataError(f"unknown --data_order {data_order!r}; use iid or qtype")
    types = sorted(set(int(t) for t in train.qtypeidx[valid]))
    keys = list(types)
    random.Random(seed).shuffle(keys)
    rank = {t: keys[i] for i, t in enumerate(types)}  # the original sorts by keymap[qtypeidx]
    rows = sorted(valid.tolist(), key=lambda r: rank[int(train.qtypeidx[r])])  # stable: file order within a type
    rows = np.array(rows, dtype=np.int64)
    kinds = train.qtypeidx[rows]
    boundaries = [int(i) for i in np.nonzero(np.diff(kinds))[0] + 1] + [len(rows)]
    names = [qtype_names[int(kinds[b - 1])] for b in boundaries]
    return StreamOrder(rows, boundaries, names)


def base_init_image_ids(train: Questions, order: StreamOrder) -> np.ndarray:
    """Images of the base-init questions (the first segment): what PQ is trained on."""
    return np.unique(train.iid[order.rows[:order.boundaries[0]]])


# ----------------------------------------------------------- image features
def feature_paths(data_path, dataset: str, data_order: str | None = None) -> dict[str, Path]:
    stem = Path(data_path) / f"all_{dataset}_{FEATURE_NAMES[dataset]}"
    paths = {"features": stem.with_name(stem.name + ".npy"),
             "map": Path(data_path) / f"map_{dataset}_{FEATURE_NAMES[dataset]}.json"}
    if data_order is not None:
        paths["codes"] = stem.with_name(f"{stem.name}pq_{data_order}_codes.npy")
        paths["codec"] = stem.with_name(f"{stem.name}pq_{data_order}_codec.pt")
    return paths


def load_image_map(path) -> dict[int, int]:
    data = read_json(path, "image id map")
    if "image_id_to_ix" not in data:
        raise VQADataError(f"{path} lacks 'image_id_to_ix'; re-run feature extraction")
    return {int(k): int(v) for k, v in data["image_id_to_ix"].items()}


def image_rows(questions: Questions, id_to_row: dict[int, int], split: str, source) -> np.ndarray:
    """Row of each question's image in the feature/code arrays; errors name the missing images."""
    rows = np.fromiter((id_to_row.get(int(i), -1) for i in questions.iid), dtype=np.int64, count=len(questions))
    missing = np.unique(questions.iid[rows < 0])
    if len(missing):
        raise VQADataError(f"{len(missing)} image(s) of {split} questions have no features in {source} (e.g. image "
                           f"id {int(missing[0])}); the features and the questions come from different data: "
                           "re-run feature extraction and PQ encoding on the same dataset folder")
    return rows


def load_codes(data_path, dataset: str, data_order: str) -> tuple[np.ndarray, PQCodec, dict[int, int]]:
    """Codes (memory-mapped), the codec and the image id -> row map."""
    paths = feature_paths(data_path, dataset, data_order)
    for key in ("codes", "codec", "map"):
        if not paths[key].is_file():
            raise VQADataError(f"{paths[key]} not found; run vqa_experiments/{dataset}/pq_encoding_{dataset}.py "
                               f"--data_path {data_path} --data_order {data_order}")
    rerun = (f"re-run vqa_experiments/{dataset}/pq_encoding_{dataset}.py --data_path {data_path} --data_order "
             f"{data_order} --overwrite")
    try:
        codes = np.load(paths["codes"], mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # truncated (mmap longer than the file), not a .npy
        raise VQADataError(f"{paths['codes']} cannot be read ({exc}); it is truncated or not a codes file: "
                           f"{rerun}") from None
    if codes.dtype != np.uint8 or codes.ndim != 4:
        raise VQADataError(f"{paths['codes']} holds {codes.dtype} {codes.shape}, expected uint8 (N, H, W, M); {rerun}")
    tensors, meta = load_state(paths["codec"], "PQ codec")
    centroids = tensors.get("centroids")
    if not (torch.is_tensor(centroids) and centroids.is_floating_point() and centroids.ndim == 3
            and bool(torch.isfinite(centroids).all())):
        raise VQADataError(f"{paths['codec']} holds no PQ centroids (a finite float tensor of codebooks x "
                           f"centroids x sub-vector size); {rerun}")
    codec = PQCodec(centroids)
    if codec.num_codebooks != codes.shape[3]:
        raise VQADataError(f"{paths['codes']} has {codes.shape[3]} codes per location but the codec has "
                           f"{codec.num_codebooks} codebooks; {rerun}")
    id_to_row = load_image_map(paths["map"])
    if len(id_to_row) != len(codes):
        raise VQADataError(f"{paths['map']} maps {len(id_to_row)} images but {paths['codes']} has {len(codes)} rows; "
                           "re-run feature extraction and PQ encoding together")
    return codes, codec, id_to_row
