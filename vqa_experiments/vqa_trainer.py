"""Streaming VQA with REMIND: offline (``--full``), fine-tune (``--stream``) and REMIND (``--stream_with_rehearsal``).

    python -m vqa_experiments.vqa_trainer --config_name CLEVR_streaming --expt_name clevr_remind_qtype \\
        --data_path /data/CLEVR_v1.0 --data_order qtype --stream_with_rehearsal

Streaming modes first train offline on the base-init segment (iid: the first
10% of the shuffled questions; qtype: the first question type) for the
config's ``max_epochs``, then learn one question at a time; REMIND adds
``num_rehearsal_samples`` (50) replayed (question, PQ codes, answer) triples
to every step. Evaluation on all validation questions at every boundary of the
order (iid: every 10%; qtype: the end of each type). ``--full`` trains a fresh
network offline on all data up to each boundary: the upper bound.

Outputs in ``--output_dir`` (default ``snapshots/<expt_name>``):
``summary.json`` (boundaries, overall, mean_per_type, per_type), ``train_log.csv``,
``results_boundary_<n>.json`` (question id -> predicted answer index),
``accuracy.png`` and ``checkpoint.pt``. Re-running the same command resumes from
the last boundary.
"""
from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from remind import reporting
from remind.buffer import ReplayBuffer
from remind.checkpoint import CheckpointError, atomic_torch_save, atomic_write_text, rng_from_json, rng_state_to_json, \
    safe_load
from vqa_experiments.configs import get_config, override
from vqa_experiments.metric import accuracy_by_type
from vqa_experiments.vqa_data import Dictionary, VQADataError, image_rows, load_codes, load_lut, \
    load_questions, stream_order
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
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
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

    def maps(self, codes: torch.Tensor) -> torch.Tensor:
        maps = self.codec.decode_maps(codes)  # (B, C, H, W)
        if self.imnorm:  # the original's imnorm: unit L2 norm of each location's feature vector
            maps = maps / (maps.norm(dim=1, keepdim=True) + 1e-8)
        return maps

    def batch(self, split: str, rows, codes: torch.Tensor | None = None):
        """(tokens, maps, qlen, answers) of table rows; ``codes`` overrides the image codes (replay)."""
        table = self.tables[split]
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        dev_index = index.to(self.device)
        if codes is None:
            codes = self.codes.index_select(0, table["image"].index_select(0, dev_index))
        return (table["tokens"].index_select(0, dev_index), self.maps(codes), table["qlen"].index_select(0, index),
                table["answers"].index_select(0, dev_index))


