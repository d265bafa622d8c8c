"""What every layer of the tests shares: the paths of a step as a fixture and the
GPU skips. (The markers are declared once, in pytest.ini.)"""

import pytest
import torch

import lars_cuda

PATHS = {
    "single": dict(foreach=False, fused=False),
    "foreach": dict(foreach=True, fused=False),
    "fused": dict(foreach=False, fused=True),
}

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
requires_fused_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and lars_cuda.has_fused("cuda")), reason="needs a GPU and the CUDA kernel"
)


@pytest.fixture(params=list(PATHS))
def path(request):
    """Each optimizer path as Lars keyword arguments."""
    return PATHS[request.param]


def pytest_sessionstart(session):
    # make wheel-test runs these tests against the installed wheel: make sure that is what they import.
    import os

    if os.environ.get("LARS_CUDA_TEST_INSTALLED") == "1":
        assert "site-packages" in lars_cuda.__file__, f"testing {lars_cuda.__file__}, not the installed wheel"
