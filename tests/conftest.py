"""Fixtures shared by the test modules."""

import pytest
import torch


@pytest.fixture
def threads(request):
    """torch's intra-op thread count for one test (parametrize it with indirect=True), restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)
