"""Streaming VQA with REMIND: offline (``--full``), fine-tune (``--stream``) and REMIND (``--stream_with_rehearsal``).

    python -m vqa_experiments.vqa_trainer --config_name CLEVR_streaming --expt_name clevr_remind_qtype \\
        --data_path /data/CLEVR_v1.0 --data_order qtype --stream_with_rehearsal

Streaming modes first train offline on the base-init segment (iid: the first
10% of the shuffled questions; qtype: the first question type) for the
config's ``max_epochs``, then learn one question at a time; REMIND adds
``replays_per_step`` (50; the original config's ``num_rehearsal_samples``) replayed (question, PQ codes, answer) triples
to every step. Evaluation on all validation questions at every boundary of the
order (iid: every 10%; qtype: the end of each type). ``--full`` trains a fresh
network offline on all data up to each boundary: the upper bound.

Outputs in ``--output_dir`` (default ``snapshots/<expt_name>``):
``summary.json`` (boundaries, overall, mean_per_type, per_type), ``train_log.csv``,
``results_boundary_<n>.json`` (question id -> predicted answer index),
``accuracy.png``, ``compute.json`` (per boundary: questions streamed, optimizer
updates, samples through the network, seconds by phase, questions per second,
peak memory; :mod:`remind.compute`) and ``checkpoint.pt``. Re-running the same
command resumes from the last boundary.
"""
from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from remind import budget, reporting
from remind.autosave import Autosave, check_every_minutes
from remind.buffer import ReplayBuffer, SharedCodes, entry_bytes
from remind.checkpoint import (
    CheckpointError,
    atomic_write_text,
    load_run_state,
    remove_stale_temporaries,
    rng_from_json,
    rng_state_to_json,
    save_run_state,
)
from remind.cli import add_preflight_flags, check_device, default_device, run_main
from remind.compute import ComputeMeter, summary_line
from remind.learner import ReplayBatch, StreamingLearner
from remind.lock import FolderLock
from vqa_experiments.configs import get_config, override
from vqa_experiments.metric import accuracy_by_type
from vqa_experiments.vqa_data import (
    FEATURE_NAMES,
    Dictionary,
    VQADataError,
    image_rows,
    load_codes,
    load_lut,
    load_questions,
    stream_order,
)
from vqa_experiments.vqa_models import build_model, load_word_vectors

