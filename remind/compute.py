"""What a run spends: the compute record written at every evaluation point.

Papers compare continual learners by their compute as well as their accuracy.
A :class:`ComputeMeter` counts, for one run:

- ``examples_streamed``: new examples taken from the stream after base initialisation (learnt one at a
  time by REMIND and fine-tuning; stored for retraining by the offline baseline);
- ``optimizer_updates``: SGD (or Adamax) steps on the plastic network F, every step the run takes
  (streaming, offline retraining, training F on the base-init codes; an ImageNet base-init network is
  trained by its own script and not counted here);
- ``sample_passes``: rows through F with a backward pass (a replay step on one new example and
  50 replays is 51, also with mixup, which draws 100 and mixes them into 50; an offline mini-batch
  of 256 is 256);
- ``eval_examples``: test examples predicted;

and times the run's phases in wall seconds:

========== ==============================================================
phase      what runs in it
========== ==============================================================
data       waiting for the stream's next batch (image decoding, loading)
trunk      G's forward pass and the PQ encoder on streamed examples
replay     the replay steps: draw, decode, augment, F forward/backward, update, insert
base_init  base initialisation (G, PQ training, storing the base codes, base-init training)
offline    offline training of F (the offline baseline)
evaluation predictions on the test set (G or stored codes, then F)
checkpoint writing run states and model files
========== ==============================================================

A phase started inside another pauses it (a checkpoint taken while streaming
counts as checkpoint, not replay); re-entering the running phase changes
nothing. On CUDA the device is synchronised at each phase boundary, so a
phase's seconds include its kernels. ``examples_per_second`` is ``examples_streamed``
over the seconds spent learning them (data + trunk + replay + offline); ``elapsed_seconds`` is
the run's wall time, over all its sessions when it was resumed.
``peak_memory_bytes`` is ``torch.cuda.max_memory_allocated`` on a GPU and the
process's peak resident memory on a CPU (``peak_memory_kind`` says which);
both are the process's peaks since it started (the meter resets neither, as
that would change what the rest of the program sees), so a process that runs
several runs one after another, as the digits demo does, reports the largest
so far.

A meter's :meth:`~ComputeMeter.state_dict` goes into every checkpoint's
metadata, so a resumed run goes on counting where the checkpoint stopped: its
counts equal an uninterrupted run's (the work redone after a kill is counted
once), while its seconds are those its sessions spent, the redone work
included, and not the writing of the checkpoint it resumed from.
"""
from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

PHASES = ("data", "trunk", "replay", "base_init", "offline", "evaluation", "checkpoint")
STREAM_PHASES = ("data", "trunk", "replay", "offline")  # learning the stream after base initialisation
COUNTS = ("examples_streamed", "optimizer_updates", "sample_passes", "eval_examples")
RECORD_FILE = "compute.json"


