"""S-MAC, the CLEVR question-answering network of REMIND's VQA experiments.

Design credits: the MAC network is Hudson & Manning, "Compositional Attention
Networks for Machine Reasoning" (ICLR 2018); S-MAC, the variant with fewer
linear layers used here, is Marois, Jayram, Albouy, Kornuta, Bouhadjar & Ozcan,
"On transfer learning using a MAC model variant" (NeurIPS 2018 ViGIL workshop,
arXiv:1811.06529). REMIND (Hayes, Kafle, Shrestha, Acharya & Kanan, ECCV 2020)
streams this network over CLEVR; its public code (tyler-hayes/REMIND,
``vqa_experiments/s_mac/``) defines the computation reproduced here, except that
the grid size is read from the feature maps instead of being fixed at 14x14x1024.

The network, in four parts:

* an encoder: two 3x3 convolutions and a linear projection turn the feature maps
  into a knowledge base of ``N = H*W`` location vectors; a biLSTM turns the
  embedded question into one vector per word and one summary vector;
* ``mac_max_step`` reasoning steps, each a control step (attention over words),
  a read step (attention over locations) and a write step (one linear layer);
* variational dropout on the control and memory states during training;
* a two-layer classifier over ``[final memory, question summary]``.

Shape letters: ``B`` batch, ``T`` longest question in the batch, ``E`` word
embedding size, ``C`` feature channels, ``N`` grid locations, ``d`` ``mac_dim``.

Checkpoints: the submodule attribute names (``input_unit``, ``mac_unit``,
``output_unit`` and those inside them) are the state_dict keys of earlier
versions of this file and are left as they were, so saved models still load.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vqa_experiments.vqa_models import WordEmbedding


def _glorot_linear(fan_in: int, fan_out: int, bias: bool = True) -> nn.Linear:
    """``nn.Linear(fan_in, fan_out)`` with a Xavier-uniform weight and a zero bias, as in MAC.

    ``nn.Linear`` first draws its own default weights, which are then thrown
    away. Those draws are kept on purpose: they advance the global RNG exactly
    as before, so a given seed still produces the same network.
    """
    layer = nn.Linear(fan_in, fan_out, bias=bias)
    nn.init.xavier_uniform_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def _pool(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Attention pooling: ``weights (B, K, 1)`` (summing to 1 over ``K``), ``values (B, K, d)`` -> ``(B, d)``."""
    return (weights * values).sum(1)


