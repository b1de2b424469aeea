"""Sampling beyond the generator alone: Jacobian truncation and the density-ratio samplers.

**Jacobian truncation.** A generator is continuous and its latent space is connected, so when
the data has disconnected modes (the toy grids) some latent mass must map onto the gaps
between them. Tanielian et al. (ICML 2020, "Learning disconnected manifolds: a no GAN's
land") show those gap samples are where G stretches the latent space most: where the
Frobenius norm of its Jacobian ‖∂G/∂z‖_F is largest. Their sampler draws more latents than
needed and drops the ones with the largest Jacobian norms. Keeping a fraction ``keep`` of the
latents costs 1/keep generator passes plus the Jacobian norms, and changes nothing in training.

    ‖J‖_F² = Σ_k ‖Jᵀ e_k‖² over the output coordinates k (exact; one backward pass each),
           = E_u ‖Jᵀ u‖², u ~ N(0, I) in output space (Hutchinson; ``probes`` backward passes),

so only vector-Jacobian products are needed (any differentiable generator works, fused
custom ops included). Outputs of at most ``EXACT_MAX_OUTPUTS`` coordinates (the toy
data's 2) get the exact norm; larger ones (images) the estimate.

**Density-ratio samplers.** A discriminator trained with BCE has the optimum
D*(x) = log p_data(x) / p_g(x) =: r(x) as its logit, so p_data = p_g · exp(r): the generator is
a proposal distribution and exp(r) the importance weight that corrects it. Three classical
ways to use that, all needing only generator draws and the logit ``log_ratio(x)``:

* ``"rejection"`` (discriminator rejection sampling, Azadi et al., ICLR 2019): accept a draw
  x ~ p_g with probability exp(r(x) − M), M ≥ sup r. The accepted draws are exactly p_data
  and the acceptance rate is E_pg[exp(r − M)] = exp(−M) ∫ p_data = exp(−M). M is not known:
  as in the paper it is the largest r of ``burn_in`` draws and is raised whenever a larger
  r turns up (draws accepted before that were accepted with slightly too high a
  probability). The paper's shifted form accepts with σ(logit(exp(r − M)) − γ): γ = 0 is the
  exact rule, γ > 0 rejects more (sharper, no longer p_data).
* ``"mh"`` (Metropolis–Hastings GAN, Turner et al., ICML 2019): one independence-sampler
  chain per output sample; each of ``steps`` steps proposes x' ~ p_g and moves with
  probability min(1, exp(r(x') − r(x))) (= p_data(x') p_g(x) / (p_data(x) p_g(x'))). The
  chain's stationary law is p_data and it forgets its start geometrically, at least as fast
  as (1 − exp(−sup r))^steps. Chains start from generator draws unless ``initial`` is given
  (the paper starts them at real samples, which removes the burn-in bias altogether). The
  acceptance rate at stationarity is E_{x~p_data, x'~p_g}[min(1, exp(r(x') − r(x)))].
* ``"sir"`` (sampling–importance–resampling, Rubin 1988): draw ``pool`` × n proposals,
  weight them by exp(r) and resample n of them with replacement in proportion to the weights.
  Consistent as the pool grows (bias O(1/pool)); duplicates are possible. Its "acceptance" is
  the effective-sample-size fraction (Σw)² / (m Σw²) of the m proposals, which tends to
  1 / E_pg[exp(2r)] = 1 / (1 + χ²(p_data ‖ p_g)).

All of them are exact only as far as the discriminator's logit is the true log-ratio; on a
trained GAN they trade generator passes for samples closer to what D considers real.
:func:`sample` is the common entry point, also for ``"jacobian"`` and ``"none"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

__all__ = ["EXACT_MAX_OUTPUTS", "SAMPLERS", "SampleResult", "jacobian_norms", "mh_sample", "rejection_sample",
           "sample", "sample_models", "sir_sample", "truncated_latents"]

#: The names :func:`sample` accepts: the generator alone, Jacobian truncation, and the three
#: density-ratio samplers.
SAMPLERS = ("none", "jacobian", "rejection", "mh", "sir")

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


# --------------------------------------------------------------------------------------
# Density-ratio samplers
# --------------------------------------------------------------------------------------

LogRatio = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class SampleResult:
    """What a sampler returns.

    Attributes:
        samples: (n, ...) the samples, in the generator's dtype and on its device.
        acceptance: the sampler's own efficiency figure: accepted / examined proposals
            (``rejection``), accepted / proposed moves (``mh``), the effective-sample-size
            fraction of the pool (``sir``), ``keep`` (``jacobian``), 1 (``none``).
        proposals: generator samples drawn (not counting SIR's regeneration of the chosen ones).
        log_ratio_max: ``rejection`` only: the final estimate M of sup r.
    """

    samples: Tensor
    acceptance: float
    proposals: int
    log_ratio_max: Optional[float] = None


def _check_count(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}")
    return value


def _resolve(generator, latent_dim, device):
    if latent_dim is None:
        latent_dim = getattr(generator, "latent_dim", None)
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        raise ValueError("latent_dim: pass it, or give the generator a positive int `latent_dim` attribute")
    if device is None:
        parameter = next(generator.parameters(), None) if isinstance(generator, nn.Module) else None
        device = parameter.device if parameter is not None else torch.device("cpu")
    return latent_dim, torch.device(device)


def _log_ratios(log_ratio: LogRatio, x: Tensor) -> Tensor:
    """The discriminator's logits for x as float64 (N,); an (N, 1) output is accepted."""
    r = log_ratio(x)
    if r.shape not in ((x.shape[0],), (x.shape[0], 1)):
        raise ValueError(f"discriminator_log_ratio must return shape ({x.shape[0]},) for {x.shape[0]} samples, "
                         f"got {tuple(r.shape)}")
    r = r.reshape(-1).double()
    if torch.isnan(r).any():
        raise ValueError("discriminator_log_ratio returned NaN")
    return r


@torch.no_grad()
def rejection_sample(generator: Callable[[Tensor], Tensor], discriminator_log_ratio: LogRatio, n: int, *,
                     latent_dim: Optional[int] = None, device=None, rng: Optional[torch.Generator] = None,
                     batch: int = 4096, burn_in: int = 10_000, gamma: float = 0.0,
                     max_proposals: Optional[int] = None) -> SampleResult:
    """Discriminator rejection sampling (Azadi et al., 2019): n samples (n, ...).

    Args:
        generator: z (B, latent_dim) → x (B, ...), deterministic (eval mode).
        discriminator_log_ratio: x (B, ...) → r(x) = log p_data(x)/p_g(x), shape (B,).
        burn_in: generator draws used only to estimate M = max r before sampling starts.
        gamma: the paper's shift: accept with σ(logit(exp(r − M)) − γ); 0 is the exact rule.
        max_proposals: stop with an error after this many candidates (default 1,000 · n).

    The acceptance rate is exp(−M) when M = sup r exactly (see the module docstring).
    """
    _check_count(n, "n", 0)
    _check_count(batch, "batch")
    _check_count(burn_in, "burn_in")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma):
        raise ValueError(f"gamma must be a finite number, got {gamma!r}")
    limit = 1000 * max(n, 1) if max_proposals is None else _check_count(max_proposals, "max_proposals")
    latent_dim, device = _resolve(generator, latent_dim, device)

    def candidates(count: int):
        x = generator(torch.randn(count, latent_dim, device=device, generator=rng))
        return x, _log_ratios(discriminator_log_ratio, x)

    log_ratio_max = -math.inf
    for start in range(0, burn_in, batch):
        log_ratio_max = max(log_ratio_max, candidates(min(batch, burn_in - start))[1].max().item())
    accepted: list[Tensor] = []
    kept = examined = 0
    while kept < n:
        if examined >= limit:
            raise RuntimeError(f"rejection sampling accepted {kept} of n={n} samples in {examined} proposals "
                               f"(max log-ratio M = {log_ratio_max:.3g}, so the acceptance rate is about "
                               f"exp(-M)); raise max_proposals or use the 'mh' or 'sir' sampler")
        x, r = candidates(batch)
        log_ratio_max = max(log_ratio_max, r.max().item())  # the paper's update of M
        shifted = r - log_ratio_max  # ≤ 0
        probability = shifted.exp()
        if gamma != 0:
            logit = shifted - torch.log(-torch.expm1(shifted))  # log p / (1 − p); +inf at p = 1
            probability = torch.sigmoid(logit - gamma)
        take = torch.rand(batch, device=device, dtype=torch.float64, generator=rng) < probability
        accepted.append(x[take])
        kept += int(take.sum())
        examined += batch
    samples = torch.cat(accepted)[:n] if accepted else generator(torch.empty(0, latent_dim, device=device))
    return SampleResult(samples, kept / examined if examined else 1.0, burn_in + examined, log_ratio_max)