def _peak_rss_bytes() -> int:
    """The process's peak resident memory. On Linux, VmHWM of /proc/self/status: ru_maxrss would carry the
    peak of the parent a process was forked from (it survives exec), so every run that a 1 GB driver
    starts would report at least 1 GB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # not on this platform (Windows)
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


class ComputeMeter:
    """Counts and times one run (see the module's docstring for every field).

    Args:
        device: where the run computes; CUDA phases are synchronised at their boundaries.
    """

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.counts = dict.fromkeys(COUNTS, 0)
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.records: list[dict] = []
        self._earlier_elapsed = 0.0  # wall seconds of the run's earlier sessions (resumed runs)
        self._earlier_peak = 0
        self._started = time.perf_counter()
        self._active: str | None = None  # the phase being timed, since ``_since``
        self._since = 0.0

    # ------------------------------------------------------------ counting
    def count_update(self, samples: int) -> None:
        """One optimizer step on F over ``samples`` samples."""
        self.counts["optimizer_updates"] += 1
        self.counts["sample_passes"] += int(samples)

    def add(self, counts: dict | None = None, seconds: dict | None = None) -> None:
        """Add work measured elsewhere (a network trained by an earlier run, say): counts and phase seconds."""
        for name, value in (counts or {}).items():
            if name not in self.counts:
                raise ValueError(f"unknown compute count {name!r}; one of {', '.join(COUNTS)}")
            self.counts[name] += int(value)
        for name, value in (seconds or {}).items():
            if name not in self.seconds:
                raise ValueError(f"unknown compute phase {name!r}; one of {', '.join(PHASES)}")
            self.seconds[name] += float(value)

    def count_streamed(self, examples: int) -> None:
        self.counts["examples_streamed"] += int(examples)

    def count_evaluated(self, examples: int) -> None:
        self.counts["eval_examples"] += int(examples)

    # -------------------------------------------------------------- timing
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str):
        """Time the block as ``name``, pausing the enclosing phase (if another) until it ends."""
        if name not in self.seconds:
            raise ValueError(f"unknown compute phase {name!r}; one of {', '.join(PHASES)}")
        if self._active == name:
            yield
            return
        self._sync()
        now, outer = time.perf_counter(), self._active
        if outer is not None:
            self.seconds[outer] += now - self._since
        self._active, self._since = name, now
        try:
            yield
        finally:
            self._sync()
            now = time.perf_counter()
            self.seconds[name] += now - self._since
            self._active, self._since = outer, now

    def timed(self, iterable, name: str = "data"):
        """Yield ``iterable``'s items, timing each fetch as phase ``name`` (a loader's decoding and loading)."""
        iterator = iter(iterable)
        while True:
            with self.phase(name):
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            yield item

    # ------------------------------------------------------------- reading
    def seconds_so_far(self) -> dict[str, float]:
        """Seconds by phase, the running phase's time up to now included."""
        seconds = dict(self.seconds)
        if self._active is not None:
            seconds[self._active] += time.perf_counter() - self._since
        return seconds

    @property
    def elapsed_seconds(self) -> float:
        return self._earlier_elapsed + time.perf_counter() - self._started

    def peak_memory(self) -> tuple[int, str]:
        """``(bytes, kind)``: the peak so far over all the run's sessions."""
        if self.device.type == "cuda":
            now, kind = int(torch.cuda.max_memory_allocated(self.device)), "cuda max_memory_allocated"
        else:
            now, kind = _peak_rss_bytes(), "process peak resident memory (cpu)"
        return max(now, self._earlier_peak), kind

    def snapshot(self, position: int | None = None, unit: str | None = None) -> dict:
        """The record as of now: counts, seconds by phase, examples per second, peak memory."""
        seconds = self.seconds_so_far()
        stream_seconds = sum(seconds[p] for p in STREAM_PHASES)
        peak, kind = self.peak_memory()
        record = {"position": position, "unit": unit, **self.counts,
                  "seconds": {k: round(v, 4) for k, v in seconds.items()},
                  "stream_seconds": round(stream_seconds, 4),
                  "elapsed_seconds": round(self.elapsed_seconds, 4),
                  "examples_per_second": (round(self.counts["examples_streamed"] / stream_seconds, 3)
                                          if stream_seconds > 0 else None),
                  "peak_memory_bytes": peak, "peak_memory_kind": kind, "device": str(self.device)}
        return record

    def record(self, position: int, unit: str) -> dict:
        """Append the record at evaluation point ``position`` (replacing a record of the same point, which a
        rerun of that point recomputes) and return it."""
        self.records = [r for r in self.records if r.get("position") != position]
        self.records.append(self.snapshot(position, unit))
        return self.records[-1]

    def write(self, folder: str | Path, name: str = RECORD_FILE) -> Path:
        """Every record so far, as JSON, to ``folder/name`` (atomically)."""
        from remind.checkpoint import atomic_write_text
        path = Path(folder) / name
        atomic_write_text(path, json.dumps({"fields": _FIELDS, "records": self.records}, indent=1))
        return path

    # --------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """JSON-serialisable state (counts, seconds, records, elapsed and peak so far)."""
        peak, _ = self.peak_memory()
        return {"counts": dict(self.counts), "seconds": self.seconds_so_far(), "records": list(self.records),
                "elapsed_seconds": self.elapsed_seconds, "peak_memory_bytes": peak}

    def load_state_dict(self, state: dict) -> None:
        """Go on from :meth:`state_dict`'s output (a resumed run); the current session's time restarts now."""
        self.counts = {k: int(state.get("counts", {}).get(k, 0)) for k in COUNTS}
        self.seconds = {k: float(state.get("seconds", {}).get(k, 0.0)) for k in PHASES}
        self.records = list(state.get("records", []))
        self._earlier_elapsed = float(state.get("elapsed_seconds", 0.0))
        self._earlier_peak = int(state.get("peak_memory_bytes", 0))
        self._started = self._since = time.perf_counter()


