"""The README's Python code blocks run as written (in a scratch folder), so they cannot rot."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)


def test_the_readme_has_python_blocks():
    assert BLOCKS, "README.md has no ```python blocks"


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_readme_python_block_runs(number, tmp_path):
    script = tmp_path / f"readme_block_{number}.py"
    script.write_text(BLOCKS[number])
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    if "learner.evaluate" in BLOCKS[number]:  # the library block: it learns, and it saved a checkpoint
        top1 = float(re.search(r"'top1': ([0-9.]+)", done.stdout).group(1))
        assert top1 > 80, done.stdout
        assert (tmp_path / "remind_digits.pth").is_file()
