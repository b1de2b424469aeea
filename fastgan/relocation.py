"""Component relocation: the discriminator's density ratio moves a mixture latent's components.

A generator with a mixture latent (:class:`fastgan.models.MixtureLatent`, one component per
mode) covers every mode only if its components end up one to a mode. Gradient descent alone
need not get there: once the discriminator resolves the modes, a component sitting on a mode
that another component already covers is at a local optimum (the pull of an empty mode next
door does not reach across the gap), so the duplicate stays and the empty mode stays empty.

The discriminator's logit r(x) estimates log p_data(x)/p_g(x) (the premise of
:mod:`fastgan.losses`), and it says exactly what is wrong:

* the component whose samples have the lowest mean r is where the generator puts the most
  mass for the data there (a duplicate, or samples between modes);
* real samples with a high r lie where data is missing from the generator's samples.

The components it moves first are duplicates: a component is one when another component's
latent mean lands (through the generator) within twice its own spread (the RMS distance of its
samples from their mean) of its own. Two copies on one mode are duplicates of each other; so is
a component smeared over others' modes, which is wrong where it is too; a tight component alone
on its mode is not. Only when there is none does it take the lowest-rated component of all;
and of a group of duplicates it never moves the last one left (with ``count`` > 1). Why: a
component alone on its mode can rate lowest too, when its samples spread wider than the mode;
moving it empties that mode, and the next moves chase it (on grid100, the runs with the most
moves ended with the fewest modes). Judging by the smaller of the two spreads instead, so that
a smeared component next to a tight one is no duplicate, measured 0.1–1.4 points lower
high-quality on four grid100 seeds.

:func:`relocate_components` moves such a component to such a place: it draws the target among
a pool of real samples with probability ∝ exp(r) (the ratio itself: an uncovered mode's
samples dominate), and finds the component's new latent mean by inverting the generator on
the target: a few Adam steps on the latent alone, from the latent means of the components
that land nearest and of as many others, keeping, of those that land about as close as the
best, the one farthest in latent space from every other component's mean (a latent next to a
neighbour's moves with it as G trains and the two merge again: on grid100, half the moves
made from the nearest start alone shared a mode again within 1,000 steps). It moves a
component only when the target's r exceeds the component's by ``min_gap`` (a density ratio of
e² by default), so a well-covered run is left alone. The EMA generator's component moves with
it, and :func:`forget_optimizer_state` zeroes the optimizer's moments in the moved rows. Adam's
step count is shared by all rows, so its bias correction does not restart for them: the moved
rows take steps of up to (1 − β₁)/√(1 − β₂) times the learning rate (about 16× with the toy
preset's betas (0.5, 0.999)), falling back to the usual size over a few hundred steps. That
burst is what lets a moved component settle at a decayed learning rate: on grid100 it raised
high-quality by 0.5–4.0 points on five seeds.

The trainer calls it every ``relocate_every`` steps over a window of the run
(:class:`fastgan.Trainer`, ``fastgan train --relocate-every``); it is a few hundred small
forward passes, no data-space knowledge beyond the samples it is given.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from fastgan.models import MixtureLatent, _check_positive

__all__ = ["Relocation", "forget_optimizer_state", "relocate_components", "supports_relocation"]

INVERSION_STARTS = 8  # latent starts per inversion from the components landing nearest, and as many at random
INVERSION_STEPS = 60
INVERSION_LR = 0.05
DUPLICATE_SPREADS = 2.0  # a duplicate: another component lands within this many of its own samples' RMS spreads


class Relocation(NamedTuple):
    """One component moved: its index, its mean r before, the target's r, and how far (in data
    units) the generator's output for its new latent mean lands from the target."""

    component: int
    component_log_ratio: float
    target_log_ratio: float
    miss: float


