"""REMIND's learner settings: one frozen dataclass, its named presets, and the command-line flags built from it.

:class:`REMINDConfig` is everything that fixes what the image learner
computes besides its networks: the PQ geometry, the buffer, the learning-rate
rule and the augmentation. Each field carries its command-line flag (the
original scripts' names: ``--rehearsal_samples`` for ``replays_per_step``) and
help text, so :func:`add_config_flags` builds the flags, their defaults and
their help from the dataclass itself and the two cannot drift. A preset is a
config; :func:`preset_defaults` turns it into parser defaults, so an explicit
flag still wins.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field


def _setting(default, flag: str | None, help: str, group: str):
    return field(default=default, metadata={"flag": flag, "help": help, "group": group})


@dataclass(frozen=True)
class REMINDConfig:
    """REMIND's settings (defaults: the paper's ImageNet learner without buffer limit and mixup).

    Use a preset (``PRESETS["imagenet_paper"]``) or ``dataclasses.replace(config, field=value)``.
    """
    num_classes: int = _setting(1000, "num_classes", "outputs of F (1000)", "stream")
    # product quantisation
    num_codebooks: int = _setting(32, "num_codebooks", "PQ sub-quantisers; must divide G's channels (32)",
                                  "product quantisation")
    codebook_size: int = _setting(256, "codebook_size", "centroids per codebook, a power of two (256)",
                                  "product quantisation")
    pq_backend: str = _setting("torch", "pq_backend", "encoder: torch (any device, robust under CPU load) or faiss "
                               "(CPU); same codebooks, same codes (torch)", "product quantisation")
    # replay
    replays_per_step: int = _setting(50, "rehearsal_samples", "replays per streamed example (the paper's r: 50; "
                                     "0 fine-tunes)", "replay buffer")
    max_buffer_size: int | None = _setting(None, "max_buffer_size", "buffer limit (ImageNet paper: 959665; default: "
                                           "keep everything)", "replay buffer")
    # optimisation
    weight_decay: float = _setting(1e-5, "weight_decay", "SGD weight decay on F (1e-5)", "learning rate")
    lr_mode: str = _setting("step_lr_per_class", "lr_mode", "per-class step decay (the paper) or constant start_lr",
                            "learning rate")
    lr_step_size: int = _setting(100, "lr_step_size", "steps on a class between decays (100)", "learning rate")
    start_lr: float = _setting(0.1, "start_lr", "lr of a class's first step (0.1)", "learning rate")
    end_lr: float = _setting(0.001, "end_lr", "lr reached after a class's examples (0.001)", "learning rate")
    # examples per class in the LR rule: one int (the original: 1300, ImageNet's) or one count per class;
    # "auto" (a flag value) is resolved from the training labels before the learner is built
    lr_examples_per_class: int | tuple[int, ...] | str = _setting(
        1300, "lr_examples_per_class", "examples per class in the LR decay rule: an integer (1300, ImageNet's, as "
        "the original) or 'auto' to count each class's training examples", "learning rate")
    grad_clip: float | None = _setting(None, None, "", "learning rate")
    # augmentation of replayed feature maps
    use_random_resized_crops: bool = _setting(True, "use_random_resized_crops",
                                              "feature-map random resized crops of the replays (the paper: on)",
                                              "augmentation")
    use_mixup: bool = _setting(False, "use_mixup", "mixup of replayed examples (the paper's ImageNet runs: on)",
                               "augmentation")
    mixup_alpha: float = _setting(0.1, "mixup_alpha", "Beta(alpha, alpha) of mixup (0.1)", "augmentation")
    seed: int = _setting(0, "seed", "seed of every random draw of the run (0)", "network")

    def __post_init__(self):
        if self.lr_mode not in ("step_lr_per_class", "constant"):
            raise ValueError(f"unknown --lr_mode {self.lr_mode!r}; use step_lr_per_class or constant")
        if self.seed < 0:  # numpy's generators take no negative seed
            raise ValueError(f"--seed must be non-negative, got {self.seed}")
        if self.replays_per_step < 0:
            raise ValueError(f"--rehearsal_samples must be non-negative, got {self.replays_per_step}")
        if self.pq_backend not in ("torch", "faiss"):
            raise ValueError(f"unknown --pq_backend {self.pq_backend!r}; use torch or faiss")
        if self.max_buffer_size is not None and self.max_buffer_size < 1:
            raise ValueError(f"--max_buffer_size must be positive, got {self.max_buffer_size} (leave it out to keep "
                             "every example)")
        # NaN passes every comparison: each rate must be a finite number in its range
        for name, low, positive in (("start_lr", 0.0, True), ("end_lr", 0.0, True), ("weight_decay", 0.0, False)):
            value = getattr(self, name)
            if not (math.isfinite(value) and (value > low if positive else value >= low)):
                raise ValueError(f"--{FLAGS[name]} must be {'positive' if positive else 'non-negative'} and finite, "
                                 f"got {value}")
        if self.lr_step_size < 1:
            raise ValueError(f"--lr_step_size must be at least 1, got {self.lr_step_size}")
        if self.use_mixup and not (math.isfinite(self.mixup_alpha) and self.mixup_alpha > 0):
            raise ValueError(f"--mixup_alpha must be positive and finite with --use_mixup, got {self.mixup_alpha}")
        check_num_classes_fit(self.num_classes)


# Inputs per row of F's last layer assumed for the memory check (ResNet-18's 512; a few torchvision networks
# have narrower ones, down to 400, which matters only within a few percent of the machine's memory).
MIN_CLASSIFIER_INPUTS = 512


def check_num_classes_fit(num_classes: int) -> None:
    """Refuse a ``--num_classes`` whose last layer alone (weights, gradient and momentum, float32, 512 inputs
    a row) exceeds this machine's memory: building it would allocate for minutes until the kernel
    kills the process, without a message."""
    need = 3 * 4 * MIN_CLASSIFIER_INPUTS * max(num_classes, 0)
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system: nothing to compare with
        return
    if need > have:
        raise ValueError(f"--num_classes {num_classes} needs at least {need / 2**30:,.0f} GiB for F's last layer "
                         f"alone ({MIN_CLASSIFIER_INPUTS} x {num_classes} float32 weights, their gradient and "
                         f"momentum), more than this machine's {have / 2**30:,.0f} GiB of memory; check --num_classes")


# Config field -> command-line flag (argparse dest), read off the dataclass: the original scripts' names.
FLAGS = {f.name: f.metadata["flag"] for f in dataclasses.fields(REMINDConfig) if f.metadata.get("flag")}

PRESETS: dict[str, REMINDConfig] = {
    # The paper's ImageNet runs (run_imagenet_experiment.sh): 959,665 stored examples, crops and mixup.
    "imagenet_paper": REMINDConfig(max_buffer_size=959_665, use_random_resized_crops=True, use_mixup=True,
                                   mixup_alpha=0.1),
    # CORe50's 10 categories (run_core50_experiment.sh); the LR decays over each category's own count.
    "core50": REMINDConfig(num_classes=10, use_random_resized_crops=True, use_mixup=True, mixup_alpha=0.1,
                           lr_examples_per_class="auto"),
    # make demo: scikit-learn's digits, 10 classes of ~134 training images each.
    "digits_demo": REMINDConfig(num_classes=10, use_random_resized_crops=True, use_mixup=True, mixup_alpha=0.1,
                                lr_examples_per_class="auto"),
}

# The flags' own defaults where they differ from the dataclass: a script run without flags keeps the
# original's behaviour (crops off unless --use_random_resized_crops is given), while REMINDConfig() in Python
# gives the paper's learner.
_FLAG_DEFAULTS = {"use_random_resized_crops": False, "lr_examples_per_class": "1300"}
_CHOICES = {"pq_backend": ("torch", "faiss"), "lr_mode": ("step_lr_per_class", "constant")}


def add_config_flags(parser: argparse.ArgumentParser, fields: tuple[str, ...] | None = None,
                     groups: dict | None = None) -> dict:
    """Add one flag per config field (``fields``: those only; default: every field with a flag), with its help
    and default from the dataclass, into argument groups named by the field (``groups`` maps a title to a
    group the script made already). Returns the groups by title, for the script's own flags."""
    groups = {} if groups is None else groups
    for f in dataclasses.fields(REMINDConfig):
        flag = f.metadata.get("flag")
        if not flag or (fields is not None and f.name not in fields):
            continue
        title = f.metadata["group"]
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        group = groups[title]
        default = _FLAG_DEFAULTS.get(f.name, f.default)
        if isinstance(f.default, bool):
            group.add_argument(f"--{flag}", action="store_true", default=default, help=f.metadata["help"])
            continue
        kind = str if f.name == "lr_examples_per_class" else {float: float, str: str}.get(type(f.default), int)
        group.add_argument(f"--{flag}", type=kind, default=default, choices=_CHOICES.get(f.name),
                           help=f.metadata["help"])
    return groups


def preset_defaults(name: str) -> dict:
    """A preset as parser defaults (flag dest -> value)."""
    if name not in PRESETS:
        raise ValueError(f"unknown --preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    values = dataclasses.asdict(PRESETS[name])
    return {FLAGS[name]: (str(v) if name == "lr_examples_per_class" else v) for name, v in values.items()
            if name in FLAGS}  # grad_clip has no flag


# Settings that do not change what is computed: the torch and faiss encoders give the same codes.
NOT_IN_IDENTITY = ("pq_backend",)


def config_identity(config: REMINDConfig) -> dict:
    """The config's part of a run's identity (checked on resume)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_IN_IDENTITY}


def config_from_args(args, **resolved) -> REMINDConfig:
    """The config the parsed flags describe; ``resolved`` replaces fields computed from data
    (``lr_examples_per_class`` from ``auto``, ``num_classes`` fixed by the dataset)."""
    values = {name: getattr(args, flag) for name, flag in FLAGS.items() if hasattr(args, flag)}
    values.update(resolved)
    return REMINDConfig(**values)
