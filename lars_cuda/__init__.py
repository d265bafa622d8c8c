"""lars_cuda: the LARS optimizer (You, Gitman & Ginsburg 2017) for PyTorch, exact
to the seed project and fused into one multi-tensor kernel on CPU and CUDA.

    from lars_cuda import Lars, Lamb, create_optimizer_lars, PolynomialWarmup
    from lars_cuda.compat import TimmLars, LARC, SSLLars, BoltsLars, SoloLars   # the other flavours, drop-in
"""

from ._version import __version__
from .grouping import create_optimizer_lars, is_norm_layer, split_lars_parameters
from .optimizer import Lars
from .lamb import Lamb
from .validation import UnsupportedTensorError
from .ops import has_fused
from .scheduler import PolynomialWarmup, polynomial_warmup_lr
from . import compat  # noqa: E402  (after Lars, which it subclasses)

__all__ = [
    "__version__",
    "Lamb",
    "Lars",
    "PolynomialWarmup",
    "UnsupportedTensorError",
    "compat",
    "create_optimizer_lars",
    "has_fused",
    "is_norm_layer",
    "polynomial_warmup_lr",
    "split_lars_parameters",
]