CHECKPOINT = "checkpoint.pt"
# Flags that must match for a resumed run (others, e.g. --device, may change).
RUN_IDENTITY = ("config_name", "data_order", "mode", "rehearsal_mode", "max_buffer_size",
                "buffer_replacement_strategy", "lr", "use_exponential_averaging", "seed", "glove", "set")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_name", required=True, help="CLEVR_streaming, TDIUC_streaming, CLEVR_demo, ...")
    parser.add_argument("--expt_name", required=True)
    parser.add_argument("--data_path", required=True,
                        help="work folder with the preprocessed questions and the PQ codes")
    parser.add_argument("--data_order", required=True, choices=["iid", "qtype"])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--full", action="store_true", help="offline upper bound at every boundary")
    mode.add_argument("--stream", action="store_true", help="fine-tune: one question at a time, no replay")
    mode.add_argument("--stream_with_rehearsal", action="store_true", help="REMIND")
    parser.add_argument("--rehearsal_mode", default="default", choices=["default", "limited_buffer"])
    parser.add_argument("--max_buffer_size", type=int, default=None, help="questions kept (limited_buffer)")
    parser.add_argument("--buffer_replacement_strategy", default="random", choices=["queue", "random"],
                        help="which question of the most frequent answer is evicted: random or the oldest")
    parser.add_argument("--lr", type=float, default=None, help="default: the config's")
    parser.add_argument("--use_exponential_averaging", action="store_true",
                        help="evaluate an exponential moving average of the weights")
    parser.add_argument("--output_dir", default=None, help="default: snapshots/<expt_name>")
    parser.add_argument("--glove", default=None,
                        help="GloVe text file (or .npy matrix) to initialise word embeddings; default random")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field, e.g. --set max_epochs=5 (repeatable)")
    parser.add_argument("--checkpoint_every_minutes", type=float, default=10.0,
                        help="also save checkpoint.pt between boundaries this often while streaming (fractions "
                             "allowed; 0: only at boundaries); SIGINT/SIGTERM save it too (10)")
    add_preflight_flags(parser, "--output_dir")
    parser.add_argument("--device", default=default_device(), help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--seed", type=int, default=0, help="network init, dropout, base-init shuffles, replay draws")
    return parser


def run_mode(args) -> str:
    return "full" if args.full else "stream" if args.stream else "stream_with_rehearsal"


# ------------------------------------------------------------------- the data
class VQAData:
    """Question tables and image codes, on the training device; batches decode codes to feature maps."""

    def __init__(self, args, config):
        dataset = config.dataset
        self.lut = load_lut(args.data_path, dataset)
        self.type_names = list(self.lut["qtype2idx"])
        self.dictionary = Dictionary.load(Path(args.data_path) / f"dictionary_{dataset}.json")
        self.train = load_questions(args.data_path, dataset, "train")
        self.val = load_questions(args.data_path, dataset, "val")
        codes, codec, id_to_row = load_codes(args.data_path, dataset, args.data_order)
        paths_hint = f"the map file in {args.data_path}"
        self.train_image = image_rows(self.train, id_to_row, "train", paths_hint)
        self.val_image = image_rows(self.val, id_to_row, "val", paths_hint)
        for name, table in (("train", self.train), ("val", self.val)):
            if table.tokens.size and table.tokens.max() > self.dictionary.ntoken:
                raise VQADataError(f"{name} questions use word indices past the dictionary; the question files and "
                                   f"dictionary_{dataset}.json come from different preprocessing runs")
        self.num_classes = min(config.num_classes, len(self.lut["a2idx"]))
        self.order = stream_order(self.train, args.data_order, self.num_classes, self.type_names)
        self.device = torch.device(args.device)
        self.codec = codec.to(self.device)
        self.codes = torch.from_numpy(np.array(codes)).to(self.device)  # a writable copy of the memory map
        # uint8 codes cannot exceed a 256-centroid codec: scan only for smaller codebooks
        if codec.codebook_size < 256 and len(self.codes) and int(self.codes.max()) >= codec.codebook_size:
            raise VQADataError(f"the PQ codes of {args.data_path} hold code {int(self.codes.max())} but the codec has "
                               f"{codec.codebook_size} centroids per codebook: codes and codec come from different "
                               "runs; re-run PQ encoding with --overwrite")
        self.code_shape = tuple(self.codes.shape[1:])
        self.imnorm = config.imnorm
        self.tables = {}
        for name, table, image in (("train", self.train, self.train_image), ("val", self.val, self.val_image)):
            self.tables[name] = {
                "tokens": torch.from_numpy(table.tokens.astype(np.int64)).to(self.device),
                "qlen": torch.from_numpy(table.qlen.astype(np.int64)),  # packing wants lengths on the CPU
                "answers": torch.from_numpy(table.aidx.astype(np.int64)).to(self.device),
                "image": torch.from_numpy(image).to(self.device),
            }

    def normalise(self, maps: torch.Tensor) -> torch.Tensor:
        if self.imnorm:  # the original's imnorm: unit L2 norm of each location's feature vector
            maps = maps / (maps.norm(dim=1, keepdim=True) + 1e-8)
        return maps

    def shared_codes(self) -> SharedCodes:
        """The image codes, held once, and the image of every training question: what the buffer refers to."""
        return SharedCodes(self.codes, self.tables["train"]["image"])  # the device copy the tables hold

    def image_codes(self, row: int) -> torch.Tensor:
        """``(H, W, M)`` codes of training question ``row``'s image, on the device."""
        return self.codes[int(self.train_image[row])]

    def question_inputs(self, split: str, rows, maps: torch.Tensor):
        """(tokens, maps, qlen) of table rows whose decoded maps ``(B, C, H, W)`` are given (maps normalised)."""
        table = self.tables[split]
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        return (table["tokens"].index_select(0, index.to(self.device)), self.normalise(maps),
                table["qlen"].index_select(0, index))

    def batch(self, split: str, rows):
        """(tokens, maps, qlen, answers) of table rows, maps decoded from their images' codes."""
        table = self.tables[split]
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64)).to(self.device)
        codes = self.codes.index_select(0, table["image"].index_select(0, index))
        return (*self.question_inputs(split, rows, self.codec.decode_maps(codes)),
                table["answers"].index_select(0, index))