@torch.no_grad()
def mh_sample(generator: Callable[[Tensor], Tensor], discriminator_log_ratio: LogRatio, n: int, *,
              steps: int = 20, initial: Optional[Tensor] = None, latent_dim: Optional[int] = None, device=None,
              rng: Optional[torch.Generator] = None, batch: int = 4096) -> SampleResult:
    """Metropolis–Hastings over generator proposals (Turner et al., 2019): n samples (n, ...).

    n independent chains of ``steps`` independence-sampler steps each: propose x' ~ p_g, move
    with probability min(1, exp(r(x') − r(x))). ``initial`` (n, ...): the chains' starting
    points (e.g. real samples, as in the paper); default generator draws. ``generator`` and
    ``discriminator_log_ratio`` as in :func:`rejection_sample`. Costs n · steps generator draws
    (plus n for the starts).
    """
    _check_count(n, "n", 0)
    _check_count(steps, "steps")
    _check_count(batch, "batch")
    latent_dim, device = _resolve(generator, latent_dim, device)
    if initial is not None and initial.shape[0] != n:
        raise ValueError(f"initial must hold one starting sample per chain ({n}), got shape {tuple(initial.shape)}")
    draw = lambda count: generator(torch.randn(count, latent_dim, device=device, generator=rng))  # noqa: E731
    chunks, moves, proposals = [], 0, 0
    for start in range(0, n, batch):
        count = min(batch, n - start)
        if initial is None:
            current = draw(count)
            proposals += count
        else:
            current = initial[start:start + count].to(device)
        current_r = _log_ratios(discriminator_log_ratio, current)
        for _ in range(steps):
            proposal = draw(count)
            proposal_r = _log_ratios(discriminator_log_ratio, proposal)
            uniform = torch.rand(count, device=device, dtype=torch.float64, generator=rng)
            move = uniform.log() < proposal_r - current_r  # u < min(1, exp(Δ))
            current = torch.where(move.view(-1, *([1] * (current.dim() - 1))), proposal, current)
            current_r = torch.where(move, proposal_r, current_r)
            moves += int(move.sum())
        proposals += count * steps
        chunks.append(current)
    samples = torch.cat(chunks) if chunks else draw(0)
    return SampleResult(samples, moves / (n * steps) if n else 1.0, proposals)


