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


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "mpi: runs ranks under mpirun")
