"""No command writes outside its output paths and the cache.

The main verbs run as a user runs them, one fresh process each, from an empty working directory,
with HOME, the temporary directory and the cache moved to folders of the test's own; afterwards
the working directory holds exactly the files named on the command lines, the cache only cache
entries, HOME and the temporary directory nothing, and the repository no new file.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prunefab import cache
from prunefab.hw.config import EngineConfig
from prunefab.sw import artifact
from prunefab.sw.synthetic import Pattern, random_network

REPO = Path(__file__).resolve().parents[1]
# written by the test run itself (pytest's and hypothesis's folders, bytecode), not by a command
NOT_OURS = {".git", ".venv", ".pytest_cache", ".hypothesis", "__pycache__", "prunefab.egg-info"}
# written by a sweep (`make sweep`) that may run beside the suite in the same checkout
OTHERS_OUTPUTS = ("bench/records/",)
SMALL = EngineConfig(lanes=4, max_channels=4, max_height=8, max_width=8, act_depth=64,
                     weight_depth=64, param_depth=16, max_layers=3)


def tree(root: Path) -> set[str]:
    """Every path under `root`, relative, but inside the folders in NOT_OURS."""
    found = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in NOT_OURS]
        rel = Path(folder).relative_to(root)
        found |= {str(rel / name) for name in dirs + files}
    return {path for path in found if not path.startswith(OTHERS_OUTPUTS)}


def test_the_main_verbs_write_only_their_outputs_and_the_cache(tmp_path):
    if not (REPO / "pyproject.toml").is_file():
        pytest.skip("not run from a source tree")
    inputs, cwd, home, tmp, store = (tmp_path / n for n in ("inputs", "cwd", "home", "tmp", "cache"))
    for d in (inputs, cwd, home, tmp):
        d.mkdir()
    net = random_network(np.random.default_rng(3), (1, 6, 6), (4,), (True,), classes=3,
                         patterns=Pattern.KERNEL_ELEMENTS)
    artifact.save(net, inputs / "small.pfab")
    (inputs / "small.json").write_text(SMALL.to_json())
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "PYTHONDONTWRITEBYTECODE")}
    env.update(HOME=str(home), TMPDIR=str(tmp), PRUNEFAB_CACHE=str(store), PYTHONDONTWRITEBYTECODE="1")
    before = tree(REPO)
    commands = [
        ["train", "--data", "synthetic", "--epochs", "1", "-o", "dense.pt"],
        ["prune", "dense.pt", "--method", "kep", "--sparsity-epochs", "1", "--finetune-epochs", "1",
         "-o", "kep.pt"],
        ["export", "kep.pt", "--calibration", "200", "--config", "icebreaker", "-o", "kep.pfab"],
        ["eval", "kep.pfab", "--images", "50"],
        ["sim", "--artifact", inputs / "small.pfab", "--config", inputs / "small.json"],
    ]
    for args in commands:
        done = subprocess.run([sys.executable, "-m", "prunefab", "--quiet", *map(str, args)], cwd=cwd,
                              env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stderr == "", done.stderr
    assert tree(cwd) == {"dense.pt", "kep.pt", "kep.pfab"}
    assert tree(home) == set() and tree(tmp) == set()
    entries = {p.name for p in store.iterdir()}
    assert cache.TOOLS in entries and all(
        re.fullmatch(rf"[a-z0-9-]+-[0-9a-f]{{16}}|\.locks|{cache.TOOLS}", n) for n in entries), entries
    with cache.located(store):
        assert {e.path.name for e in cache.entries()} == entries - {".locks"}     # all complete
    assert tree(REPO) - before == set()
