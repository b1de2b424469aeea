"""fastgan: custom-kernel accelerated GAN losses, normalisation blocks and training.

Importing fastgan touches no GPU and compiles nothing: backends are probed on first use.
"""

__version__ = "0.1.0"

from fastgan import losses, nn, ops
from fastgan.fusion import FuseReport, fuse
from fastgan._backend import BackendStatus, BackendUnavailableError, backends, use_backend

__all__ = [
    "BackendStatus",
    "BackendUnavailableError",
    "FuseReport",
    "backends",
    "fuse",
    "losses",
    "nn",
    "ops",
    "use_backend",
    "__version__",
]
