"""Jacobian truncation: drawing a generator's samples away from the "no GAN's land".

A generator is continuous and its latent space is connected, so when the data has
disconnected modes (the toy grids) some latent mass must map onto the gaps between them.
Tanielian et al. (ICML 2020, "Learning disconnected manifolds: a no GAN's land") show those
gap samples are where G stretches the latent space most: where the Frobenius norm of its
Jacobian ‖∂G/∂z‖_F is largest. Their sampler draws more latents than needed and drops the
ones with the largest Jacobian norms. Keeping a fraction ``keep`` of the latents costs
1/keep generator passes plus the Jacobian norms, and changes nothing in training.

    ‖J‖_F² = Σ_k ‖Jᵀ e_k‖² over the output coordinates k (exact; one backward pass each),
           = E_u ‖Jᵀ u‖², u ~ N(0, I) in output space (Hutchinson; ``probes`` backward passes),

so only vector-Jacobian products are needed (any differentiable generator works, fused
custom ops included). Outputs of at most ``EXACT_MAX_OUTPUTS`` coordinates (the toy
data's 2) get the exact norm; larger ones (images) the estimate.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["EXACT_MAX_OUTPUTS", "jacobian_norms", "truncated_latents"]

EXACT_MAX_OUTPUTS = 16


def jacobian_norms(generator: nn.Module, z: Tensor, *, probes: int = 8,
                   rng: Optional[torch.Generator] = None) -> Tensor:
    """‖∂G(z_i)/∂z_i‖_F for each row of ``z`` (N, latent_dim) → (N,) float32.

    Exact when G's output has at most ``EXACT_MAX_OUTPUTS`` coordinates per sample, else
    estimated from ``probes`` random output directions drawn from ``rng``. The samples must be
    independent of each other in G (eval mode for BatchNorm), which :func:`truncated_latents`
    ensures.
    """
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be a positive integer, got {probes!r}")
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        out = generator(z).float().flatten(1)
        outputs = out.shape[1]
        squared = torch.zeros(z.shape[0], device=z.device, dtype=torch.float32)
        if outputs <= EXACT_MAX_OUTPUTS:
            directions = [torch.zeros_like(out).index_fill_(1, torch.tensor([k], device=out.device), 1.0)
                          for k in range(outputs)]
        else:
            directions = [torch.randn(out.shape, device=out.device, generator=rng) for _ in range(probes)]
        for index, direction in enumerate(directions):
            (row,) = torch.autograd.grad(out, z, direction, retain_graph=index + 1 < len(directions))
            squared += row.float().square().flatten(1).sum(1)
        if outputs > EXACT_MAX_OUTPUTS:
            squared /= len(directions)
    return squared.sqrt()


@torch.no_grad()
def truncated_latents(generator: nn.Module, n: int, latent_dim: int, keep: float, *, device=None,
                      rng: Optional[torch.Generator] = None, batch: int = 4096) -> Tensor:
    """``n`` latents (n, latent_dim): the ``ceil(n / keep)`` drawn from N(0, I) with the
    largest Jacobian norms dropped, in draw order. ``keep=1`` returns plain draws.

    The caller puts ``generator`` in eval mode (so BatchNorm does not mix samples).
    """
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ValueError(f"keep must be a fraction in (0, 1], got {keep!r}")
    drawn = n if keep == 1 else math.ceil(n / keep)
    z = torch.randn(drawn, latent_dim, device=device, generator=rng)
    if drawn == n:
        return z
    norms = torch.cat([jacobian_norms(generator, chunk, rng=rng) for chunk in z.split(batch)])
    kept = torch.topk(norms, n, largest=False).indices.sort().values
    return z[kept]
