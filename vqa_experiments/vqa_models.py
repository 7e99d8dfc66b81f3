"""Question-answering models for streaming VQA: UpDown (TDIUC) and the shared word embedding / question LSTM.

S-MAC (CLEVR) lives in ``s_mac/``. Every model takes ``(tokens, maps, qlen)``:
``tokens (B, L)`` word indices padded with ``ntoken``, ``maps (B, C, H, W)``
image features (any grid size), ``qlen (B,)`` question lengths, and returns
answer logits ``(B, num_classes)``.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence

from vqa_experiments.vqa_data import Dictionary, VQADataError


class WordEmbedding(nn.Module):
    """``ntoken + 1`` rows; the last is padding (never reaches the packed LSTM)."""

    def __init__(self, ntoken: int, emb_dim: int, dropout: bool):
        super().__init__()
        self.emb = nn.Embedding(ntoken + 1, emb_dim)
        self.dropout = nn.Dropout(0.5) if dropout else nn.Identity()
        self.ntoken = ntoken
        self.emb_dim = emb_dim

    def init_embedding(self, weights: np.ndarray) -> None:
        if weights.shape != (self.ntoken, self.emb_dim):
            raise VQADataError(f"word vectors have shape {weights.shape}, the model needs ({self.ntoken}, "
                               f"{self.emb_dim}); set the embedding size with --set emb_dim={weights.shape[1]}")
        with torch.no_grad():
            self.emb.weight[:self.ntoken] = torch.from_numpy(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.emb(x))


def load_word_vectors(path: str | Path, dictionary: Dictionary) -> tuple[np.ndarray, int]:
    """A ``(ntoken, d)`` float32 matrix from a GloVe text file (``word v1 .. vd``, optionally .gz) or a .npy.

    Words absent from the file keep a small random vector (seeded); returns the matrix and how many words were found.
    """
    path = Path(path)
    if not path.is_file():
        raise VQADataError(f"word vector file not found: {path} (GloVe text format, e.g. glove.6B.300d.txt)")
    try:
        if path.suffix == ".npy":
            weights = np.load(path, allow_pickle=False).astype(np.float32)
            if weights.ndim != 2 or not np.isfinite(weights).all():
                problem = f"a {weights.ndim}-D array" if weights.ndim != 2 else "values that are not finite"
                raise VQADataError(f"word vector file {path} holds {problem}; it must be a (words x dim) matrix of "
                                   "finite floats")
            return weights, len(weights)
        found: dict[str, np.ndarray] = {}
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf8") as handle:
            for line in handle:
                word, _, rest = line.rstrip().partition(" ")
                if word in dictionary.word2idx and word not in found:
                    found[word] = np.array(rest.split(" "), dtype=np.float32)
        if not found:
            raise VQADataError(f"{path} holds none of the {dictionary.ntoken} question words; is it a GloVe text "
                               "file?")
        dim = len(next(iter(found.values())))
        weights = np.random.default_rng(0).normal(0, 0.1, (dictionary.ntoken, dim)).astype(np.float32)
        for word, vector in found.items():
            weights[dictionary.word2idx[word]] = vector  # rows of another length: ValueError
        if not np.isfinite(weights).all():  # "nan" and "inf" parse as floats: the embedding would train on NaN
            raise VQADataError(f"word vector file {path} holds values that are not finite; it must hold finite "
                               "floats (re-download GloVe's text file)")
        return weights, len(found)
    except VQADataError:
        raise
    except (OSError, ValueError, EOFError) as exc:  # not text (UnicodeDecodeError), not numbers, a bad .npy / .gz
        raise VQADataError(f"word vector file {path} cannot be read ({type(exc).__name__}: {exc}); pass GloVe's "
                           "text file (glove.6B.300d.txt) or a (words x dim) float .npy matrix") from None


class QuestionEncoder(nn.Module):
    """Word embedding and a (bi)LSTM; the question vector is the final hidden state(s), concatenated."""

    def __init__(self, ntoken: int, emb_dim: int, lstm_out: int, bidirectional: bool, embedding_dropout: bool):
        super().__init__()
        self.embedding = WordEmbedding(ntoken, emb_dim, embedding_dropout)
        self.lstm = nn.LSTM(input_size=emb_dim, hidden_size=lstm_out, num_layers=1, bidirectional=bidirectional)
        self.out_dim = lstm_out * (2 if bidirectional else 1)

    def forward(self, q: torch.Tensor, qlen: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.embedding(q), qlen.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return h.transpose(0, 1).flatten(1)


class Attention(nn.Module):
    """The original's 'old' attention: MLP over [location feature, question] -> softmax over locations."""

    def __init__(self, imfeat_size: int, qfeat_size: int, hidden: int, dropout: bool):
        super().__init__()
        self.nlin = nn.Linear(qfeat_size + imfeat_size, hidden)
        self.attnmap = nn.Linear(hidden, 1)
        self.dropout = nn.Dropout(0.5) if dropout else nn.Identity()

    def forward(self, qfeat: torch.Tensor, imfeat: torch.Tensor) -> torch.Tensor:
        # nlin(cat(v_i, q)) = W_v v_i + (W_q q + b): the question half is computed once per question,
        # not once per location (a third fewer FLOPs at 2048 + 1024 inputs, and no tiled copy of q).
        c = imfeat.size(-1)
        weight = self.nlin.weight
        question = torch.nn.functional.linear(qfeat, weight[:, c:], self.nlin.bias)
        hidden = torch.matmul(imfeat, weight[:, :c].t()) + question.unsqueeze(1)
        return torch.softmax(self.attnmap(self.dropout(torch.relu(hidden))), 1)


