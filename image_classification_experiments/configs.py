"""The image learner's settings: :mod:`remind.config`'s dataclass, presets and flags, plus file fingerprints.

``REMINDConfig``, ``PRESETS``, ``FLAGS`` and the helpers live in :mod:`remind.config`
(one source for every default); this module keeps the scripts' import path.
"""
from __future__ import annotations

import hashlib

from remind.config import (  # noqa: F401  (re-exported for the scripts)
    FLAGS,
    NOT_IN_IDENTITY,
    PRESETS,
    REMINDConfig,
    add_config_flags,
    config_from_args,
    config_identity,
    preset_defaults,
)


def file_fingerprint(path: str | None) -> str | None:
    """sha256 of a file's bytes (a checkpoint or label file in a run's identity); None for no file."""
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