@torch.no_grad()
def sir_sample(generator: Callable[[Tensor], Tensor], discriminator_log_ratio: LogRatio, n: int, *,
               pool: int = 20, latent_dim: Optional[int] = None, device=None,
               rng: Optional[torch.Generator] = None, batch: int = 4096) -> SampleResult:
    """Sampling–importance–resampling: n samples (n, ...) resampled from ``pool`` · n proposals.

    The proposals' weights are exp(r) (normalised in float64 via softmax); n indices are
    drawn with replacement in proportion to them. Only the proposals' latents are kept, and the
    chosen ones are passed through ``generator`` again (so it must be deterministic: eval mode),
    which keeps memory at the pool's latents even for images.
    """
    _check_count(n, "n", 0)
    _check_count(pool, "pool")
    _check_count(batch, "batch")
    latent_dim, device = _resolve(generator, latent_dim, device)
    size = pool * n
    if size > 2**24:
        raise ValueError(f"pool * n must be at most 2**24 (torch.multinomial's limit), got {size}")
    if n == 0:
        return SampleResult(generator(torch.empty(0, latent_dim, device=device)), 1.0, 0)
    z = torch.randn(size, latent_dim, device=device, generator=rng)
    r = torch.cat([_log_ratios(discriminator_log_ratio, generator(chunk)) for chunk in z.split(batch)])
    weights = torch.softmax(r, 0)
    chosen = torch.multinomial(weights, n, replacement=True, generator=rng)
    samples = torch.cat([generator(chunk) for chunk in z[chosen].split(batch)])
    effective_fraction = (1.0 / weights.square().sum()).item() / size
    return SampleResult(samples, effective_fraction, size)


