"""The REMIND learner of the image scripts: :class:`remind.REMIND` built from a network name and a checkpoint.

:class:`REMINDModel` keeps the original's name, constructor and methods
(``fit_pq``, ``fit_incremental_batch``, ``predict``, ``save``/``resume``) for
the experiment scripts; the algorithm -- PQ, buffer, replay step, per-class
step LR, feature-map crops and mixup, the offline baseline -- is
:class:`remind.REMIND`'s. What is added here: G and F cut from a full network
(any torchvision classifier, or the original's ResNet-18 variants) by
:func:`remind.split.split_network`, loaded from a base-init checkpoint, and the
per-increment files of the scripts (``remind_classifier_F_<inc>.pth``,
``remind_buffer_<inc>.pth``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from image_classification_experiments.resnet_models import build_split, resolve_network
from remind.checkpoint import CheckpointError, atomic_torch_save, safe_load
from remind.cli import default_device
from remind.config import REMINDConfig
from remind.image import REMIND

# Constructor keywords of the original REMINDModel -> REMINDConfig fields.
_KEYWORDS = {"num_samples": "replays_per_step", "use_random_resize_crops": "use_random_resized_crops"}
# The original's network keywords -> resolve_network's.
_NETWORK_KEYWORDS = {"base_arch": "base_arch", "classifier_G": "base_arch", "extract_features_from":
                     "extract_features_from", "classifier": "classifier", "classifier_F": "classifier"}


class REMINDModel(REMIND):
    """Streaming learner for images, built from names.

    Args:
        num_classes: outputs of F (fills ``config.num_classes`` when given).
        classifier_ckpt: base-init checkpoint G and F are cut from (None: ``weights`` or random init).
        device: ``cuda`` or ``cpu`` (default: cuda when present).
        config: REMIND's settings (:class:`remind.REMINDConfig`); or pass its fields as keywords, with the
            original's names ``num_samples`` (replays per step) and ``use_random_resize_crops``.
        arch: the full network: a torchvision classification model (``resnet50``) or one of the original's
            ResNet-18 variants (the original's keyword ``base_arch`` too); default the paper's.
        split_at: the last layer of G (``layer4.0``; the original's ``extract_features_from``, or a head name
            as ``classifier``); default the paper's ``model.layer4.0``.
        weights: a torchvision weights file instead of a base-init checkpoint.
        image_size: input side, to check G's maps when cutting.
    """

    def __init__(self, num_classes: int | None = None, classifier_ckpt: str | None = None,
                 device: str | None = None, config: REMINDConfig | None = None, arch: str | None = None,
                 split_at: str | None = None, weights: str | None = None, image_size: int = 224, **settings):
        names = {_NETWORK_KEYWORDS[k]: settings.pop(k) for k in list(settings) if k in _NETWORK_KEYWORDS}
        settings = {_KEYWORDS.get(k, k): v for k, v in settings.items()}
        if num_classes is not None:
            settings["num_classes"] = num_classes
        config = dataclasses.replace(config or REMINDConfig(), **settings)  # REMIND checks it once built
        self.arch, self.split_at = resolve_network(arch, split_at, **names)
        self.classifier_ckpt, self.weights, self.image_size = classifier_ckpt, weights, image_size
        trunk, head = build_split(self.arch, self.split_at, config.num_classes, classifier_ckpt, weights, image_size)
        super().__init__(trunk, head, config, device or default_device())

    @property
    def settings(self) -> dict:
        """The settings that fix the network and code geometry (checked on resume)."""
        return {**super().settings, "arch": self.arch, "split_at": self.split_at}

    def fresh_head(self):
        """F as it was built (from the checkpoint or weights): the offline baseline's starting point."""
        return build_split(self.arch, self.split_at, self.num_classes, self.classifier_ckpt, self.weights,
                           self.image_size)[1]

    # ----------------------------------------------------- the original's names
    def fit_pq(self, base_loader, max_cached_bytes: int = 2 << 30) -> None:
        """Base initialisation (:meth:`remind.REMIND.fit_base`)."""
        if len(getattr(base_loader, "dataset", ())) == 0:
            raise ValueError("the base-init loader is empty; check --base_init_classes and the label files")
        self.fit_base(base_loader, max_cached_bytes=max_cached_bytes)

    def fit_incremental_batch(self, curr_loader, verbose: bool = True, between_batches=None,
                              first_batch: int = 0, loss_so_far: tuple[float, int] = (0.0, 0)) -> float:
        """Stream every example of ``curr_loader`` once, in order (:meth:`remind.REMIND.fit_stream`)."""
        if self.learner is None:
            raise RuntimeError("call fit_pq (base initialisation) or resume before streaming")
        return self.fit_stream(curr_loader, verbose, between_batches, first_batch, loss_so_far)

    def store_incremental_batch(self, curr_loader, verbose: bool = True) -> None:
        """Encode every example of ``curr_loader`` and add its codes to the buffer, with no SGD step."""
        if self.learner is None:
            raise RuntimeError("call fit_pq (base initialisation) or resume before adding examples")
        self.store(curr_loader, verbose)

    def fit_offline(self, epochs: int, batch_size: int = 256, lr: float = 0.1, verbose: bool = True,
                    phase: str = "offline") -> float:
        """Offline upper bound: a fresh F (from the base-init checkpoint) trained on the whole buffer."""
        return super().fit_offline(self.fresh_head(), epochs, batch_size, lr, verbose, phase)

    # ------------------------------------------------------------ checkpoints
    def save(self, inc: int, save_full_path: str, extra_meta: dict | None = None,
             identity: dict | None = None) -> None:
        """Write ``remind_classifier_F_{inc}.pth`` (F + optimizer, for users) then ``remind_buffer_{inc}.pth``,
        the run state (the learner's: F, optimizer, codebooks, buffer, generators; plus the per-class LR
        steps). The run state is written last, so its presence marks a complete increment."""
        folder = Path(save_full_path)
        atomic_torch_save(self._f_file(), folder / f"remind_classifier_F_{inc}.pth")
        self.save_state(folder / f"remind_buffer_{inc}.pth", {"inc": inc, **(extra_meta or {})}, identity)

    def save_state(self, path: Path, progress: dict, identity: dict | None = None) -> None:
        """The run state alone (an increment's, or one inside an increment): :meth:`remind.REMIND.save`."""
        self.save_checkpoint(path, progress, identity)

    def resume(self, inc: int, resume_full_path: str, identity: dict | None = None,
               allow_changes: bool = False) -> dict:
        """Load the state saved by :meth:`save` for increment ``inc``; returns its metadata."""
        path = Path(resume_full_path) / f"remind_buffer_{inc}.pth"
        meta = self.load_state(path, identity, f"deleting remind_buffer_{inc}.pth makes a rerun resume from the "
                                               "increment before", allow_changes)
        self._rewrite_unreadable_f(Path(resume_full_path) / f"remind_classifier_F_{inc}.pth")
        return meta

    def load_state(self, path: Path, identity: dict | None, if_damaged: str, allow_changes: bool = False) -> dict:
        """Load a run state written by :meth:`save_state` (and torch's global generators with it: a script
        owns its process); returns its metadata."""
        try:
            return self.load_checkpoint(path, identity, allow_changes, restore_global_rng=True)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc} ({if_damaged})") from None

    def _rewrite_unreadable_f(self, path: Path) -> None:
        """F's file of a resumed increment is a copy of what the run state holds: re-create it if damaged."""
        try:
            safe_load(path, "REMIND classifier checkpoint")
        except CheckpointError as exc:
            print(f"{exc}; re-writing it from the run state", flush=True)
            atomic_torch_save(self._f_file(), path)

    def _f_file(self) -> dict:
        """``remind_classifier_F_<inc>.pth``: F's and the optimizer's states, and the network F was cut from."""
        return {"model_state_dict": self.classifier_F.state_dict(), "optimizer_state_dict": self.optimizer.state_dict(),
                "arch": self.arch, "split_at": self.split_at}
