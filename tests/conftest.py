import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


def pytest_configure(config):
    # Simulator builds go to one cache that the workers share and later runs reuse (pytest's own
    # cache folder, emptied by --cache-clear), never to the user's cache.
    from prunefab.cache import ENV
    store = getattr(config, "cache", None)
    os.environ.setdefault(ENV, str(store.mkdir("prunefab") if store is not None else
                                   Path(tempfile.gettempdir()) / "prunefab-test-cache"))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
