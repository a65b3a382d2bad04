"""Fixtures shared by the test modules."""

import os

# The README's command runs the suite in two processes (pytest -n 2), each with torch's default thread count:
# threads that sleep at OpenMP barriers, instead of spinning, keep four threads on two cores from stalling each
# other (set before torch starts OpenMP; an explicit OMP_WAIT_POLICY wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _data_cache_dir(tmp_path_factory):
    """Generated-data caches of the tests go to a temporary folder, not the user's ~/.cache (subprocesses
    inherit it)."""
    os.environ["RNNEXT_CACHE_DIR"] = str(tmp_path_factory.mktemp("rnnext_cache"))
    yield


@pytest.fixture
def threads(request):
    """torch's intra-op thread count for one test (parametrize it with indirect=True), restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)
