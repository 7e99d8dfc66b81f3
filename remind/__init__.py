"""REMIND: streaming learning with replay of product-quantised feature maps."""
from remind.augment import mixup, random_resized_crop, sample_crop_params, sample_mixup_lambda
from remind.buffer import ReplayBuffer
from remind.checkpoint import CheckpointError, atomic_torch_save, load_state, safe_load, save_state
from remind.lr import per_class_lr, step_lr_gamma
from remind.metrics import topk_accuracy
from remind.pq import PQCodec, check_pq_shape

__all__ = [
    "PQCodec", "check_pq_shape", "ReplayBuffer", "random_resized_crop", "sample_crop_params", "mixup",
    "sample_mixup_lambda", "per_class_lr", "step_lr_gamma", "topk_accuracy", "CheckpointError",
    "atomic_torch_save", "save_state", "load_state", "safe_load",
]
