"""REMIND as an Avalanche strategy: ``strategy.train(experience)`` / ``strategy.eval(test_stream)``.

    >>> from remind import PRESETS, split_torchvision
    >>> from remind.integrations.avalanche import REMINDStrategy
    >>> from avalanche.training.plugins import EvaluationPlugin
    >>> from avalanche.evaluation.metrics import accuracy_metrics
    >>> G, F = split_torchvision("resnet18", "layer4.0", num_classes=10, weights="base_init.pth")
    >>> strategy = REMINDStrategy(trunk=G, head=F, config=config, device="cpu", train_mb_size=32,
    ...                           evaluator=EvaluationPlugin(accuracy_metrics(stream=True)))
    >>> for experience in benchmark.train_stream:
    ...     strategy.train(experience)           # first: base initialisation; then one replay step per example
    ...     strategy.eval(benchmark.test_stream)

The strategy is a thin shell around the project's :class:`remind.REMIND`
learner (``strategy.remind``); the updates are exactly that learner's:

* **first experience** (while the learner has no product quantiser): base
  initialisation, :meth:`REMIND.fit_base`: the PQ is trained on G's maps of
  the experience and their codes are stored; with ``base_epochs > 0`` F is
  then trained on those (decoded) codes for that many epochs (mini-batch SGD,
  momentum 0.9, cosine LR from ``base_lr``, shuffles from the learner's
  generator); with ``base_epochs = 0`` F is taken as given (trained with G
  beforehand, the paper's base initialisation).
* **every later experience**: the examples are streamed once, in the
  dataset's order, ``train_mb_size`` at a time through G, with one REMIND
  replay step per example (:meth:`REMIND.learn`). ``train_epochs`` is 1:
  REMIND is a streaming learner.
* **evaluation**: the model Avalanche runs is :class:`REMINDNetwork`, whose
  forward is REMIND's predict path (G, PQ encode + decode, F): its logits
  are ``mb_output`` and the cross-entropy on them is ``loss``, so
  Avalanche's accuracy, loss, confusion-matrix... metrics and its loggers
  work unchanged.

Avalanche batches are ``(x, y, task_label)``; the task label is dropped (REMIND
is single-head, class-incremental) and examples get consecutive ids as with
:meth:`REMIND.fit_stream`. REMIND keeps its own SGD optimizer over F
(``strategy.optimizer`` is ``strategy.remind.optimizer``); Avalanche's
optimizer re-building is switched off. Training plugins that change the loss
or the optimizer step (EWC, LwF, Avalanche's replay...) do not apply: REMIND's
updates happen inside :meth:`REMIND.learn`. The plugin callbacks fired per
training mini-batch are ``before/after_training_iteration`` and
``before/after_forward`` around a prediction of the batch made *before* it is
learned (``mb_output``: prequential logits); ``loss`` is the mean loss of the
batch's replay steps.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

try:
    from avalanche.core import BasePlugin
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.plugins.evaluation import default_evaluator
    from avalanche.training.templates import SupervisedTemplate
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "remind.integrations.avalanche needs Avalanche (avalanche-lib 0.6.0), which is an optional extra: "
        "pip install -e '.[avalanche]'  (or pip install avalanche-lib==0.6.0)") from exc

from remind.config import REMINDConfig
from remind.image import REMIND

__all__ = ["REMINDNetwork", "REMINDStrategy"]


class REMINDNetwork(nn.Module):
    """REMIND's prediction path as one module: images ``(B, 3, S, S)`` -> logits ``(B, num_classes)``.

    G's maps ``(B, C, H, W)`` are encoded and decoded by the learner's product quantiser before F (what F
    trains on); before base initialisation (no quantiser yet) F reads G's maps directly. G stays in eval
    mode whatever ``train()`` asks (its BatchNorm statistics never move).
    """

    def __init__(self, remind: REMIND):
        super().__init__()
        self.trunk = remind.classifier_G
        self.head = remind.classifier_F
        object.__setattr__(self, "remind", remind)  # not a submodule: REMIND is a plain object

    def train(self, mode: bool = True) -> "REMINDNetwork":
        super().train(mode)
        self.remind.classifier_G.eval()
        self.remind.classifier_F.train(mode)  # F may have been replaced (REMIND.fit_offline)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.remind.logits(images)


class _WithoutTaskLabels:
    """A loader of Avalanche batches ``(x, y, t)`` seen as REMIND's ``(x, y)`` batches (``.dataset`` kept)."""

    def __init__(self, loader: DataLoader):
        self.loader, self.dataset = loader, loader.dataset

    def __iter__(self):
        for batch in self.loader:
            yield batch[0], batch[1]

    def __len__(self) -> int:
        return len(self.loader)