# -------------------------------------------------------------------- the model
class VQAModel:
    """The VQA adapter of the streaming learner: network, optimizer, optional weight average.

    Offline training (base init, ``--full``) takes mini-batches of table rows; streaming goes through
    :class:`remind.learner.StreamingLearner` (:meth:`streaming_learner`), with :meth:`replay_loss` as its
    batch builder: the decoded maps of the new question and its replays get their questions' tokens.
    """

    def __init__(self, args, config, data: VQAData, glove: np.ndarray | None, compute: ComputeMeter | None = None):
        self.config, self.data, self.device = config, data, data.device
        self.compute = compute if compute is not None else ComputeMeter(self.device)  # the run's meter
        self.net = build_model(config, data.dictionary.ntoken, data.codec.num_channels).to(self.device)
        if glove is not None:
            self.net.embedding.init_embedding(glove)
            if config.freeze_embedding:
                self.net.embedding.emb.weight.requires_grad_(False)
        self.ema = copy.deepcopy(self.net) if args.use_exponential_averaging else None
        if self.ema is not None:
            self.ema.requires_grad_(False)
        params = [p for p in self.net.parameters() if p.requires_grad]
        if config.optimizer != "adamax":
            raise ValueError(f"unknown optimizer {config.optimizer!r}; the configs use adamax")
        self.optimizer = torch.optim.Adamax(params, lr=config.lr)
        self.criterion = nn.CrossEntropyLoss()

    def loss(self, tokens, maps, qlen, answers) -> torch.Tensor:
        self.net.train()
        return self.criterion(self.net(tokens, maps, qlen), answers)

    def replay_loss(self, batch: ReplayBatch) -> torch.Tensor:
        """The learner's batch builder: tokens and lengths of the batch's question rows, answers = labels."""
        return self.loss(*self.data.question_inputs("train", batch.ids, batch.maps), batch.labels)

    @torch.no_grad()
    def update_average(self) -> None:
        if self.ema is not None:
            for avg, p in zip(self.ema.parameters(), self.net.parameters()):
                avg.mul_(self.config.ema_decay).add_(p, alpha=1 - self.config.ema_decay)

    def step(self, tokens, maps, qlen, answers) -> torch.Tensor:
        """One mini-batch step (offline training)."""
        loss = self.loss(tokens, maps, qlen, answers)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.compute.count_update(len(answers))
        self.update_average()
        return loss.detach()

    def streaming_learner(self, buffer: ReplayBuffer | None, rng: np.random.Generator, replays_per_step: int,
                          strategy: str) -> StreamingLearner:
        """The shared learner over this network; the new question enters the buffer before the draw."""
        return StreamingLearner(self.net, self.optimizer, self.data.codec, buffer, rng,
                                replays_per_step=replays_per_step, insert_first=True, replacement=strategy,
                                after_update=self.update_average, compute=self.compute)

    @property
    def eval_net(self) -> nn.Module:
        return self.ema if self.ema is not None else self.net

    def train_offline(self, rows: np.ndarray, epochs: int, rng: np.random.Generator, label: str) -> None:
        """Mini-batch epochs over ``rows`` in a fresh random order each epoch."""
        size = self.config.train_batch_size
        for epoch in range(epochs):
            start, total = time.time(), 0.0
            order = rows[rng.permutation(len(rows))]
            for i in range(0, len(order), size):
                total += float(self.step(*self.data.batch("train", order[i:i + size])))
            print(f"{label} epoch {epoch + 1}/{epochs}: mean loss {total / max(1, -(-len(order) // size)):.4f} "
                  f"({time.time() - start:.1f} s)", flush=True)

    def evaluate(self) -> tuple[dict, np.ndarray]:
        with self.compute.phase("evaluation"):
            return self._evaluate()

    @torch.no_grad()
    def _evaluate(self) -> tuple[dict, np.ndarray]:
        self.compute.count_evaluated(len(self.data.val))
        net = self.eval_net
        net.eval()
        n = len(self.data.val)
        predictions = np.empty(n, dtype=np.int64)
        for i in range(0, n, self.config.val_batch_size):
            rows = np.arange(i, min(n, i + self.config.val_batch_size))
            tokens, maps, qlen, _ = self.data.batch("val", rows)
            predictions[rows] = net(tokens, maps, qlen).argmax(1).cpu().numpy()
        val = self.data.val
        return accuracy_by_type(predictions, val.aidx, val.qtypeidx, self.data.type_names), predictions


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, model: VQAModel, learner: StreamingLearner | None, rng, position: int,
                    summary: dict, identity: dict, segment: int) -> None:
    """The run state in the project's one layout: the learner's state when streaming, else the network's
    (with the run's compute meter in its metadata)."""
    with model.compute.phase("checkpoint"):
        _save_checkpoint(path, model, learner, rng, position, summary, identity, segment)


