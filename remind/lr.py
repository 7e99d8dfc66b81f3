"""The per-class step learning rate (``step_lr_per_class``), in closed form.

The k-th SGD step spent on class c (k = 0, 1, ...) uses
``start_lr * gamma ** floor(k / step_size)`` with
``gamma = exp(step_size * ln(end_lr / start_lr) / examples_per_class)``, so a
class of ``examples_per_class`` examples decays from ``start_lr`` to about
``end_lr``. This is what PyTorch 1.3.1 computed from the original's one
``StepLR`` per class; later PyTorch chains those schedulers on the shared
optimizer and the rate collapses, so we never use a scheduler for it.
"""
from __future__ import annotations

import math


def step_lr_gamma(start_lr: float, end_lr: float, step_size: int, examples_per_class: int) -> float:
    """Decay factor applied every ``step_size`` steps of a class."""
    if start_lr <= 0 or end_lr <= 0:
        raise ValueError(f"start_lr ({start_lr}) and end_lr ({end_lr}) must be positive")
    if step_size <= 0 or examples_per_class <= 0:
        raise ValueError(f"lr_step_size ({step_size}) and examples per class ({examples_per_class}) "
                         "must be positive")
    return math.exp(step_size * math.log(end_lr / start_lr) / examples_per_class)


def per_class_lr(step_in_class: int, start_lr: float, end_lr: float, step_size: int,
                 examples_per_class: int) -> float:
    """Learning rate of the ``step_in_class``-th step (0-based) spent on one class."""
    gamma = step_lr_gamma(start_lr, end_lr, step_size, examples_per_class)
    return start_lr * gamma ** (step_in_class // step_size)