# -------------------------------------------------------------------- learner
class Learner:
    """Network, optimizer, optional weight average and replay buffer; everything a checkpoint holds."""

    def __init__(self, args, config, data: VQAData, glove: np.ndarray | None):
        self.config, self.data, self.device = config, data, data.device
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

    def step(self, tokens, maps, qlen, answers) -> float:
        self.net.train()
        loss = self.criterion(self.net(tokens, maps, qlen), answers)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            with torch.no_grad():
                for avg, p in zip(self.ema.parameters(), self.net.parameters()):
                    avg.mul_(self.config.ema_decay).add_(p, alpha=1 - self.config.ema_decay)
        return loss.detach()

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

    @torch.no_grad()
    def evaluate(self) -> tuple[dict, np.ndarray]:
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
def save_checkpoint(path: Path, learner: Learner, buffer: ReplayBuffer | None, rng, position: int,
                    summary: dict, identity: dict, segment: int) -> None:
    state = {
        "model": learner.net.state_dict(),
        "optimizer": learner.optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "meta_json": json.dumps({"position": position, "segment": segment, "identity": identity,
                                 "summary": summary, "rng": rng_state_to_json(rng)}),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if learner.ema is not None:
        state["ema"] = learner.ema.state_dict()
    if buffer is not None:
        state["buffer"] = buffer.state_dict()
    atomic_torch_save(state, path)


def load_checkpoint(path: Path, identity: dict) -> tuple[dict, dict]:
    state = safe_load(path, "VQA checkpoint")
    if not isinstance(state, dict) or "meta_json" not in state:
        raise CheckpointError(f"{path} is not a vqa_trainer checkpoint")
    meta = json.loads(state["meta_json"])
    if meta["identity"] != identity:
        diff = {k: (meta["identity"].get(k), v) for k, v in identity.items() if meta["identity"].get(k) != v}
        raise VQADataError(f"{path} belongs to a run with other settings {diff} (saved, now); use another "
                           "--expt_name / --output_dir, or delete that folder to start over")
    return state, meta


def restore(learner: Learner, state: dict, buffer: ReplayBuffer | None, full_mode: bool) -> None:
    learner.net.load_state_dict(state["model"])
    learner.optimizer.load_state_dict(state["optimizer"])
    if learner.ema is not None:
        learner.ema.load_state_dict(state["ema"])
    if buffer is not None:
        buffer.load_state_dict(state["buffer"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available() and not full_mode:
        torch.cuda.set_rng_state_all(state["cuda_rng"])


# -------------------------------------------------------------------- outputs
def new_summary(args, config, data: VQAData) -> dict:
    return {"expt_name": args.expt_name, "mode": run_mode(args), "data_order": args.data_order,
            "config": dataclasses.asdict(config), "question_types": data.type_names,
            "stream_boundaries": data.order.boundaries, "segments": [], "boundaries": [], "overall": [],
            "mean_per_type": [], "per_type": {name: [] for name in data.type_names}}


def record(out_dir: Path, summary: dict, boundary: int, segment: str, accuracy: dict, predictions: np.ndarray,
           qids: np.ndarray) -> None:
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
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, boundary in enumerate(summary["boundaries"]):
        cells = [str(boundary), summary["segments"][i], f"{summary['overall'][i]:.2f}",
                 f"{summary['mean_per_type'][i]:.2f}", *[f"{summary['per_type'][t][i]:.2f}" for t in types]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- modes
def make_buffer(args, data: VQAData) -> ReplayBuffer:
    max_size = args.max_buffer_size if args.rehearsal_mode == "limited_buffer" else None
    return ReplayBuffer(data.code_shape, data.num_classes, max_size=max_size, device=data.device)


def buffer_insert(buffer: ReplayBuffer, data: VQAData, rows: np.ndarray, rng, strategy: str) -> None:
    """Store the base-init questions (their codes, answer and row): in one batch when they fit, else one by
    one with eviction, as the original's sampler did."""
    image = data.train_image[rows]
    codes = data.codes.index_select(0, torch.from_numpy(image).to(data.device))
    answers = data.train.aidx[rows]
    if buffer.max_size is None or len(buffer) + len(rows) <= buffer.max_size:
        buffer.add_batch(codes, answers, rows)
        return
    for i, row in enumerate(rows):
        buffer.insert(codes[i], int(answers[i]), int(row), rng, strategy)


def streaming(args, config, data: VQAData, learner: Learner, out_dir: Path, identity: dict) -> dict:
    order = data.order
    rehearsal = args.stream_with_rehearsal
    buffer = make_buffer(args, data) if rehearsal else None
    ckpt = out_dir / CHECKPOINT
    if ckpt.exists():
        state, meta = load_checkpoint(ckpt, identity)
        restore(learner, state, buffer, full_mode=False)
        rng, position, summary = rng_from_json(meta["rng"]), meta["position"], meta["summary"]
        print(f"resuming {args.expt_name} after {position} questions", flush=True)
    else:
        rng, summary = np.random.default_rng(args.seed), new_summary(args, config, data)
        base = order.rows[:order.boundaries[0]]
        print(f"base init: {len(base)} questions ({order.segment_names[0]}), {config.max_epochs} epochs", flush=True)
        learner.train_offline(base, config.max_epochs, rng, "base init")
        if buffer is not None:
            buffer_insert(buffer, data, base, rng, args.buffer_replacement_strategy)
        position = order.boundaries[0]
        accuracy, predictions = learner.evaluate()
        record(out_dir, summary, position, order.segment_names[0], accuracy, predictions, data.val.qid)
        save_checkpoint(ckpt, learner, buffer, rng, position, summary, identity, 0)
    r = config.num_rehearsal_samples
    start = time.time()
    end = order.boundaries[-1]
    boundary_index = {b: k for k, b in enumerate(order.boundaries)}
    for position in range(position, end):
        row = int(order.rows[position])
        if buffer is None:
            learner.step(*data.batch("train", [row]))
        else:
            # As the original: the new question enters the buffer first, then r replays are drawn from it.
            own = data.codes[int(data.train_image[row])]  # (H, W, M), already on the device
            buffer.insert(own, int(data.train.aidx[row]), row, rng, args.buffer_replacement_strategy)
            slots = buffer.sample(r, rng)
            replay_codes, _ = buffer.gather(slots)
            rows = np.concatenate([[row], buffer.ids[slots]])
            learner.step(*data.batch("train", rows, codes=torch.cat([own.unsqueeze(0), replay_codes])))
        done = position + 1
        if done in boundary_index:
            segment = order.segment_names[boundary_index[done]]
            rate = (done - order.boundaries[0]) / max(1e-9, time.time() - start)
            print(f"streamed to {done}/{end} ({rate:.1f} questions/s)", flush=True)
            accuracy, predictions = learner.evaluate()
            record(out_dir, summary, done, segment, accuracy, predictions, data.val.qid)
            save_checkpoint(ckpt, learner, buffer, rng, done, summary, identity, boundary_index[done])
    return summary


def offline(args, config, data: VQAData, out_dir: Path, identity: dict, glove) -> dict:
    """``--full``: a fresh network trained offline on everything up to each boundary."""
    order = data.order
    ckpt = out_dir / CHECKPOINT
    if ckpt.exists():
        _, meta = load_checkpoint(ckpt, identity)
        rng, summary, first = rng_from_json(meta["rng"]), meta["summary"], meta["segment"] + 1
        print(f"resuming {args.expt_name} at segment {first + 1}/{len(order.boundaries)}", flush=True)
    else:
        rng, summary, first = np.random.default_rng(args.seed), new_summary(args, config, data), 0
    learner = None
    for k in range(first, len(order.boundaries)):
        boundary = order.boundaries[k]
        torch.manual_seed(args.seed * 1000 + k)
        learner = Learner(args, config, data, glove)
        learner.train_offline(order.rows[:boundary], config.max_epochs, rng, f"offline to {boundary}")
        accuracy, predictions = learner.evaluate()
        record(out_dir, summary, boundary, order.segment_names[k], accuracy, predictions, data.val.qid)
        save_checkpoint(ckpt, learner, None, rng, boundary, summary, identity, k)
    return summary


# ----------------------------------------------------------------------- main
def prepare(args):
    """Everything that can fail on bad input, before anything is written."""
    config = get_config(args.config_name)
    config = override(config, args.set)
    if args.lr is not None:
        config = dataclasses.replace(config, lr=args.lr)
    if args.rehearsal_mode == "limited_buffer":
        if args.max_buffer_size is None or args.max_buffer_size <= 0:
            raise ValueError("--rehearsal_mode limited_buffer needs a positive --max_buffer_size")
        if not args.stream_with_rehearsal:
            raise ValueError("--rehearsal_mode limited_buffer only applies to --stream_with_rehearsal")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device} but no CUDA device is available; use --device cpu")
    data = VQAData(args, config)
    config = dataclasses.replace(config, num_classes=data.num_classes)
    glove = None
    if args.glove is not None:
        glove, found = load_word_vectors(args.glove, data.dictionary)
        if glove.shape != (data.dictionary.ntoken, config.emb_dim):  # refuse here, before the output folder
            raise VQADataError(f"word vectors have shape {glove.shape}, the model needs ({data.dictionary.ntoken}, "
                               f"{config.emb_dim}); set the embedding size with --set emb_dim={glove.shape[-1]}")
        print(f"word vectors: {found} of {data.dictionary.ntoken} question words found in {args.glove}")
    return config, data, glove


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        config, data, glove = prepare(args)
        out_dir = Path(args.output_dir or Path("snapshots") / args.expt_name)
        identity = {k: (run_mode(args) if k == "mode" else getattr(args, k)) for k in RUN_IDENTITY}
        identity["config"] = dataclasses.asdict(config)
        if (out_dir / CHECKPOINT).exists():
            load_checkpoint(out_dir / CHECKPOINT, identity)  # refuse a different run's folder before writing
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"git commit {reporting.git_commit()}; {run_mode(args)} on {config.dataset} ({config.model}), "
              f"{len(data.train)} train / {len(data.val)} val questions, {data.num_classes} answers, "
              f"codes {data.code_shape}, device {data.device}", flush=True)
        torch.manual_seed(args.seed)
        if args.full:
            summary = offline(args, config, data, out_dir, identity, glove)
        else:
            summary = streaming(args, config, data, Learner(args, config, data, glove), out_dir, identity)
    except (VQADataError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(per_type_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
