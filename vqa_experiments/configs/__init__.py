"""Named experiment configurations (``--config_name``): plain data in a registry, never ``exec``.

``CLEVR_streaming`` and ``TDIUC_streaming`` carry the original's
hyper-parameters (its ``configs/config_*_streaming.py``). The ``*_demo``
entries are the same models shrunk so ``make demo-vqa`` runs on 2 CPU cores.
Any field can be overridden from the command line with ``--set field=value``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class VQAConfig:
    dataset: str                  # 'clevr' or 'tdiuc'
    model: str                    # 'smac' or 'updown'
    num_classes: int              # answers the classifier covers (the most frequent ones)
    lr: float
    train_batch_size: int
    val_batch_size: int = 512
    max_epochs: int = 20          # base-init (and --full) epochs
    optimizer: str = "adamax"
    replays_per_step: int = 50    # the original's num_rehearsal_samples (also accepted by --set)
    imnorm: bool = False          # L2-normalise each location's feature vector
    # question encoder
    emb_dim: int = 300
    embedding_dropout: bool = False
    freeze_embedding: bool = False  # S-MAC freezes GloVe-initialised embeddings (only when --glove is given)
    expects_glove: bool = False     # the original initialised this model's embeddings from 300-d GloVe
    lstm_out: int = 512
    bidirectional: bool = True
    # UpDown
    num_hidden: int = 1024        # the classifier's hidden layer is 2 * num_hidden
    num_attn_hops: int = 2
    attention_hidden: int = 1024
    attention_dropout: bool = True
    classifier_dropout: bool = True
    # S-MAC
    mac_dim: int = 512
    mac_max_step: int = 12
    mac_dropout: float = 0.15
    # exponential moving average of the weights (--use_exponential_averaging)
    ema_decay: float = 0.999
    notes: str = field(default="", compare=False)


CONFIGS: dict[str, VQAConfig] = {
    "CLEVR_streaming": VQAConfig(dataset="clevr", model="smac", num_classes=28, lr=3e-4, train_batch_size=64,
                                 val_batch_size=64, freeze_embedding=True, expects_glove=True,
                                 notes="the original's config_CLEVR_streaming.py"),
    "TDIUC_streaming": VQAConfig(dataset="tdiuc", model="updown", num_classes=1480, lr=2e-3, train_batch_size=512,
                                 val_batch_size=512, imnorm=True, embedding_dropout=True, expects_glove=True,
                                 notes="the original's config_TDIUC_streaming.py"),
    "CLEVR_demo": VQAConfig(dataset="clevr", model="smac", num_classes=28, lr=5e-3, train_batch_size=32, imnorm=True,
                            max_epochs=12, emb_dim=64, lstm_out=64, mac_dim=64, mac_max_step=4,
                            notes="S-MAC shrunk for the synthetic CPU demo; lr 5e-3 (after the 12 base-init epochs "
                                  "on the demo's attribute queries: 54% right at 1e-3, 83% at 5e-3); features: layer2 "
                                  "(8x8x128 at 64 px) of the demo's ResNet-18 trained on question-free scenes "
                                  "(vqa_experiments/vqa_demo.py)"),
    "TDIUC_demo": VQAConfig(dataset="tdiuc", model="updown", num_classes=1480, lr=2e-2, train_batch_size=32,
                            max_epochs=12, imnorm=True, embedding_dropout=False, emb_dim=64, lstm_out=64,
                            num_hidden=128, attention_hidden=128,
                            notes="UpDown shrunk for the synthetic CPU demo; lr 2e-2 (2e-3 learnt the answer priors "
                                  "only in 12 epochs: colour 24% offline); features as CLEVR_demo's"),
}


# The original configs' field names that this project names otherwise.
ALIASES = {"num_rehearsal_samples": "replays_per_step"}


def get_config(name: str) -> VQAConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown --config_name {name!r}; known: {', '.join(sorted(CONFIGS))}")
    return CONFIGS[name]


def default_config(dataset: str) -> VQAConfig:
    return CONFIGS[f"{dataset.upper()}_streaming"]


def override(config: VQAConfig, assignments: list[str]) -> VQAConfig:
    """Apply ``field=value`` strings, converting each value to the field's type."""
    fields = {f.name: f for f in dataclasses.fields(VQAConfig)}
    changes = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        name = ALIASES.get(name, name)
        if not sep or name not in fields:
            raise ValueError(f"--set {item!r}: expected field=value with field one of {', '.join(fields)}")
        kind = type(getattr(config, name))
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"--set {item!r}: {name} takes true or false")
            changes[name] = value.lower() in ("true", "1")
        else:
            try:
                changes[name] = kind(value)
            except ValueError:
                raise ValueError(f"--set {item!r}: {name} takes a {kind.__name__}") from None
    return dataclasses.replace(config, **changes)
