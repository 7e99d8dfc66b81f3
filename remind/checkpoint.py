"""Checkpoint I/O: atomic writes, pickle-free loads, clear errors on damage."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or of the wrong kind."""


# torch.save reports a write that failed (a full disk, a quota) as a RuntimeError of its zip writer, such as
# "[enforce fail at inline_container.cc:...] . unexpected pos 123 vs 0", not as an OSError.
TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed writing")


def _disk_full(exc: BaseException, path: Path, tmp: str) -> OSError | None:
    """``exc`` as one OSError (errno ENOSPC) naming the folder and the bytes needed, if it says the disk is full."""
    full = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in TORCH_WRITE_FAILURES))
    if not full:
        return None
    written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
    free = shutil.disk_usage(path.parent).free
    # no filename argument: run_main would append it in parentheses, and the folder is named here already
    return OSError(errno.ENOSPC, f"no space left in {path.parent} while writing {path.name} (it needed more than "
                                 f"the {written:,} bytes written before it failed; {free / 2**20:,.0f} MiB are "
                                 f"free); the previous {path.name}, if any, is intact and a rerun continues from it")


def atomic_write(path: str | os.PathLike, write, mode: str = "wb") -> None:
    """Call ``write(handle)`` on a temporary file in ``path``'s folder, fsync, then rename it over ``path``.

    A crash mid-write leaves the previous file (if any) untouched. ``mode`` is ``"wb"`` or ``"w"``. A full disk
    (or quota) is an OSError with errno ENOSPC naming the folder, whatever wrote (torch's writer says it in a
    RuntimeError), so that every entry point's run_main prints it as one line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        full = _disk_full(exc, path, tmp)
        if os.path.exists(tmp):
            os.unlink(tmp)
        if full is not None:
            raise full from None
        raise


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete what :func:`atomic_write` leaves in ``folder`` when the process dies mid-write
    (``.<name>.<random>.tmp``); call it at the start of a run, before anything writes there."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink()
    return stale


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Text (JSON, CSV, Markdown) through :func:`atomic_write`."""
    atomic_write(path, lambda handle: handle.write(text), mode="w")


def safe_load(path: str | os.PathLike, what: str = "checkpoint", map_location="cpu"):
    """``torch.load(weights_only=True)`` that turns every failure into one clear CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}; check the path")
    try:
        # mmap: tensors are read on first touch, not all up front (a 1.5 GB buffer loads ~4x faster).
        # Only the zip format (PyTorch >= 1.6) can be memory-mapped; files of older releases, such as the
        # original's PyTorch 1.3.1 checkpoints, use the legacy format and are read whole, still without pickle.
        return torch.load(path, map_location=map_location, weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # truncated zip, random bytes, pickled objects...
        # torch's message may suggest loading with pickle; we never do, so keep only its first line.
        first_line = (str(exc).splitlines() or [""])[0][:200]
        if first_line.startswith("Weights only load failed"):
            first_line = "not a weights-only PyTorch file"
        raise CheckpointError(
            f"{what} {path} cannot be read ({type(exc).__name__}: {first_line}); "
            "it is truncated, corrupt or not a weights-only PyTorch file: delete it and re-create it") from None


def save_state(path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write tensors plus JSON-serialisable metadata as one weights-only file."""
    atomic_torch_save({"tensors": tensors, "meta_json": json.dumps(meta)}, path)


def load_state(path, what: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by :func:`save_state`."""
    obj = safe_load(path, what)
    if not isinstance(obj, dict) or "tensors" not in obj or "meta_json" not in obj:
        raise CheckpointError(f"{what} {path} is not a REMIND state file (written by a different program?)")
    return obj["tensors"], json.loads(obj["meta_json"])


# The one layout of a run's resumable state, for every experiment: save_state's file with
# meta["format"] == RUN_STATE_FORMAT, meta["identity"] (the settings that define the run) and
# tensors["learner"] (StreamingLearner.state_dict) next to the experiment's own entries.
RUN_STATE_FORMAT = "remind-run-state-v3"  # v3: networks named by arch and split_at


def save_run_state(path, state: dict, identity: dict, progress: dict) -> None:
    """Write a run's resumable state: ``state`` (nested tensors), its identity and its progress (JSON)."""
    save_state(path, state, {"format": RUN_STATE_FORMAT, "identity": identity, **progress})


def check_identity(saved: dict, current: dict, where, allow: bool = False, allow_flag: bool = True) -> str | None:
    """Refuse to resume when a setting that changes what is computed differs; names every one.

    With ``allow`` the differences are returned instead (the caller records them), None when there are none.
    ``allow_flag``: the entry point has ``--allow_changed_settings``, so the message may suggest it.
    """
    current = json.loads(json.dumps(current))  # tuples become lists, as in the saved JSON
    differing = {}
    for k in sorted(set(current) | set(saved)):
        a, b = saved.get(k), current.get(k)
        if isinstance(a, dict) and isinstance(b, dict):  # a nested config: name its fields, not all of it
            differing.update({f"{k}.{f}": (a.get(f), b.get(f)) for f in sorted(set(a) | set(b))
                              if a.get(f) != b.get(f)})
        elif a != b:
            differing[k] = (a, b)
    if differing:
        detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in sorted(differing.items()))
        if allow:
            return detail
        suggestion = (" (--allow_changed_settings continues anyway and records the change)" if allow_flag else "")
        raise CheckpointError(f"{where} belongs to a run with other settings ({detail}); use the same settings, "
                              f"or another results folder{suggestion}")
    return None


def load_run_state(path, identity: dict, what: str = "run checkpoint",
                   allow_changes: bool = False, allow_flag: bool = True) -> tuple[dict, dict]:
    """Read :func:`save_run_state`'s file and check it is this run; returns (state, progress meta).

    With ``allow_changes`` a run with other settings loads too, and ``meta["settings_changed"]`` says how.
    ``allow_flag``: whether the caller has ``--allow_changed_settings`` to suggest.
    """
    try:
        state, meta = load_state(path, what)
    except CheckpointError as exc:
        if "not a REMIND state file" in str(exc):
            raise CheckpointError(f"{what} {path} was written by an earlier version of this project (before "
                                  "the shared streaming learner) and cannot be resumed; rerun into a new results "
                                  "folder") from None
        raise
    if meta.get("format") != RUN_STATE_FORMAT:
        raise CheckpointError(f"{what} {path} was written by an earlier version of this project "
                              f"(format {meta.get('format', 'v1')!r}, this one reads {RUN_STATE_FORMAT!r}) and "
                              "cannot be resumed; rerun into a new results folder")
    if not isinstance(meta.get("identity"), dict):  # written by hand or by another program: not resumable
        raise CheckpointError(f"{what} {path} has no run identity in its metadata, so it cannot be checked against "
                              "these settings; rerun into a new results folder")
    changes = check_identity(meta["identity"], identity, path, allow_changes, allow_flag)
    if changes:
        meta["settings_changed"] = changes
    return state, meta


def rng_state_to_json(rng) -> str:
    """A numpy Generator's bit-generator state as a JSON string (PCG64 family, as ``default_rng``)."""
    state = rng.bit_generator.state
    if state["bit_generator"] not in ("PCG64", "PCG64DXSM"):
        raise ValueError(f"only PCG64 generators are checkpointed (got {state['bit_generator']}); "
                         "create the run's generator with numpy.random.default_rng(seed)")
    return json.dumps(state)


def rng_from_json(text: str):
    import numpy as np

    state = json.loads(text)
    rng = np.random.Generator(getattr(np.random, state["bit_generator"])())
    rng.bit_generator.state = state
    return rng
