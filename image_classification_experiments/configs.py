"""The image learner's settings as one frozen dataclass, with named presets (``--preset``).

:class:`REMINDConfig` is everything that defines what ``REMINDModel`` computes:
the G/F split, the PQ geometry, the buffer, the learning-rate rule and the
augmentation. The command-line flags fill it (``FLAGS`` maps each field to the
original's flag name); a preset sets the flags' defaults, so an explicit flag
still wins. Plain data in a registry, as ``vqa_experiments/configs``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class REMINDConfig:
    num_classes: int = 1000
    # network: G is classifier_G cut after extract_features_from; F is classifier_F
    classifier_G: str = "ResNet18ClassifyAfterLayer4_1"
    extract_features_from: str = "model.layer4.0"
    classifier_F: str = "ResNet18_StartAt_Layer4_1"
    num_channels: int = 512
    # product quantisation
    num_codebooks: int = 32
    codebook_size: int = 256
    pq_backend: str = "torch"        # encoder: torch (any device) or faiss (CPU); same codebooks
    # replay
    replays_per_step: int = 50       # the paper's r; 0 fine-tunes
    max_buffer_size: int | None = None
    # optimisation
    weight_decay: float = 1e-5
    lr_mode: str = "step_lr_per_class"
    lr_step_size: int = 100
    start_lr: float = 0.1
    end_lr: float = 0.001
    # examples per class in the LR rule: one int (the original: 1300) or one count per class;
    # "auto" (flag value) is resolved from the training labels before the model is built
    lr_examples_per_class: int | tuple[int, ...] | str = 1300
    grad_clip: float | None = None
    # augmentation of replayed feature maps
    use_random_resized_crops: bool = True
    use_mixup: bool = False
    mixup_alpha: float = 0.1
    seed: int = 0

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


# Config field -> flag (argparse dest) of imagenet_experiment / core50_experiment, the original's names.
FLAGS = {
    "num_classes": "num_classes", "classifier_G": "base_arch", "extract_features_from": "extract_features_from",
    "classifier_F": "classifier", "num_channels": "num_channels", "num_codebooks": "num_codebooks",
    "codebook_size": "codebook_size", "pq_backend": "pq_backend", "replays_per_step": "rehearsal_samples",
    "max_buffer_size": "max_buffer_size", "weight_decay": "weight_decay", "lr_mode": "lr_mode",
    "lr_step_size": "lr_step_size", "start_lr": "start_lr", "end_lr": "end_lr",
    "lr_examples_per_class": "lr_examples_per_class", "use_random_resized_crops": "use_random_resized_crops",
    "use_mixup": "use_mixup", "mixup_alpha": "mixup_alpha", "seed": "seed",
}

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


def preset_defaults(name: str) -> dict:
    """A preset as parser defaults (flag dest -> value)."""
    if name not in PRESETS:
        raise ValueError(f"unknown --preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    values = dataclasses.asdict(PRESETS[name])
    return {FLAGS[field]: (str(v) if field == "lr_examples_per_class" else v) for field, v in values.items()
            if field in FLAGS}  # grad_clip has no flag


# Settings that do not change what is computed: the torch and faiss encoders give the same codes.
NOT_IN_IDENTITY = ("pq_backend",)


def config_identity(config: REMINDConfig) -> dict:
    """The config's part of a run's identity (checked on resume)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_IN_IDENTITY}


def file_fingerprint(path: str | None) -> str | None:
    """sha256 of a file's bytes (a checkpoint or label file in a run's identity); None for no file."""
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_from_args(args, **resolved) -> REMINDConfig:
    """The config the parsed flags describe; ``resolved`` replaces fields computed from data
    (``lr_examples_per_class`` from ``auto``, ``num_classes`` fixed by the dataset)."""
    values = {field: getattr(args, flag) for field, flag in FLAGS.items() if hasattr(args, flag)}
    values.update(resolved)
    return REMINDConfig(**values)
