"""S-MAC: the simplified MAC network (Marois et al., 2018) the original REMIND uses for CLEVR.

Units as in the original: an input unit (2-layer CNN over the feature maps,
a knowledge-base projection, a biLSTM over frozen word embeddings), ``max_step``
recurrent control/read/write cells with variational dropout on the control
and memory states, and an output classifier over [memory, question]. Linear
layers are Xavier-initialised with zero bias, as MAC's reference code. The
grid size comes from the feature maps (the original hard-coded 14x14x1024).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vqa_experiments.vqa_models import WordEmbedding


def linear(in_dim: int, out_dim: int, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim, bias=bias)
    nn.init.xavier_uniform_(layer.weight)
    if bias:
        layer.bias.data.zero_()
    return layer


class InputUnit(nn.Module):
    def __init__(self, dim: int, emb_dim: int, in_channels: int):
        super().__init__()
        self.dim = dim
        self.conv = nn.Sequential(nn.Conv2d(in_channels, dim, 3, padding=1), nn.ELU(),
                                  nn.Conv2d(dim, dim, 3, padding=1), nn.ELU())
        for layer in (self.conv[0], self.conv[2]):
            nn.init.kaiming_uniform_(layer.weight)
            layer.bias.data.zero_()
        self.kb_proj_layer = linear(dim, dim)
        self.lstm = nn.LSTM(input_size=emb_dim, hidden_size=dim, num_layers=1, batch_first=True, bidirectional=True)
        self.lstm_proj = nn.Linear(2 * dim, dim)

    def forward(self, questions: torch.Tensor, qlen: torch.Tensor, maps: torch.Tensor):
        batch = maps.shape[0]
        kb = self.conv(maps).view(batch, self.dim, -1)                      # (B, dim, HW)
        kb_proj = self.kb_proj_layer(kb.transpose(1, 2)).transpose(1, 2)    # (B, dim, HW)
        packed = pack_padded_sequence(questions, qlen.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, _) = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True)
        words = self.lstm_proj(out)                                         # (B, T, dim)
        question = h.transpose(0, 1).reshape(batch, -1)                     # (B, 2 dim)
        return kb_proj, words, question


class ControlUnit(nn.Module):
    def __init__(self, dim: int, max_step: int):
        super().__init__()
        self.pos_aware_layers = nn.ModuleList(linear(2 * dim, dim) for _ in range(max_step))
        self.ctrl_question = linear(dim, dim)
        self.attn = linear(dim, 1, bias=False)

    def forward(self, step: int, words: torch.Tensor, question: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
        cqi = self.ctrl_question(control) + self.pos_aware_layers[step](question)
        weights = torch.softmax(self.attn(cqi.unsqueeze(1) * words), dim=1)  # over words (padding included)
        return (weights * words).sum(1)


class ReadUnit(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.concat_layer = linear(dim, dim)
        self.attn = linear(dim, 1, bias=False)

    def forward(self, memory: torch.Tensor, control: torch.Tensor, kb_proj: torch.Tensor) -> torch.Tensor:
        interactions = self.concat_layer((memory.unsqueeze(2) * kb_proj).transpose(1, 2)) + kb_proj.transpose(1, 2)
        logits = self.attn(interactions * control.unsqueeze(1)).squeeze(2)  # (B, HW)
        return (torch.softmax(logits, 1).unsqueeze(1) * kb_proj).sum(2)


class MACUnit(nn.Module):
    def __init__(self, dim: int, max_step: int, dropout: float):
        super().__init__()
        self.control = ControlUnit(dim, max_step)
        self.read = ReadUnit(dim)
        self.write = linear(dim, dim)  # S-MAC's write unit: one linear layer, no self-attention or gating
        self.mem_0 = nn.Parameter(torch.zeros(1, dim))
        self.control_0 = nn.Parameter(torch.zeros(1, dim))
        self.dim, self.max_step, self.dropout = dim, max_step, dropout

    def _mask(self, like: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(like).bernoulli_(1 - self.dropout) / (1 - self.dropout)

    def forward(self, words: torch.Tensor, question: torch.Tensor, kb_proj: torch.Tensor) -> torch.Tensor:
        batch = question.size(0)
        control = self.control_0.expand(batch, self.dim)
        memory = self.mem_0.expand(batch, self.dim)
        if self.training:  # variational dropout: one mask per sequence, reused at every step
            control_mask, memory_mask = self._mask(control), self._mask(memory)
            control, memory = control * control_mask, memory * memory_mask
        for step in range(self.max_step):
            control = self.control(step, words, question, control)
            if self.training:
                control = control * control_mask
            memory = self.write(self.read(memory, control, kb_proj))
            if self.training:
                memory = memory * memory_mask
        return memory


class SMACNetwork(nn.Module):
    def __init__(self, config, ntoken: int, in_channels: int):
        super().__init__()
        dim = config.mac_dim
        self.embedding = WordEmbedding(ntoken, config.emb_dim, config.embedding_dropout)
        self.input_unit = InputUnit(dim, config.emb_dim, in_channels)
        self.mac_unit = MACUnit(dim, config.mac_max_step, config.mac_dropout)
        self.output_unit = nn.Sequential(linear(3 * dim, dim), nn.ELU(), linear(dim, config.num_classes))
        nn.init.kaiming_uniform_(self.output_unit[0].weight)

    def forward(self, q: torch.Tensor, maps: torch.Tensor, qlen: torch.Tensor) -> torch.Tensor:
        kb_proj, words, question = self.input_unit(self.embedding(q), qlen, maps)
        memory = self.mac_unit(words, question, kb_proj)
        return self.output_unit(torch.cat([memory, question], dim=1))