class Classifier(nn.Module):
    def __init__(self, num_input: int, num_hidden: int, num_classes: int, dropout: bool):
        super().__init__()
        self.lin1 = nn.Linear(num_input, num_hidden)
        self.classifier = nn.Linear(num_hidden, num_classes)
        self.dropout = nn.Dropout(0.5) if dropout else nn.Identity()

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.relu(self.lin1(feat))))


class UpDown(nn.Module):
    """UpDown over grid features: question LSTM, ``num_attn_hops`` attention glimpses, MLP classifier."""

    def __init__(self, config, ntoken: int, in_channels: int):
        super().__init__()
        self.ques_encoder = QuestionEncoder(ntoken, config.emb_dim, config.lstm_out, config.bidirectional,
                                            config.embedding_dropout)
        qdim = self.ques_encoder.out_dim
        self.attention = nn.ModuleList(Attention(in_channels, qdim, config.attention_hidden, config.attention_dropout)
                                       for _ in range(config.num_attn_hops))
        self.classifier = Classifier(qdim + in_channels * config.num_attn_hops, config.num_hidden * 2,
                                     config.num_classes, config.classifier_dropout)

    @property
    def embedding(self) -> WordEmbedding:
        return self.ques_encoder.embedding

    def forward(self, q: torch.Tensor, maps: torch.Tensor, qlen: torch.Tensor) -> torch.Tensor:
        imfeat = maps.flatten(2).transpose(1, 2)  # (B, H*W, C)
        qfeat = self.ques_encoder(q, qlen)
        glimpses = [(hop(qfeat, imfeat) * imfeat).sum(1) for hop in self.attention]
        return self.classifier(torch.cat([qfeat, *glimpses], dim=1))


def build_model(config, ntoken: int, in_channels: int) -> nn.Module:
    if config.model == "updown":
        return UpDown(config, ntoken, in_channels)
    if config.model == "smac":
        from vqa_experiments.s_mac.s_mac import SMACNetwork
        return SMACNetwork(config, ntoken, in_channels)
    raise ValueError(f"unknown model {config.model!r}; use 'updown' or 'smac'")
