import os
import tempfile

import pytest
import torch

import radvar

# the step-time cost model caches per machine under the user's cache folder; tests use a private one
os.environ.setdefault("RADVAR_CACHE_DIR", tempfile.mkdtemp(prefix="radvar-test-cache-"))


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from fixed torch and radvar seeds."""
    torch.manual_seed(0)
    radvar.seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny ops (thread start-up would dominate); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
