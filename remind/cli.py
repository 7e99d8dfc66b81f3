"""What every entry point shares: the default device, and input errors as one ``error:`` line with exit 2."""
from __future__ import annotations

import errno
import sys
from typing import Callable

import torch

from remind.autosave import StoppedAtOnce, StopRequested
from remind.checkpoint import CheckpointError

# Errors about the user's input (paths, flags, data files, checkpoints). Anything else is a bug and keeps
# its traceback.
INPUT_ERRORS = (ValueError, CheckpointError)


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``: the default of every ``--device`` flag."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> torch.device:
    """The ``--device`` value as a device that exists here, or a ValueError saying what to pass."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a device name; use cpu or cuda") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} but no CUDA device is available; use --device cpu")
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: only cpu and cuda are supported")
    return parsed


def add_preflight_flags(group, folder_flag: str) -> None:
    """``--dry_run`` and ``--skip_disk_check`` (remind/budget.py's preflight) on an entry point's parser."""
    group.add_argument("--dry_run", action="store_true",
                       help="check the data, label files, class order and checkpoint as a real start does, print "
                            "the budget table (buffer, device memory, checkpoint and disk bytes) and exit, "
                            "writing nothing")
    group.add_argument("--skip_disk_check", action="store_true",
                       help=f"start even if the run's writes would exceed the free disk under {folder_flag}")


def run_main(body: Callable[[], int | None], extra_errors: tuple[type[BaseException], ...] = (),
             report: bool = True) -> int:
    """Run an entry point's body: input errors print one ``error: ...`` line and give exit status 2.

    ``report=False`` keeps the status but prints nothing (the other processes of a torchrun launch, whose
    rank 0 says it once).
    """
    try:
        code = body()
    except INPUT_ERRORS + extra_errors as exc:
        message = str(exc)
        if "Original Traceback" in message:  # raised in a DataLoader worker: keep the original message only
            message = message.strip().splitlines()[-1].split(": ", 1)[-1]
        if report:
            print("error: " + " ".join(message.split()), file=sys.stderr)
        return 2
    except OSError as exc:  # the user's paths and disks: unreadable, unwritable, full
        where = f" ({exc.filename})" if exc.filename else ""
        hint = ("; free some space or choose another folder" if exc.errno == errno.ENOSPC else
                "; check the path and its permissions")
        if report:
            print(f"error: {exc.strerror or exc}{where}{hint}", file=sys.stderr)
        return 2
    except (StopRequested, StoppedAtOnce) as stop:  # SIGINT / SIGTERM: saved at a safe point, or a second one
        print(str(stop), file=sys.stderr, flush=True)
        return stop.exit_code
    return 0 if code is None else int(code)