def summary_line(record: dict) -> str:
    """One line for a run's log: ``compute: ...``."""
    s = record["seconds"]
    rate = record["examples_per_second"]
    parts = ", ".join(f"{name} {s[name]:.1f}" for name in PHASES if s.get(name))
    return (f"compute: {record['examples_streamed']:,} examples streamed, {record['optimizer_updates']:,} updates, "
            f"{record['sample_passes']:,} sample passes through F; {record['elapsed_seconds']:.1f} s "
            f"({parts or 'no phase timed'}); {'-' if rate is None else f'{rate:.1f}'} examples/s; peak memory "
            f"{record['peak_memory_bytes'] / 2**20:,.0f} MiB ({record['peak_memory_kind']})")


def compute_table(records: dict[str, dict]) -> str:
    """Markdown table of each run's latest record (run name -> record): what its stream cost."""
    from remind.reporting import markdown_table
    if not records:
        return "(no compute record: these runs were written before compute.json existed)"
    header = ["run", "examples streamed", "optimizer updates", "sample passes through F", "learning s",
              "examples/s", "elapsed s", "peak memory"]
    rows = []
    for name, r in records.items():
        rate = r["examples_per_second"]
        rows.append([name, f"{r['examples_streamed']:,}", f"{r['optimizer_updates']:,}", f"{r['sample_passes']:,}",
                     f"{r['stream_seconds']:.1f}", "-" if rate is None else f"{rate:.1f}",
                     f"{r['elapsed_seconds']:.1f}", f"{r['peak_memory_bytes'] / 2**20:,.0f} MiB"])
    return markdown_table(header, rows)


def latest_records(folders: dict[str, str | Path], name: str = RECORD_FILE) -> dict[str, dict]:
    """Each run's last record (run name -> record), leaving out runs without one (written before the record
    existed) or with an unreadable file (with a warning): for reports, which do not depend on it."""
    latest = {}
    for run, folder in folders.items():
        try:
            records = read_records(folder, name)
        except ValueError as exc:
            print(f"warning: {exc}; the compute table leaves {run} out", flush=True)
            continue
        if records:
            latest[run] = records[-1]
    return latest


def read_records(folder: str | Path, name: str = RECORD_FILE) -> list[dict]:
    """The records a run wrote to ``folder`` (empty when it wrote none)."""
    path = Path(folder) / name
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text())["records"]
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise TypeError("'records' is not a list of records")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a compute record ({type(exc).__name__}: {exc}); the next evaluation of the "
                         "run rewrites it") from None
    return records


_FIELDS = {
    "position": "the evaluation point (classes, frames or questions seen, per 'unit')",
    "examples_streamed": "examples taken from the stream after base initialisation so far (learnt one at a time, "
                         "or stored for retraining by the offline baseline)",
    "optimizer_updates": "optimizer steps on F so far (streaming, offline retraining, training F on base-init codes)",
    "sample_passes": "rows through F with a backward pass so far (a step on 1 new + 50 replays is 51)",
    "eval_examples": "test examples predicted so far",
    "seconds": "wall seconds by phase so far: data (waiting for the stream's batches), trunk (G and the PQ "
               "encoder on streamed examples), replay (the replay steps), base_init, offline (offline training "
               "of F), evaluation, checkpoint",
    "stream_seconds": "seconds spent learning the stream: data + trunk + replay + offline",
    "elapsed_seconds": "the run's wall time so far, over all its sessions",
    "examples_per_second": "examples_streamed / stream_seconds",
    "peak_memory_bytes": "peak device memory so far (see peak_memory_kind)",
}