def _save_checkpoint(path: Path, model: VQAModel, learner: StreamingLearner | None, rng, position: int,
                     summary: dict, identity: dict, segment: int) -> None:
    if learner is not None:
        state = {"learner": learner.state_dict()}
    else:
        state = {"network": model.net.state_dict(), "optimizer": model.optimizer.state_dict(),
                 "torch_rng": torch.get_rng_state()}
    if model.ema is not None:
        state["ema"] = model.ema.state_dict()
    progress = {"position": position, "segment": segment, "summary": summary, "compute": model.compute.state_dict()}
    if rng is not None:
        progress["rng"] = rng_state_to_json(rng)
    save_run_state(path, state, identity, progress)


def load_checkpoint(path: Path, identity: dict) -> tuple[dict, dict]:
    return load_run_state(path, identity, "VQA checkpoint", allow_flag=False)


# -------------------------------------------------------------------- outputs
def new_summary(args, config, data: VQAData) -> dict:
    return {"expt_name": args.expt_name, "mode": run_mode(args), "data_order": args.data_order,
            "config": dataclasses.asdict(config), "question_types": data.type_names,
            "stream_boundaries": data.order.boundaries, "segments": [], "boundaries": [], "overall": [],
            "mean_per_type": [], "per_type": {name: [] for name in data.type_names}}


def record(out_dir: Path, summary: dict, boundary: int, segment: str, accuracy: dict, predictions: np.ndarray,
           qids: np.ndarray, compute: ComputeMeter) -> None:
    summary["boundaries"].append(int(boundary))
    summary["segments"].append(segment)
    summary["overall"].append(round(accuracy["overall"], 4))
    summary["mean_per_type"].append(round(accuracy["mean_per_type"], 4))
    for name in summary["per_type"]:
        summary["per_type"][name].append(round(accuracy["per_type"].get(name, float("nan")), 4))
    atomic_write_text(out_dir / f"results_boundary_{boundary}.json",
                      json.dumps({str(int(q)): int(p) for q, p in zip(qids, predictions)}))
    write_outputs(out_dir, summary)
    print(f"[{summary['mode']}] after {boundary} questions ({segment}): overall {accuracy['overall']:.2f}%, "
          f"mean per type {accuracy['mean_per_type']:.2f}%", flush=True)
    print(summary_line(compute.record(int(boundary), "questions")), flush=True)
    compute.write(out_dir)