class REMINDStrategy(SupervisedTemplate):
    """REMIND (Hayes et al., ECCV 2020) as an Avalanche supervised strategy.

    Args:
        trunk: G, frozen: images ``(B, 3, S, S)`` -> maps ``(B, C, H, W)`` (with ``head``; or pass ``remind``).
        head: F, plastic: maps ``(B, C, H, W)`` -> logits ``(B, num_classes)``.
        config: REMIND's settings (:class:`remind.REMINDConfig`); ``lr_examples_per_class`` must be counts.
        remind: an existing :class:`remind.REMIND` learner instead of ``trunk``/``head``/``config`` (one
            already base-initialised streams every experience, the first included).
        device: where G, F, the codebooks and the buffer live (default: cuda when present).
        train_mb_size: examples per G batch while streaming (each still gets its own replay step) and per
            batch of base initialisation.
        eval_mb_size: examples per evaluation batch.
        base_epochs: epochs of offline training of F on the first experience's codes, after the PQ is
            trained on them (0: F is already trained).
        base_lr: first learning rate of that training (cosine to 0 over all its steps).
        base_batch_size: its mini-batch size (default: ``train_mb_size``).
        plugins, evaluator, eval_every, peval_mode: as every Avalanche strategy.
    """

    def __init__(self, *, trunk: Optional[nn.Module] = None, head: Optional[nn.Module] = None,
                 config: Optional[REMINDConfig] = None, remind: Optional[REMIND] = None,
                 device: Union[str, torch.device, None] = None, train_mb_size: int = 32,
                 eval_mb_size: Optional[int] = 128, base_epochs: int = 0, base_lr: float = 0.1,
                 base_batch_size: Optional[int] = None, plugins: Optional[Sequence[BasePlugin]] = None,
                 evaluator: Union[EvaluationPlugin, Callable[[], EvaluationPlugin]] = default_evaluator,
                 eval_every: int = -1, peval_mode: str = "epoch"):
        if remind is None:
            if trunk is None or head is None:
                raise ValueError("REMINDStrategy needs trunk and head (G and F), or a REMIND learner (remind=)")
            remind = REMIND(trunk, head, config, device)
        elif trunk is not None or head is not None or config is not None:
            raise ValueError("pass either remind= or trunk/head/config, not both")
        if base_epochs < 0:
            raise ValueError(f"base_epochs must be non-negative, got {base_epochs}")
        if train_mb_size < 1:
            raise ValueError(f"train_mb_size must be positive, got {train_mb_size}")
        self.remind = remind
        self.base_epochs, self.base_lr = int(base_epochs), float(base_lr)
        self.base_batch_size = int(base_batch_size or train_mb_size)
        super().__init__(model=REMINDNetwork(remind), optimizer=remind.optimizer,
                         criterion=nn.CrossEntropyLoss(), train_mb_size=train_mb_size, train_epochs=1,
                         eval_mb_size=eval_mb_size, device=remind.device, plugins=plugins, evaluator=evaluator,
                         eval_every=eval_every, peval_mode=peval_mode)

    # REMIND owns its optimizer (REMIND.reset_optimizer / fit_offline replace it): always read it from there.
    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.remind.optimizer

    @optimizer.setter
    def optimizer(self, value: torch.optim.Optimizer) -> None:
        if value is not self.remind.optimizer:
            raise ValueError("REMINDStrategy trains with its REMIND learner's own optimizer (strategy.remind)")

    @property
    def base_initialised(self) -> bool:
        """Whether the learner has its product quantiser and buffer (after the first experience)."""
        return self.remind.learner is not None

    def make_optimizer(self, **kwargs) -> None:
        """No-op: REMIND's SGD optimizer over F (momentum kept across experiences) is used as it is."""

    def check_model_and_optimizer(self, **kwargs) -> None:
        """The network is fixed (single head over all classes): no adaptation, no optimizer rebuild."""
        self.model = self.model.to(self.device)

    # ------------------------------------------------------------------ data
    def make_train_dataloader(self, num_workers: int = 0, pin_memory: Optional[bool] = None,
                              persistent_workers: bool = False, **kwargs) -> None:
        """The experience's examples in dataset order (never shuffled: a stream), ``train_mb_size`` a batch."""
        assert self.adapted_dataset is not None
        args = self._obtain_common_dataloader_parameters(
            batch_size=self.train_mb_size, num_workers=num_workers, shuffle=False, pin_memory=pin_memory,
            persistent_workers=persistent_workers, drop_last=False)
        collate = getattr(self.adapted_dataset, "collate_fn", None)
        if collate is not None:
            args["collate_fn"] = collate
        self.dataloader = DataLoader(self.adapted_dataset, **args)

    # -------------------------------------------------------------- training
    def training_epoch(self, **kwargs) -> None:
        """Base initialisation on the first experience, one streaming pass on every later one."""
        if not self.base_initialised:
            self._base_initialisation(**kwargs)
        else:
            self._stream(**kwargs)

    def _base_initialisation(self, **kwargs) -> None:
        self.remind.fit_base(_WithoutTaskLabels(self.dataloader), head_epochs=self.base_epochs,
                             head_lr=self.base_lr, head_batch_size=self.base_batch_size)
        self.model.train()

    def _stream(self, **kwargs) -> None:
        """One replay step per example of ``self.dataloader``, in order (:meth:`REMIND.learn` per batch)."""
        for self.mbatch in self.dataloader:
            if self._stop_training:
                break
            self._unpack_minibatch()
            self._before_training_iteration(**kwargs)
            # Prequential output: the batch as F predicts it before learning it (eval mode, no grad).
            self._before_forward(**kwargs)
            self.model.eval()
            with torch.no_grad():
                self.mb_output = self.model(self.mb_x)
            self.model.train()
            self._after_forward(**kwargs)
            total = self.remind.learn(self.mb_x, self.mb_y)  # F back in train mode inside
            self.loss = (total / max(len(self.mb_y), 1)).reshape(1)
            self._after_training_iteration(**kwargs)
