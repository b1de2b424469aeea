"""fastgan: custom-kernel accelerated GAN losses, normalisation blocks and training.

Importing fastgan touches no GPU and compiles nothing: backends are probed on first use.
"""

__version__ = "0.1.0"

from fastgan import data, distributed, losses, metrics, models, nn, ops, sampling
from fastgan.fusion import FuseReport, fuse
from fastgan.trainer import Trainer, TrainingDiverged
from fastgan._backend import BackendStatus, BackendUnavailableError, backends, use_backend

__all__ = [
    "BackendStatus",
    "BackendUnavailableError",
    "FuseReport",
    "Trainer",
    "TrainingDiverged",
    "backends",
    "data",
    "distributed",
    "fuse",
    "losses",
    "metrics",
    "models",
    "nn",
    "ops",
    "sampling",
    "use_backend",
    "__version__",
]