def write_outputs(out_dir: Path, summary: dict) -> None:
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
    text = io.StringIO()
    writer = csv.writer(text)
    types = list(summary["per_type"])
    writer.writerow(["questions_seen", "segment", "overall", "mean_per_type", *types])
    for i, boundary in enumerate(summary["boundaries"]):
        writer.writerow([boundary, summary["segments"][i], summary["overall"][i], summary["mean_per_type"][i],
                         *[summary["per_type"][t][i] for t in types]])
    atomic_write_text(out_dir / "train_log.csv", text.getvalue())
    reporting.plot_accuracies({summary["expt_name"]: summary}, summary["boundaries"], out_dir / "accuracy.png",
                              metrics=("overall", "mean_per_type"), xlabel="training questions seen")


def per_type_table(summary: dict) -> str:
    types = list(summary["per_type"])
    header = ["questions seen", "segment", "overall", "mean per type", *types]
    rows = [[str(boundary), summary["segments"][i], f"{summary['overall'][i]:.2f}",
             f"{summary['mean_per_type'][i]:.2f}", *[f"{summary['per_type'][t][i]:.2f}" for t in types]]
            for i, boundary in enumerate(summary["boundaries"])]
    return reporting.markdown_table(header, rows)


# ---------------------------------------------------------------------- modes
def make_buffer(args, data: VQAData) -> ReplayBuffer:
    """References (question row, answer) to codes held once per image; 10 bytes per stored question."""
    max_size = args.max_buffer_size if args.rehearsal_mode == "limited_buffer" else None
    return ReplayBuffer(data.code_shape, data.num_classes, max_size=max_size, device=data.device,
                        shared_codes=data.shared_codes())


def streaming(args, config, data: VQAData, model: VQAModel, out_dir: Path, identity: dict,
              autosave: Autosave | None = None) -> dict:
    order = data.order
    buffer = make_buffer(args, data) if args.stream_with_rehearsal else None
    replays = config.replays_per_step if args.stream_with_rehearsal else 0
    learner = model.streaming_learner(buffer, np.random.default_rng(args.seed), replays,
                                      args.buffer_replacement_strategy)
    ckpt = out_dir / CHECKPOINT
    if ckpt.exists():
        state, meta = load_checkpoint(ckpt, identity)
        try:
            learner.load_state_dict(state["learner"], restore_global_rng=True)  # the script owns the process
            if model.ema is not None:
                model.ema.load_state_dict(state["ema"])
        except (KeyError, RuntimeError, ValueError) as exc:  # tensors of other shapes, entries missing
            raise CheckpointError(f"{ckpt} does not fit this run's model and data ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:160]}); it was written by another version or "
                                  "edited: delete it to start this run again, or use another --expt_name") from None
        position, summary = meta["position"], meta["summary"]
        if isinstance(meta.get("compute"), dict):
            model.compute.load_state_dict(meta["compute"])
        print(f"resuming {args.expt_name} after {position} questions", flush=True)
    else:
        summary = new_summary(args, config, data)
        base = order.rows[:order.boundaries[0]]
        print(f"base init: {len(base)} questions ({order.segment_names[0]}), {config.max_epochs} epochs", flush=True)
        with model.compute.phase("base_init"):
            model.train_offline(base, config.max_epochs, learner.rng, "base init")
            # the base-init questions, in one batch when they fit, else one by one with eviction (the original)
            learner.store(None, data.train.aidx[base], base, evict_overflow=True)
        position = order.boundaries[0]
        accuracy, predictions = model.evaluate()
        record(out_dir, summary, position, order.segment_names[0], accuracy, predictions, data.val.qid,
               model.compute)
        save_checkpoint(ckpt, model, learner, None, position, summary, identity, 0)
        if autosave is not None:
            autosave.checkpointed(str(ckpt))
    compute = model.compute
    with compute.phase("replay"):  # paused by the evaluations and checkpoints inside
        summary = _stream(args, order, data, model, learner, out_dir, identity, autosave, summary, position, ckpt)
    return summary


