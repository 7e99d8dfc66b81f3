"""REMIND: streaming learning with replay of product-quantised feature maps (Hayes et al., ECCV 2020).

The library in one screen::

    from remind import REMIND, PRESETS, split_torchvision
    G, F = split_torchvision("resnet18", "layer4.0", num_classes=10, weights="resnet18.pth")
    learner = REMIND(G, F, PRESETS["digits_demo"])
    learner.fit_base(base_loader)       # PQ on G's maps of the base-init data, their codes stored
    learner.fit_stream(stream_loader)   # one replay step per new example
    learner.evaluate(test_loader)       # {'top1': ..., 'top5': ..., 'examples': N}
    learner.compute.snapshot()          # updates, rows through F, seconds by phase, examples/s, peak memory

:class:`REMIND` takes any G and F modules; :func:`split_network` cuts any
traceable classifier at a named layer; the parts (:class:`PQCodec`,
:class:`ReplayBuffer`, :class:`StreamingLearner`, crops, mixup, the LR rule)
are exported for other learners (the VQA experiments use them).
"""
from remind.augment import mixup, random_resized_crop, sample_crop_params, sample_mixup_lambda
from remind.buffer import ReplayBuffer
from remind.checkpoint import CheckpointError, atomic_torch_save, load_state, safe_load, save_state
from remind.compute import ComputeMeter
from remind.config import PRESETS, REMINDConfig
from remind.image import REMIND
from remind.learner import ReplayBatch, StreamingLearner
from remind.lr import per_class_lr, step_lr_gamma
from remind.metrics import topk_accuracy
from remind.networks import build_network, classification_models, split_torchvision
from remind.pq import PQCodec, check_pq_shape
from remind.split import FrozenTrunk, SplitError, split_network, split_points

__all__ = [
    "REMIND", "REMINDConfig", "PRESETS", "split_network", "split_points", "split_torchvision", "build_network",
    "classification_models", "FrozenTrunk", "SplitError", "StreamingLearner", "ReplayBatch",
    "PQCodec", "check_pq_shape", "ReplayBuffer", "random_resized_crop", "sample_crop_params", "mixup",
    "sample_mixup_lambda", "per_class_lr", "step_lr_gamma", "topk_accuracy", "CheckpointError",
    "atomic_torch_save", "save_state", "load_state", "safe_load", "ComputeMeter",
]