def supports_relocation(generator: nn.Module) -> bool:
    """True when ``generator`` has a :class:`~fastgan.models.MixtureLatent` ``prior`` and a
    ``decode(latent)`` method (the map after the prior), as ``MLPGenerator(components=K)`` does."""
    return isinstance(getattr(generator, "prior", None), MixtureLatent) and callable(getattr(generator, "decode", None))


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def _invert(generator: nn.Module, target: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
    """(latents (S, latent_dim), misses (S,)): Adam on the latents ``starts`` to bring
    ``generator.decode`` to ``target``, each start on its own; the generator's parameters are
    not touched."""
    latent = starts.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([latent], lr=INVERSION_LR)
    flat_target = _flat(target[None])
    for _ in range(INVERSION_STEPS):
        loss = (_flat(generator.decode(latent)) - flat_target).square().sum(1)
        (latent.grad,) = torch.autograd.grad(loss.sum(), latent)
        optimizer.step()
    with torch.no_grad():
        miss = (_flat(generator.decode(latent)) - flat_target).square().sum(1).sqrt()
    return latent.detach(), miss


def _sources(landing: Tensor, spread: Tensor, ratio: Tensor, count: int) -> list[int]:
    """Up to ``count`` components to move, in order: at each pick, the lowest-rated component
    that still has a duplicate among the components not yet picked, else the lowest-rated one
    left that was not a duplicate of a picked one, either way (the last of a group stays on its
    mode). A component is a duplicate when another lands closer to it than
    ``DUPLICATE_SPREADS`` times its own spread."""
    close = torch.cdist(landing, landing) < DUPLICATE_SPREADS * spread[:, None]  # row i: within i's own spread
    close.fill_diagonal_(False)
    left = torch.ones(ratio.shape[0], dtype=torch.bool, device=ratio.device)
    kept_last = torch.zeros_like(left)
    by_ratio = ratio.argsort()
    sources = []
    for _ in range(count):
        duplicate = (close & left[None, :]).any(1) & left
        candidates = by_ratio[duplicate[by_ratio]]
        if candidates.numel() == 0:
            candidates = by_ratio[(left & ~kept_last)[by_ratio]]
        if candidates.numel() == 0:
            break
        source = int(candidates[0])
        sources.append(source)
        left[source] = False
        kept_last |= close[source] | close[:, source]  # duplicates either way: one of each group stays
    return sources


def relocate_components(
    generator: nn.Module,
    discriminator: nn.Module,
    real: Tensor,
    *,
    ema: Optional[nn.Module] = None,
    count: int = 1,
    min_gap: float = 2.0,
    samples_per_component: int = 32,
    generator_rng: Optional[torch.Generator] = None,
) -> list[Relocation]:
    """Move up to ``count`` of ``generator``'s mixture components, duplicates first and the
    lowest-rated by the discriminator first among them, each to a real sample drawn with
    probability ∝ exp(r) (see the module docstring).

    Args:
        generator: with a mixture latent (:func:`supports_relocation`); its ``prior.means`` and
            ``prior.log_scales`` rows are overwritten in place (the moved component takes the
            log-scales of the component its inversion started from).
        discriminator: x → logits (N,), read as log p_data/p_g.
        real: (P, ...) a pool of real samples (a few thousand) to choose targets from.
        ema: the EMA copy of ``generator``, whose rows get the same values.
        count: components moved at most (the lowest-rated duplicates, then the lowest-rated
            others; each to its own target).
        samples_per_component: generator samples per component for its mean r and its spread
            (≥ 1; with 1 the spread is 0 and no component counts as a duplicate).
        min_gap: move only when target r − component r ≥ this.
        generator_rng: a ``torch.Generator`` on the models' device for the draws.
    Returns:
        The moves made (possibly none).
    """
    if not supports_relocation(generator):
        raise TypeError("relocate_components needs a generator with a MixtureLatent `prior` and a `decode` method "
                        "(e.g. fastgan.models.MLPGenerator(components=K))")
    _check_positive(samples_per_component, "samples_per_component")
    prior = generator.prior
    components = prior.components
    with torch.no_grad():
        index = torch.arange(components, device=prior.means.device).repeat_interleave(samples_per_component)
        fakes = generator(prior.noise_for(index, generator_rng))
        component_ratio = discriminator(fakes).float().view(components, samples_per_component).mean(1)
        samples = _flat(fakes).float().view(components, samples_per_component, -1)
        spread = (samples - samples.mean(1, keepdim=True)).square().sum(2).mean(1).sqrt()
        real_ratio = discriminator(real).float().view(-1)
        if count < 1 or real_ratio.numel() == 0 or not (component_ratio.isfinite().all() and real_ratio.isfinite().all()):
            return []  # nothing asked for, nothing to choose from, or a diverged D (the trainer reports that)
        # Targets ∝ exp(r), distinct samples; never more than there are components or samples.
        count = min(count, components, real_ratio.numel())
        picks = torch.multinomial(torch.softmax(real_ratio, 0), count, replacement=False, generator=generator_rng)
        landing = _flat(generator.decode(prior.means))
        sources = _sources(landing, spread, component_ratio, count)
    moves = []
    for source, pick in zip(sources, picks.tolist()):
        gap = float(real_ratio[pick] - component_ratio[source])
        if gap < min_gap:
            continue
        target = real[pick]
        # Starts: the latent means of the components that land nearest, and as many others.
        nearest = (landing - _flat(target[None])).norm(dim=1).argsort()[:INVERSION_STARTS]
        others = torch.randperm(components, generator=generator_rng, device=landing.device)[:INVERSION_STARTS]
        starts = torch.cat([nearest, others])
        with torch.enable_grad():
            latents, misses = _invert(generator, target, prior.means[starts])
        with torch.no_grad():
            # Of the latents that land about as close as the closest (within a tenth of the
            # typical distance between the components' landings), the one farthest from every
            # other component's mean: a latent mean next to another component's moves with it as
            # G trains, and the two merge again.
            spacing = float(torch.cdist(landing, landing).fill_diagonal_(float("inf")).min(1).values.median())
            close_enough = misses <= misses.min() + 0.1 * spacing
            kept = torch.arange(components, device=landing.device) != source
            if kept.any():
                isolation = torch.cdist(latents, prior.means[kept]).min(1).values.masked_fill(~close_enough, -1.0)
                best = int(isolation.argmax())
            else:
                best = int(misses.argmin())
        latent, miss, start = latents[best], float(misses[best]), int(starts[best])
        with torch.no_grad():
            for model in (generator, ema):
                if model is not None:
                    model.prior.means[source] = latent.to(model.prior.means.dtype)
                    model.prior.log_scales[source] = model.prior.log_scales[start]
            landing[source] = _flat(generator.decode(latent[None]))[0]
        moves.append(Relocation(source, float(component_ratio[source]), float(real_ratio[pick]), miss))
    return moves


def forget_optimizer_state(optimizer: torch.optim.Optimizer, generator: nn.Module, components) -> None:
    """Zero ``optimizer``'s per-element state (Adam's moments; any state tensor shaped like its
    parameter) in the rows of ``generator.prior.means`` and ``prior.log_scales`` that belong to
    ``components`` (an iterable of component indices). Scalar state (Adam's step count) is
    shared by all rows and left alone, so for Adam this is not a fresh start: with the bias
    correction long gone, the rows' next steps are up to (1 − β₁)/√(1 − β₂) times the learning
    rate, decaying over about 1/(1 − β₂) steps (see the module docstring). In place, so CUDA
    graphs that captured the optimizer's step keep their addresses."""
    rows = sorted({int(c) for c in components})
    if not rows:
        return
    prior = generator.prior
    for parameter in (prior.means, prior.log_scales):
        for value in optimizer.state.get(parameter, {}).values():
            if isinstance(value, Tensor) and value.shape == parameter.shape:
                value[rows] = 0