def _stream(args, order, data: VQAData, model: VQAModel, learner: StreamingLearner, out_dir: Path, identity: dict,
            autosave: Autosave | None, summary: dict, position: int, ckpt: Path) -> dict:
    """One step per question from ``position`` to the end, evaluating and saving at every boundary."""
    compute = model.compute
    start, end = time.time(), order.boundaries[-1]
    boundary_index = {b: k for k, b in enumerate(order.boundaries)}
    segment = int(np.searchsorted(order.boundaries, position, side="right"))  # the one being streamed

    def save_here(done: int) -> str:  # between boundaries: the summary is the last boundary's
        save_checkpoint(ckpt, model, learner, None, done, summary, identity, segment)
        return f"{ckpt}, after {done} questions"
    for position in range(position, end):
        row = int(order.rows[position])
        learner.step(data.image_codes(row), int(data.train.aidx[row]), row, model.replay_loss)
        compute.count_streamed(1)
        done = position + 1
        if done in boundary_index:
            rate = (done - order.boundaries[0]) / max(1e-9, time.time() - start)
            print(f"streamed to {done}/{end} ({rate:.1f} questions/s)", flush=True)
            accuracy, predictions = model.evaluate()
            record(out_dir, summary, done, order.segment_names[boundary_index[done]], accuracy, predictions,
                   data.val.qid, compute)
            save_checkpoint(ckpt, model, learner, None, done, summary, identity, boundary_index[done])
            segment = boundary_index[done] + 1
            if autosave is not None:
                autosave.checkpointed(str(ckpt))
        elif autosave is not None:
            autosave.tick(lambda: save_here(done))
    return summary


def offline(args, config, data: VQAData, out_dir: Path, identity: dict, glove,
            autosave: Autosave | None = None) -> dict:
    """``--full``: a fresh network trained offline on everything up to each boundary."""
    order = data.order
    ckpt = out_dir / CHECKPOINT
    compute = ComputeMeter(data.device)
    if ckpt.exists():
        _, meta = load_checkpoint(ckpt, identity)
        rng, summary, first = rng_from_json(meta["rng"]), meta["summary"], meta["segment"] + 1
        if isinstance(meta.get("compute"), dict):
            compute.load_state_dict(meta["compute"])
        print(f"resuming {args.expt_name} at segment {first + 1}/{len(order.boundaries)}", flush=True)
    else:
        rng, summary, first = np.random.default_rng(args.seed), new_summary(args, config, data), 0
    for k in range(first, len(order.boundaries)):
        boundary = order.boundaries[k]
        torch.manual_seed(args.seed * 1000 + k)
        model = VQAModel(args, config, data, glove, compute)
        with compute.phase("base_init" if k == 0 else "offline"):
            model.train_offline(order.rows[:boundary], config.max_epochs, rng, f"offline to {boundary}")
        if k > 0:
            compute.count_streamed(boundary - order.boundaries[k - 1])
        accuracy, predictions = model.evaluate()
        record(out_dir, summary, boundary, order.segment_names[k], accuracy, predictions, data.val.qid, compute)
        save_checkpoint(ckpt, model, None, rng, boundary, summary, identity, k)
        if autosave is not None:
            autosave.checkpointed(str(ckpt))
    return summary


