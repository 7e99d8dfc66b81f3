"""What a run will hold and write, computed before it starts: the preflight table of every experiment.

The sizes follow the layouts the code writes (``remind/buffer.py``'s compact state, the run-state
files, the prediction files), so the table is the plan, not a guess: the replay buffer at its largest
(codes, labels, ids, class slots), the codebooks, what sits on the device, the bytes of each checkpoint
and of the whole run, and the free disk under the results folder. :func:`check_disk` refuses a run
that would not fit.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

def human(n: float) -> str:
    """``1,505 MB`` style (decimal units), as the sizes are quoted in the docs."""
    if n < 1e3:
        return f"{int(n)} B"
    if n < 1e6:
        return f"{n / 1e3:.1f} kB"
    if n < 1e10:
        return f"{n / 1e6:,.0f} MB"
    return f"{n / 1e9:,.1f} GB"


def module_bytes(module: nn.Module) -> int:
    """Weights and buffers (BatchNorm statistics) of a module."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def trainable_bytes(module: nn.Module) -> int:
    """Bytes of the parameters an optimizer keeps state for (one copy)."""
    return sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)


def free_bytes(path: str | Path) -> int:
    """Free disk space of the file system that ``path`` (or its nearest existing parent) is on."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def bytes_under(path: str | Path) -> int:
    """Bytes already written under ``path`` (0 if it does not exist): a resumed run has written them."""
    path = Path(path)
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class Budget:
    """The preflight table: ``rows`` of (what, how much), plus the totals the disk check uses."""
    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    disk_bytes: int = 0           # the most the run holds under save_dir at once
    save_dir: Path | None = None

    def add(self, what: str, value) -> None:
        self.rows.append((what, value if isinstance(value, str) else f"{value:,}"))

    def table(self) -> str:
        width = max(len(what) for what, _ in self.rows)
        return "\n".join([self.title] + [f"  {what:<{width}}  {value}" for what, value in self.rows])

    def add_disk(self) -> None:
        """Rows for the writes and (with a results folder) the free disk; call last."""
        done = 0 if self.save_dir is None else bytes_under(self.save_dir)
        self.add("disk needed at most", human(self.disk_bytes) + (f" ({human(done)} already there)" if done else ""))
        if self.save_dir is not None:
            self.add(f"free disk under {self.save_dir}", human(free_bytes(self.save_dir)))

    def check_disk(self, flag: str = "--skip_disk_check") -> None:
        """Refuse a run whose remaining writes exceed the free disk under its results folder."""
        if self.save_dir is None:
            return
        need = max(0, self.disk_bytes - bytes_under(self.save_dir))
        free = free_bytes(self.save_dir)
        if need > free:
            raise ValueError(f"the run would write about {human(need)} more under {self.save_dir} but only "
                             f"{human(free)} is free there; free some space, choose another results folder, "
                             f"or pass {flag} to start anyway")

    def preflight(self, dry_run: bool, skip_disk_check: bool) -> bool:
        """Print the table; True when the run should stop here (``--dry_run``). Refuses a run that would not
        fit on the disk unless ``--skip_disk_check``."""
        print(self.table(), flush=True)
        if dry_run:
            print("dry run: every check passed; nothing was written")
            return True
        if not skip_disk_check:
            self.check_disk()
        return False