class SceneQuestionEncoder(nn.Module):
    """Builds the knowledge base from the image and the word states from the question."""

    def __init__(self, dim: int, emb_dim: int, in_channels: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, dim, 3, padding=1), nn.ELU(),
                                  nn.Conv2d(dim, dim, 3, padding=1), nn.ELU())
        # Re-initialised only after both convolutions exist: the RNG is then consumed in the same order as in
        # earlier versions, and a seed gives the same weights.
        for conv in (m for m in self.conv if isinstance(m, nn.Conv2d)):
            nn.init.kaiming_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.kb_proj_layer = _glorot_linear(dim, dim)
        self.lstm = nn.LSTM(input_size=emb_dim, hidden_size=dim, num_layers=1, batch_first=True, bidirectional=True)
        self.lstm_proj = nn.Linear(2 * dim, dim)  # PyTorch's default initialisation, unlike the other linears

    def knowledge_base(self, maps: torch.Tensor) -> torch.Tensor:
        """``maps (B, C, H, W)`` -> one projected vector per location, ``(B, N, d)``."""
        per_location = self.conv(maps).flatten(2).transpose(1, 2)
        return self.kb_proj_layer(per_location)

    def question_states(self, embedded: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``embedded (B, L, E)``, ``lengths (B,)`` -> word states ``(B, T, d)`` and summary ``(B, 2d)``.

        Packing keeps the LSTM from reading anything past each question's
        length; ``T`` is the batch's longest question, whatever ``L`` is.
        """
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, (last_hidden, _) = self.lstm(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True)
        forward_last, backward_last = last_hidden  # each direction's state after reading the whole question
        return self.lstm_proj(outputs), torch.cat([forward_last, backward_last], dim=1)

    def forward(self, maps: torch.Tensor, embedded: torch.Tensor, lengths: torch.Tensor):
        """Returns knowledge base ``(B, N, d)``, word states ``(B, T, d)`` and question summary ``(B, 2d)``."""
        return (self.knowledge_base(maps), *self.question_states(embedded, lengths))


class ControlStep(nn.Module):
    """Picks, by attention over the words, what the current reasoning step is about."""

    def __init__(self, dim: int, max_step: int):
        super().__init__()
        # The question summary is projected differently at every step, which is how a step knows where it is.
        self.pos_aware_layers = nn.ModuleList(_glorot_linear(2 * dim, dim) for _ in range(max_step))
        self.ctrl_question = _glorot_linear(dim, dim)
        self.attn = _glorot_linear(dim, 1, bias=False)

    def forward(self, step: int, previous: torch.Tensor, words: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        """``previous (B, d)``, ``words (B, T, d)``, ``question (B, 2d)`` -> new control ``(B, d)``.

        The attention runs over all ``T`` positions: a question shorter than
        the batch's longest also attends to its padded states, as the original does.
        """
        query = self.ctrl_question(previous) + self.pos_aware_layers[step](question)
        return _pool(torch.softmax(self.attn(query.unsqueeze(1) * words), dim=1), words)


class ReadStep(nn.Module):
    """Retrieves from the knowledge base what the memory and the current control point at."""

    def __init__(self, dim: int):
        super().__init__()
        self.concat_layer = _glorot_linear(dim, dim)
        self.attn = _glorot_linear(dim, 1, bias=False)

    def forward(self, memory: torch.Tensor, control: torch.Tensor, kb: torch.Tensor) -> torch.Tensor:
        """``memory (B, d)``, ``control (B, d)``, ``kb (B, N, d)`` -> retrieved vector ``(B, d)``."""
        # Where MAC concatenates [memory * kb, kb] and projects again, S-MAC just adds kb back: one layer fewer.
        relevance = self.concat_layer(memory.unsqueeze(1) * kb) + kb
        weights = torch.softmax(self.attn(relevance * control.unsqueeze(1)).squeeze(2), dim=1)  # (B, N)
        # Mathematically _pool(weights.unsqueeze(2), kb). Softmax over the last axis and pooling over a
        # feature-major view are kept because PyTorch rounds the other layouts differently (in the forward pass
        # and in kb's accumulated gradient); this way outputs and gradients match earlier versions bit for bit.
        return (weights.unsqueeze(1) * kb.transpose(1, 2)).sum(2)


class ReasoningChain(nn.Module):
    """``max_step`` control / read / write steps, starting from learned (zero-initialised) states."""

    def __init__(self, dim: int, max_step: int, dropout: float):
        super().__init__()
        self.control = ControlStep(dim, max_step)
        self.read = ReadStep(dim)
        self.write = _glorot_linear(dim, dim)  # S-MAC's write: the new memory is a projection of what was read
        self.mem_0 = nn.Parameter(torch.zeros(1, dim))
        self.control_0 = nn.Parameter(torch.zeros(1, dim))
        self.dim, self.max_step, self.dropout = dim, max_step, dropout

    def _sequence_mask(self, batch: int) -> torch.Tensor:
        """An inverted-dropout mask ``(B, d)``, drawn once per sequence and reused at every step."""
        keep = 1 - self.dropout
        return self.mem_0.new_empty(batch, self.dim).bernoulli_(keep) / keep

    def forward(self, words: torch.Tensor, question: torch.Tensor, kb: torch.Tensor) -> torch.Tensor:
        """``words (B, T, d)``, ``question (B, 2d)``, ``kb (B, N, d)`` -> final memory ``(B, d)``."""
        batch = question.size(0)
        control = self.control_0.expand(batch, self.dim)
        memory = self.mem_0.expand(batch, self.dim)
        # The control mask is drawn before the memory mask; swapping them would change the draws a seed gives.
        masks = (self._sequence_mask(batch), self._sequence_mask(batch)) if self.training else None
        if masks is not None:
            control, memory = control * masks[0], memory * masks[1]
        for step in range(self.max_step):
            control = self.control(step, control, words, question)
            if masks is not None:
                control = control * masks[0]
            memory = self.write(self.read(memory, control, kb))
            if masks is not None:
                memory = memory * masks[1]
        return memory


def _answer_classifier(dim: int, num_classes: int) -> nn.Sequential:
    """``[memory, question] (B, 3d)`` -> answer logits ``(B, num_classes)``."""
    head = nn.Sequential(_glorot_linear(3 * dim, dim), nn.ELU(), _glorot_linear(dim, num_classes))
    # The hidden layer ends up He-initialised (as in the original), overwriting Xavier; done last to keep the
    # RNG order a seed was used with.
    nn.init.kaiming_uniform_(head[0].weight)
    return head


class SMACNetwork(nn.Module):
    """The whole model; ``build_model`` creates it for ``config.model == 'smac'``.

    ``embedding`` is the shared :class:`WordEmbedding` (the trainer loads GloVe
    into it and may freeze it).
    """

    def __init__(self, config, ntoken: int, in_channels: int):
        super().__init__()
        dim = config.mac_dim
        self.embedding = WordEmbedding(ntoken, config.emb_dim, config.embedding_dropout)
        self.input_unit = SceneQuestionEncoder(dim, config.emb_dim, in_channels)
        self.mac_unit = ReasoningChain(dim, config.mac_max_step, config.mac_dropout)
        self.output_unit = _answer_classifier(dim, config.num_classes)

    def forward(self, q: torch.Tensor, maps: torch.Tensor, qlen: torch.Tensor) -> torch.Tensor:
        """``q (B, L)`` tokens, ``maps (B, C, H, W)``, ``qlen (B,)`` -> answer logits ``(B, num_classes)``."""
        kb, words, question = self.input_unit(maps, self.embedding(q), qlen)
        memory = self.mac_unit(words, question, kb)
        return self.output_unit(torch.cat([memory, question], dim=1))
