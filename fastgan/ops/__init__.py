"""fastgan's differentiable ops. Each public function picks a backend per call
(``cuda``, ``triton`` or ``torch``) and has its plain-PyTorch reference beside it.

One module per op family: :mod:`fastgan.ops.bce` (BCE-with-logits and the fused GAN form),
:mod:`fastgan.ops.renyi` (the Rényi-α divergence logsumexp reduction),
:mod:`fastgan.ops.batch_norm` (fused BatchNorm + LeakyReLU, optionally synchronised across processes).
"""

from fastgan.ops.batch_norm import batch_norm_leaky_relu, batch_norm_leaky_relu_reference
from fastgan.ops.bce import (
    GanBCELosses,
    bce_with_logits,
    bce_with_logits_reference,
    gan_bce_losses,
    gan_bce_losses_reference,
)
from fastgan.ops.renyi import renyi_divergence, renyi_divergence_reference

__all__ = [
    "batch_norm_leaky_relu",
    "batch_norm_leaky_relu_reference",
    "GanBCELosses",
    "bce_with_logits",
    "bce_with_logits_reference",
    "gan_bce_losses",
    "gan_bce_losses_reference",
    "renyi_divergence",
    "renyi_divergence_reference",
]
