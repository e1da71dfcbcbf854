import pytest
import torch

import radvar


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from fixed torch and radvar seeds."""
    torch.manual_seed(0)
    radvar.seed(0)
    yield