# -------------------------------------------------------------------- budget
def vqa_budget(title: str, mode: str, train_questions: int, val_questions: int, images: int, boundaries: int,
               code_shape: tuple[int, int, int], codebook_size: int, num_channels: int, num_classes: int,
               max_buffer_size: int | None, net: nn.Module, ema: bool, table_bytes: int,
               out_dir: Path | None) -> budget.Budget:
    """The preflight table of a VQA run (:mod:`remind.budget`).

    The buffer refers to codes held once per image (``remind.buffer.SharedCodes``: every image's codes and
    an int64 image row per training question), 10 bytes per stored question. ``checkpoint.pt`` is rewritten
    at each boundary (two copies at once while it is replaced); each boundary adds its predictions as JSON
    (about 16 bytes per validation question). ``table_bytes``: the question tables held on the device.
    """
    code_bytes = int(np.prod(code_shape))
    stored = 0 if mode != "stream_with_rehearsal" else (
        train_questions if max_buffer_size is None else min(train_questions, max_buffer_size))
    entries = stored * entry_bytes(num_classes)
    shared = images * code_bytes + 8 * train_questions
    weights, trainable = budget.module_bytes(net), budget.trainable_bytes(net)
    codebooks = codebook_size * num_channels * 4
    optimizer = 2 * trainable  # Adamax: exp_avg and exp_inf
    checkpoint = weights + optimizer + codebooks + entries + (weights if ema else 0)
    results = val_questions * 16
    table = budget.Budget(title, save_dir=out_dir)
    table.add("questions (train / val)", f"{train_questions:,} / {val_questions:,}")
    table.add("images with codes", images)
    table.add("evaluations (boundaries)", boundaries)
    table.add("buffer at its largest", f"{stored:,} questions x {entry_bytes(num_classes)} B "
                                       f"= {budget.human(entries)}, referring to {images:,} images' codes "
                                       f"({'x'.join(map(str, code_shape))} = {code_bytes:,} B each) + image rows "
                                       f"= {budget.human(shared)}")
    table.add("codebooks", f"{code_shape[-1]} x {codebook_size} centroids of {num_channels // code_shape[-1]} "
                           f"floats = {budget.human(codebooks)}")
    table.add("device memory", f"codes and image rows {budget.human(shared)} + question tables "
                               f"{budget.human(table_bytes)} + buffer {budget.human(entries)} + network (weights, "
                               f"gradients, Adamax state{', average' if ema else ''}) "
                               f"{budget.human(weights + trainable + optimizer + (weights if ema else 0))}"
                               " + activations of one step")
    table.add("per checkpoint", f"checkpoint.pt {budget.human(checkpoint)} (rewritten each boundary), "
                                f"predictions {budget.human(results)} per boundary")
    # checkpoint.pt and the copy that replaces it, the predictions of every boundary, summary, log and plot
    table.disk_bytes = 2 * checkpoint + boundaries * results + 200_000
    table.add_disk()
    return table


def run_budget(args, config, data: VQAData, out_dir: Path) -> budget.Budget:
    with torch.random.fork_rng(devices=[]):  # sizes only: the run's own draws stay untouched
        net = build_model(config, data.dictionary.ntoken, data.codec.num_channels)
    if config.freeze_embedding and args.glove is not None:
        net.embedding.emb.weight.requires_grad_(False)
    tables = sum(t.numel() * t.element_size() for table in data.tables.values() for t in table.values())
    return vqa_budget(f"preflight: {args.expt_name} ({run_mode(args)} on {config.dataset}, {args.data_order})",
                      run_mode(args), int(data.order.boundaries[-1]), len(data.val), len(data.codes),
                      len(data.order.boundaries), data.code_shape, data.codec.codebook_size,
                      data.codec.num_channels, data.num_classes,
                      args.max_buffer_size if args.rehearsal_mode == "limited_buffer" else None, net,
                      args.use_exponential_averaging, tables, out_dir)