def sample(generator: Callable[[Tensor], Tensor], discriminator_log_ratio: Optional[LogRatio], n: int, *,
           sampler: str = "rejection", latent_dim: Optional[int] = None, device=None,
           rng: Optional[torch.Generator] = None, batch: int = 4096, **options) -> SampleResult:
    """n samples (n, ...) from ``generator`` through one of :data:`SAMPLERS`.

    Args:
        generator: z (B, latent_dim) → x (B, ...), in eval mode (deterministic, no BatchNorm
            batch statistics); ``latent_dim`` from its attribute unless given.
        discriminator_log_ratio: x (B, ...) → r(x) (B,), the discriminator's logit read as
            log p_data(x)/p_g(x); unused (may be None) for ``"none"`` and ``"jacobian"``.
        n: how many samples.
        sampler: ``"none"`` (the generator alone), ``"jacobian"`` (option ``keep``),
            ``"rejection"`` (``burn_in``, ``gamma``, ``max_proposals``), ``"mh"`` (``steps``,
            ``initial``) or ``"sir"`` (``pool``); see the functions of the same names.
        rng: the torch.Generator all draws come from (on ``device``).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}")
    _check_count(n, "n", 0)
    common = dict(latent_dim=latent_dim, device=device, rng=rng, batch=batch)
    if sampler in ("none", "jacobian"):
        keep = options.pop("keep", 1.0) if sampler == "jacobian" else 1.0
        if options:
            raise TypeError(f"sampler {sampler!r} takes no option(s) {', '.join(sorted(options))}")
        latent_dim, device = _resolve(generator, latent_dim, device)
        z = truncated_latents(generator, n, latent_dim, keep, device=device, rng=rng, batch=batch)
        with torch.no_grad():
            samples = torch.cat([generator(chunk) for chunk in z.split(batch)]) if n else generator(z)
        return SampleResult(samples, float(keep), n if keep == 1 else math.ceil(n / keep))
    if discriminator_log_ratio is None:
        raise ValueError(f"sampler {sampler!r} needs discriminator_log_ratio")
    function = {"rejection": rejection_sample, "mh": mh_sample, "sir": sir_sample}[sampler]
    return function(generator, discriminator_log_ratio, n, **common, **options)


def sample_models(generator: nn.Module, discriminator: Optional[nn.Module], n: int, *, sampler: str = "none",
                  rng: Optional[torch.Generator] = None, device=None, latent_dim: Optional[int] = None,
                  batch: int = 4096, **options) -> SampleResult:
    """:func:`sample` with a trained generator and discriminator module: both are put in eval
    mode for the call (and restored after), the discriminator's logit is the log-ratio, and the
    samples come back as float32 (n, ...). With a trainer, pass its EMA generator: the
    discriminator was trained against the live generator, whose distribution the EMA's is
    close to (the ratio is then an approximation, as any trained discriminator's is).
    """
    modules = [module for module in (generator, discriminator) if module is not None]
    modes = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        log_ratio = (lambda x: discriminator(x).float()) if discriminator is not None else None
        result = sample(generator, log_ratio, n, sampler=sampler, rng=rng, device=device, latent_dim=latent_dim,
                        batch=batch, **options)
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)
    return SampleResult(result.samples.float(), result.acceptance, result.proposals, result.log_ratio_max)
