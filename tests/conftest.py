import os
import shutil
import tempfile

import pytest
import torch

import radvar

# the step-time cost model caches per machine under the user's cache folder; tests use a private one,
# removed when the session ends (one given in RADVAR_CACHE_DIR is the caller's and stays)
_OWN_CACHE = None if "RADVAR_CACHE_DIR" in os.environ else tempfile.mkdtemp(prefix="radvar-test-cache-")
if _OWN_CACHE is not None:
    os.environ["RADVAR_CACHE_DIR"] = _OWN_CACHE


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


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