# ----------------------------------------------------------------------- main
def prepare(args):
    """Everything that can fail on bad input, before anything is written."""
    config = get_config(args.config_name)
    config = override(config, args.set)
    if args.lr is not None:
        config = dataclasses.replace(config, lr=args.lr)
    for name in ("max_epochs", "train_batch_size", "val_batch_size", "num_classes", "emb_dim", "lstm_out",
                 "num_hidden", "num_attn_hops", "attention_hidden", "mac_dim", "mac_max_step"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(config, name)} (--set {name}=...)")
    if config.replays_per_step < 0:
        raise ValueError(f"replays_per_step must be >= 0 (--set num_rehearsal_samples=...), got "
                         f"{config.replays_per_step}")
    if not (config.lr > 0 and math.isfinite(config.lr)):  # 1e400 parses as inf; NaN fails every comparison
        problem = "not a finite number" if not math.isfinite(config.lr) else "not positive"
        raise ValueError(f"lr must be finite and lr > 0 (--set lr=... / --lr); got {config.lr}, {problem}")
    for name, choices in (("dataset", FEATURE_NAMES), ("model", ("smac", "updown")), ("optimizer", ("adamax",))):
        if getattr(config, name) not in choices:
            raise ValueError(f"--set {name}={getattr(config, name)}: {name} must be one of {', '.join(choices)}")
    if not 0 <= config.mac_dropout < 1 or not 0 <= config.ema_decay <= 1:  # NaN fails both
        raise ValueError(f"mac_dropout must be in [0, 1) and ema_decay in [0, 1], got {config.mac_dropout} and "
                         f"{config.ema_decay} (--set mac_dropout=... / ema_decay=...)")
    if args.max_buffer_size is not None and args.rehearsal_mode != "limited_buffer":
        raise ValueError(f"--max_buffer_size {args.max_buffer_size} only applies with --rehearsal_mode "
                         "limited_buffer (the default keeps every question); add that flag or drop this one")
    if args.rehearsal_mode == "limited_buffer":
        if args.max_buffer_size is None or args.max_buffer_size <= 0:
            raise ValueError("--rehearsal_mode limited_buffer needs a positive --max_buffer_size")
        if not args.stream_with_rehearsal:
            raise ValueError("--rehearsal_mode limited_buffer only applies to --stream_with_rehearsal")
    check_device(args.device)
    if args.seed < 0:  # numpy's generators take no negative seed
        raise ValueError(f"--seed must be non-negative, got {args.seed}")
    check_every_minutes(args.checkpoint_every_minutes)
    data = VQAData(args, config)
    config = dataclasses.replace(config, num_classes=data.num_classes)
    glove = None
    if args.glove is not None:
        glove, found = load_word_vectors(args.glove, data.dictionary)
        if glove.shape != (data.dictionary.ntoken, config.emb_dim):  # refuse here, before the output folder
            raise VQADataError(f"word vectors of {args.glove} have shape {glove.shape}, the model needs ({data.dictionary.ntoken}, "
                               f"{config.emb_dim}); set the embedding size with --set emb_dim={glove.shape[-1]}")
        print(f"word vectors: {found} of {data.dictionary.ntoken} question words found in {args.glove}"
              + (" (frozen)" if config.freeze_embedding else ""))
    elif config.expects_glove:
        print(f"warning: --config_name {args.config_name} expects GloVe word vectors, as the original used "
              "(glove.6B.300d.txt" + ("; S-MAC keeps them frozen" if config.freeze_embedding else "") +
              "), but no --glove was given: the embeddings start random and are trained. Get glove.6B.zip from "
              "https://nlp.stanford.edu/projects/glove/ and pass --glove /path/to/glove.6B.300d.txt "
              "(GLOVE= in the run scripts)", file=sys.stderr, flush=True)
    return config, data, glove


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)

    def body():
        config, data, glove = prepare(args)
        out_dir = Path(args.output_dir or Path("snapshots") / args.expt_name)
        identity = {k: (run_mode(args) if k == "mode" else getattr(args, k)) for k in RUN_IDENTITY}
        # what changes the computation (expects_glove only decides whether to warn)
        identity["config"] = {k: v for k, v in dataclasses.asdict(config).items() if k != "expects_glove"}
        if (out_dir / CHECKPOINT).exists():
            load_checkpoint(out_dir / CHECKPOINT, identity)  # refuse a different run's folder before writing
        plan = run_budget(args, config, data, out_dir)
        if plan.preflight(args.dry_run, args.skip_disk_check):
            return 0
        with FolderLock(out_dir, "output folder"), Autosave(args.checkpoint_every_minutes) as autosave:
            for stale in remove_stale_temporaries(out_dir):
                print(f"removed {stale}, left by a save that was interrupted", flush=True)
            print(f"git commit {reporting.git_commit()}; {run_mode(args)} on {config.dataset} ({config.model}), "
                  f"{len(data.train)} train / {len(data.val)} val questions, {data.num_classes} answers, "
                  f"codes {data.code_shape}, device {data.device}", flush=True)
            torch.manual_seed(args.seed)
            if args.full:
                summary = offline(args, config, data, out_dir, identity, glove, autosave)
            else:
                summary = streaming(args, config, data, VQAModel(args, config, data, glove), out_dir, identity,
                                    autosave)
        print(per_type_table(summary))
    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
