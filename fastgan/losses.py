"""GAN losses from the density-ratio / f-divergence view, selected by name.

A discriminator trained as a classifier between data (label 1) and generated samples
(label 0) has, at its optimum, D* = p_data/(p_data + p_g): its logit v estimates the log
density ratio r = log p_data/p_g. The generator then minimises a divergence estimated from
r on its own samples. Every loss here takes the discriminator's raw outputs ("logits", any
shape; all elements are samples) and is built on the fused ops where one exists.

Notation: p = p_data, q = p_g, v the discriminator output, r the log ratio it implies,
E_p over real samples, E_q over generated ones, sp = softplus, σ = sigmoid. All optima are
at p_g = p_data, where D* = 1/2 (logit 0) and every divergence below is 0.

Discriminator losses (minimised by the discriminator):

=================  ==============================================  ===========================
name               loss                                            estimates (telemetry)
=================  ==============================================  ===========================
``bce``            E_p[sp(−v)] + E_q[sp(v)]  (fused; NCE/minimax)   JSD(p, q) = log 2 − loss/2
``hinge``          E_p[relu(1 − v)] + E_q[relu(1 + v)]              TV(p, q) = 1 − loss/2
``lsgan``          ½E_p[(v − 1)²] + ½E_q[v²]                        Δ(p, q) = 2 − 8·loss
``wgan``           E_q[v] − E_p[v]                                  W1(p, q) = −loss
``fgan-<div>``     −(E_p[T(v)] − E_q[f*(T(v))])                     D_f(p ‖ q) = −loss
=================  ==============================================  ===========================

Each estimate is the variational lower bound the loss maximises, tight at the optimal
discriminator: optimum bce loss = log 4 − 2·JSD (so the value V(D*, G) = 2·JSD − log 4);
hinge at v = sign(p − q) gives 2 − 2·TV; lsgan at v = p/(p+q) gives ¼ − Δ/8 with
Δ = ∫(p − q)²/(p + q) the triangular discrimination; wgan's is W1 only if the critic is
1-Lipschitz (add a gradient penalty or spectral normalisation).

Generator losses (minimised by the generator; v = D(G(z))):

==================  ===========================================  ===========================
name                loss                                         divergence (telemetry)
==================  ===========================================  ===========================
``minimax``         E_q[log(1 − D)] = −E_q[sp(v)]  (fused)       JSD(p, q)
``nonsaturating``   −E_q[log D] = E_q[sp(−v)]  (fused)           KL(q ‖ p) − 2·JSD(p, q)
``reverse_kl``      KL(q ‖ p) = −E_q[r]  (fused)                 KL(q ‖ p)
``forward_kl``      KL(p ‖ q) = E_q[e^r·r], self-normalised       KL(p ‖ q)
``renyi``           D_α(q ‖ p)  (fused logsumexp, any α ≥ 0)     D_α(q ‖ p)
``hinge``/``wgan``  −E_q[v]                                      TV / W1, if real logits given
``lsgan``           ½E_q[(v − 1)²]                               Δ, if real logits given
``fgan-<div>``      −E_q[T(v)] (Nowozin's choice), or the        D_f(p ‖ q), if real logits
                    saddle −E_q[f*(T(v))] with saturating=True     given
==================  ===========================================  ===========================

The classifier-based generator losses read r = v. ``nonsaturating``'s divergence is the one
its gradient descends at D* (Arjovsky & Bottou, 2017); it is not itself ≥ 0.

``forward_kl``. E_q[e^r·r] weighs each sample by p/q = e^r, whose sum is not N unless the
discriminator is exact, and e^r overflows for large logits. The loss is therefore
self-normalised: with w = softmax(r) over the batch, its value is Σ w_i·log(N·w_i) =
Σ w_i·r_i − (logsumexp(r) − log N) = KL(w ‖ uniform) ≥ 0, which converges to KL(p ‖ q), and
its gradient is the reweighted one, −Σ w_i·∇r_i, the gradient of KL(p ‖ q_θ) through a frozen
discriminator (for a push-forward q_θ, ∇_θ D_f = ∇ E_q[f(u) − u·f'(u)] at u = e^r; for
f = u log u that is −∇E_q[e^r]). Differentiating E_q[e^r·r] literally would give
−E_q[e^r(1 + r)∇r], the wrong sign wherever r > −1. The gradient is the Rényi op's at α = 0.

``renyi``. :func:`fastgan.ops.renyi_divergence` over all generated samples. Through a frozen
discriminator its gradient is (1/α)·∇_θ D_α(q_θ ‖ p) for α > 0, the same direction
(a per-α step-size scale); at α = 0 it is the forward-KL direction above.

f-GAN family (Nowozin, Cseke & Tomioka, 2016): divergence D_f(p ‖ q) = E_q[f(p/q)], output
activation T = g_f(v), conjugate f*. Composed stably (softplus, expm1; never log(σ(v) + ε)):

==============  =============================  =====================  =====================  ===========
``<div>``       f(u)                           T = g_f(v)             f*(T(v))               r at optimum
==============  =============================  =====================  =====================  ===========
``kl``          u log u                        v                      exp(v − 1)             v − 1
``reverse-kl``  −log u                         −exp(−v)               v − 1                  v
``pearson``     (u − 1)²                       v                      v²/4 + v               log(1 + v/2)
``hellinger``   (√u − 1)²                      1 − exp(−v)            expm1(v)               2v
``js``          u log u − (u+1) log((u+1)/2)   log 2 − sp(−v)         sp(v) − log 2          v
``gan``         u log u − (u+1) log(u+1)       −sp(−v) = log σ(v)     sp(v) = −log(1 − σ)    v
==============  =============================  =====================  =====================  ===========

``js``'s D_f is 2·JSD, ``gan``'s 2·JSD − log 4 (both are BCE up to constants, so they run
on the fused BCE kernel). The saddle generator objective −E_q[f*(T)] has the exact
push-forward gradient of D_f at the optimal T; Nowozin et al. train with −E_q[T] instead,
which is the default here.

Telemetry. With ``telemetry=True`` (default) each call also returns, detached and on the
logits' device (no host synchronisation; read them when you log): the divergence estimate,
the means of D(real) and D(fake), and the fraction of saturated logits, |r| > 15, where a
sigmoid's gradient has vanished. D is σ(r) with r the log ratio the loss implies (the last
column above for f-GANs); for ``hinge``, ``wgan`` and ``lsgan``, whose outputs are not
logits, D is the raw output and the saturation test applies to it.
"""

from __future__ import annotations

import abc
import inspect
import math
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastgan.ops.bce import bce_with_logits, gan_bce_losses
from fastgan.ops.renyi import check_alpha, renyi_divergence

__all__ = [
    "DiscriminatorLoss",
    "F_DIVERGENCES",
    "FDivergence",
    "GeneratorLoss",
    "LossOutput",
    "ROLES",
    "SATURATION_THRESHOLD",
    "Telemetry",
    "available",
    "get",
]

SATURATION_THRESHOLD = 15.0
"""|r| above which a logit counts as saturated: σ'(15) ≈ 3e-7."""

ROLES = ("discriminator", "generator")
_LOG2 = math.log(2.0)


class Telemetry(NamedTuple):
    """Cheap on-device statistics of one loss evaluation; 0-d float32 tensors, detached.

    ``divergence``: the estimate of the divergence the loss targets (see the module
    docstring), or None where it needs real logits that were not passed.
    ``d_real`` / ``d_fake``: mean discriminator output D on real / generated samples
    (None for ``d_real`` when no real logits were passed).
    ``saturated_fraction``: fraction of the logits passed with |r| > SATURATION_THRESHOLD.
    """

    divergence: Optional[Tensor]
    d_real: Optional[Tensor]
    d_fake: Tensor
    saturated_fraction: Tensor


class LossOutput(NamedTuple):
    """``loss``: the 0-d loss to backpropagate (in the logits' dtype).
    ``telemetry``: a :class:`Telemetry`, or None when called with ``telemetry=False``."""

    loss: Tensor
    telemetry: Optional[Telemetry]


# --------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------


def _samples(value, name: str) -> Tensor:
    """The logits as a flat (N,) tensor (a view when possible); clear errors otherwise."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if value.numel() == 0:
        raise ValueError(f"{name} is empty: a loss needs at least one sample")
    return value.reshape(-1)


def _float(v: Tensor) -> Tensor:
    """fp32 math for half-precision logits; float32/float64 stay as they are."""
    return v.float() if v.dtype in (torch.float16, torch.bfloat16) else v


def _self_normalised_mean(log_weight: Tensor, values: Tensor) -> Tensor:
    """Σ softmax(log_weight)_i · values_i: an E_p average from q samples, weights p/q = e^r."""
    return (torch.softmax(log_weight, 0) * values).sum()


def _jsd_from_ratio(r: Tensor) -> Tensor:
    """JSD(p, q) = ½E_p[log 2σ(r)] + ½E_q[log 2(1 − σ(r))] from q samples, E_p self-normalised."""
    return _LOG2 - 0.5 * _self_normalised_mean(r, F.softplus(-r)) - 0.5 * F.softplus(r).mean()


def _hinge_discriminator(real: Tensor, fake: Tensor) -> Tensor:
    return (F.relu(1 - _float(real)).mean() + F.relu(1 + _float(fake)).mean()).to(real.dtype)


def _lsgan_discriminator(real: Tensor, fake: Tensor) -> Tensor:
    return (0.5 * (_float(real) - 1).square().mean() + 0.5 * _float(fake).square().mean()).to(real.dtype)


def _saturated(values: Tensor) -> Tensor:
    return (values.abs() > SATURATION_THRESHOLD).sum()


class _Loss(abc.ABC):
    """What every loss has: a registry name, a role, the divergence it targets."""

    name: str = ""
    role: str = ""
    divergence: str = ""
    summary: str = ""
    #: Whether the loss couples the samples of a batch (a logsumexp over it), so that its
    #: mean over shards differs from its value on the whole batch (data-parallel training
    #: then gathers the logits first).
    couples_batch: bool = False

    def __init__(self, *, backend: Optional[str] = None) -> None:
        self.backend = backend

    def _params(self) -> dict:
        return {}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({self.name!r}{', ' + params if params else ''})"

    # Telemetry hooks. Classifier-type losses: the logit is the log ratio and D = σ(r).
    def log_ratio(self, v: Tensor) -> Tensor:
        """The log density ratio r = log p_data/p_g this loss's optimal discriminator implies."""
        return v

    def probability(self, v: Tensor) -> Tensor:
        """D, the discriminator output whose real/fake means the telemetry reports."""
        return torch.sigmoid(self.log_ratio(v))

    def _statistics(self, real: Optional[Tensor], fake: Tensor):
        fake32 = fake.detach().float()
        d_fake = self.probability(fake32).mean()
        saturated = _saturated(self.log_ratio(fake32))
        count = fake.numel()
        d_real = None
        if real is not None:
            real32 = real.detach().float()
            d_real = self.probability(real32).mean()
            saturated = saturated + _saturated(self.log_ratio(real32))
            count += real.numel()
        return d_real, d_fake, saturated.float() / count


class _CriticLoss(_Loss):
    """Losses whose output is a score, not a logit: D is the raw output."""

    def log_ratio(self, v: Tensor) -> Tensor:
        return v

    def probability(self, v: Tensor) -> Tensor:
        return v


# --------------------------------------------------------------------------------------
# Discriminator losses
# --------------------------------------------------------------------------------------


class DiscriminatorLoss(_Loss):
    """``loss(real_logits, fake_logits, *, telemetry=True) -> LossOutput``.

    ``real_logits``: D on data, any shape ``(*R)``; ``fake_logits``: D on generated samples
    (detach them from the generator), any shape ``(*F)``. Every element is one sample.
    """

    role = "discriminator"

    def __call__(self, real_logits: Tensor, fake_logits: Tensor, *, telemetry: bool = True) -> LossOutput:
        real = _samples(real_logits, "real_logits")
        fake = _samples(fake_logits, "fake_logits")
        if real.device != fake.device:
            raise RuntimeError(f"fake_logits is on {fake.device} but real_logits is on {real.device}")
        loss = self._loss(real, fake)
        if not telemetry:
            return LossOutput(loss, None)
        with torch.no_grad():
            d_real, d_fake, saturated = self._statistics(real, fake)
            divergence = self._estimate(loss.detach().float())
        return LossOutput(loss, Telemetry(divergence, d_real, d_fake, saturated))

    @abc.abstractmethod
    def _loss(self, real: Tensor, fake: Tensor) -> Tensor:
        """The loss of the flattened logits."""

    @abc.abstractmethod
    def _estimate(self, loss: Tensor) -> Tensor:
        """The divergence lower bound from the loss value."""


class BCEDiscriminatorLoss(DiscriminatorLoss):
    """E_p[sp(−v)] + E_q[sp(v)]: the minimax / NCE classifier, one fused launch.

    ``real_label`` < 1 is one-sided label smoothing (the JSD estimate assumes 1).
    """

    name = "bce"
    divergence = "JSD(p_data, p_g)"
    summary = "binary cross-entropy classifier (minimax/NCE); estimates JSD"

    def __init__(self, *, real_label: float = 1.0, backend: Optional[str] = None) -> None:
        super().__init__(backend=backend)
        self.real_label = float(real_label)

    def _params(self) -> dict:
        return {"real_label": self.real_label} if self.real_label != 1.0 else {}

    def _loss(self, real, fake):
        return gan_bce_losses(real, fake, real_target=self.real_label, backend=self.backend).d_loss

    def _estimate(self, loss):
        return _LOG2 - 0.5 * loss


class HingeDiscriminatorLoss(_CriticLoss, DiscriminatorLoss):
    """E_p[relu(1 − v)] + E_q[relu(1 + v)] (geometric GAN / SAGAN); estimates TV."""

    name = "hinge"
    divergence = "TV(p_data, p_g)"
    summary = "hinge loss; estimates total variation"

    def _loss(self, real, fake):
        return _hinge_discriminator(real, fake)

    @staticmethod
    def _estimate(loss):
        return 1.0 - 0.5 * loss


class LSGANDiscriminatorLoss(_CriticLoss, DiscriminatorLoss):
    """½E_p[(v − 1)²] + ½E_q[v²] (Mao et al., labels 0/1); estimates the triangular discrimination."""

    name = "lsgan"
    divergence = "triangular discrimination ∫(p_data − p_g)²/(p_data + p_g)"
    summary = "least squares (labels 0/1); estimates the triangular discrimination"

    def _loss(self, real, fake):
        return _lsgan_discriminator(real, fake)

    @staticmethod
    def _estimate(loss):
        return 2.0 - 8.0 * loss


class WGANDiscriminatorLoss(_CriticLoss, DiscriminatorLoss):
    """E_q[v] − E_p[v], the Wasserstein critic; needs a Lipschitz constraint (GP, spectral norm)."""

    name = "wgan"
    divergence = "W1(p_data, p_g) (if the critic is 1-Lipschitz)"
    summary = "Wasserstein critic (add a Lipschitz constraint); estimates W1"

    def _loss(self, real, fake):
        return (_float(fake).mean() - _float(real).mean()).to(real.dtype)

    def _estimate(self, loss):
        return -loss


# --------------------------------------------------------------------------------------
# f-GAN family
# --------------------------------------------------------------------------------------


class FDivergence(NamedTuple):
    """One f-divergence D_f(p ‖ q) = E_q[f(p/q)] in f-GAN form, composed stably.

    ``activation(v)`` = T = g_f(v); ``conjugate(v)`` = f*(g_f(v)); ``log_ratio(v)`` = the r
    the optimal T implies; ``optimal_logit(r)`` its inverse (v* for a given true r);
    ``bce_offset``: for divergences that are BCE up to constants, c with E_p[T] = c − E_p[sp(−v)]
    and E_q[f*(T)] = E_q[sp(v)] − c (None otherwise).
    """

    name: str
    title: str
    activation: Callable[[Tensor], Tensor]
    conjugate: Callable[[Tensor], Tensor]
    log_ratio: Callable[[Tensor], Tensor]
    optimal_logit: Callable[[Tensor], Tensor]
    bce_offset: Optional[float] = None


def _pearson_log_ratio(v: Tensor) -> Tensor:
    # T* = 2(u − 1), so u = 1 + v/2; v ≤ −2 means the discriminator claims u ≤ 0: r = −inf.
    return torch.log(torch.clamp_min(1 + 0.5 * v, 0))


F_DIVERGENCES: dict[str, FDivergence] = {
    d.name: d
    for d in (
        FDivergence("kl", "KL(p_data ‖ p_g)", lambda v: v, lambda v: torch.exp(v - 1), lambda v: v - 1, lambda r: r + 1),
        FDivergence(
            "reverse-kl", "KL(p_g ‖ p_data)", lambda v: -torch.exp(-v), lambda v: v - 1, lambda v: v, lambda r: r
        ),
        FDivergence(
            "pearson",
            "Pearson χ²(p_data ‖ p_g)",
            lambda v: v,
            lambda v: 0.25 * v.square() + v,
            _pearson_log_ratio,
            lambda r: 2 * torch.expm1(r),
        ),
        FDivergence(
            "hellinger",
            "squared Hellinger ∫(√p_data − √p_g)²",
            lambda v: -torch.expm1(-v),
            torch.expm1,
            lambda v: 2 * v,
            lambda r: 0.5 * r,
        ),
        FDivergence(
            "js",
            "2·JSD(p_data, p_g)",
            lambda v: _LOG2 - F.softplus(-v),
            lambda v: F.softplus(v) - _LOG2,
            lambda v: v,
            lambda r: r,
            bce_offset=_LOG2,
        ),
        FDivergence(
            "gan",
            "2·JSD(p_data, p_g) − log 4",
            lambda v: -F.softplus(-v),
            F.softplus,
            lambda v: v,
            lambda r: r,
            bce_offset=0.0,
        ),
    )
}


def _f_divergence(divergence) -> FDivergence:
    if divergence not in F_DIVERGENCES:
        raise ValueError(f"divergence must be one of {sorted(F_DIVERGENCES)}, got {divergence!r}")
    return F_DIVERGENCES[divergence]


class _FGANMixin:
    spec: FDivergence

    def log_ratio(self, v: Tensor) -> Tensor:
        return self.spec.log_ratio(v)

    def _variational_bound(self, real: Tensor, fake: Tensor) -> Tensor:
        """E_p[T] − E_q[f*(T)], the lower bound on D_f(p ‖ q) the discriminator maximises."""
        spec = self.spec
        if spec.bce_offset is not None:
            d_loss = gan_bce_losses(real, fake, backend=self.backend).d_loss
            return 2 * spec.bce_offset - d_loss
        bound = spec.activation(_float(real)).mean() - spec.conjugate(_float(fake)).mean()
        return bound.to(real.dtype)


class FGANDiscriminatorLoss(_FGANMixin, DiscriminatorLoss):
    """−(E_p[T(v)] − E_q[f*(T(v))]) for one f-divergence; estimates D_f(p ‖ q) = −loss."""

    def __init__(self, *, divergence: str, backend: Optional[str] = None) -> None:
        super().__init__(backend=backend)
        self.spec = _f_divergence(divergence)
        self.name = f"fgan-{self.spec.name}"
        self.divergence = self.spec.title

    def _loss(self, real, fake):
        return -self._variational_bound(real, fake)

    def _estimate(self, loss):
        return -loss


# --------------------------------------------------------------------------------------
# Generator losses
# --------------------------------------------------------------------------------------


class GeneratorLoss(_Loss):
    """``loss(fake_logits, real_logits=None, *, telemetry=True) -> LossOutput``.

    ``fake_logits``: D(G(z)), any shape, every element a sample, attached to the generator.
    ``real_logits`` (optional, detached): only for telemetry (D(real), and the divergence
    estimate of the losses that need real samples for one).
    ``discriminator``: the registry name of the discriminator loss this one is paired with.
    """

    role = "generator"
    discriminator = "bce"

    def __call__(
        self, fake_logits: Tensor, real_logits: Optional[Tensor] = None, *, telemetry: bool = True
    ) -> LossOutput:
        fake = _samples(fake_logits, "fake_logits")
        real = None if real_logits is None else _samples(real_logits, "real_logits")
        if real is not None and real.device != fake.device:
            raise RuntimeError(f"fake_logits is on {fake.device} but real_logits is on {real.device}")
        loss = self._loss(fake)
        if not telemetry:
            return LossOutput(loss, None)
        with torch.no_grad():
            d_real, d_fake, saturated = self._statistics(real, fake)
            divergence = self._estimate(loss.detach().float(), fake.detach().float(), real)
        return LossOutput(loss, Telemetry(divergence, d_real, d_fake, saturated))

    @abc.abstractmethod
    def _loss(self, fake: Tensor) -> Tensor:
        """The loss of the flattened fake logits."""

    @abc.abstractmethod
    def _estimate(self, loss: Tensor, fake32: Tensor, real: Optional[Tensor]) -> Optional[Tensor]:
        """The divergence estimate (None when it needs real logits that were not passed)."""


class MinimaxGeneratorLoss(GeneratorLoss):
    """E_q[log(1 − D)] = −E_q[sp(v)], the original minimax objective (saturates early on)."""

    name = "minimax"
    divergence = "JSD(p_data, p_g)"
    summary = "log(1 − D), the saturating minimax objective; targets JSD"

    def _loss(self, fake):
        return -bce_with_logits(fake, 0.0, backend=self.backend)

    def _estimate(self, loss, fake32, real):
        return _jsd_from_ratio(fake32)


class NonSaturatingGeneratorLoss(GeneratorLoss):
    """−E_q[log D] = E_q[sp(−v)], the non-saturating heuristic (Goodfellow et al., 2014)."""

    name = "nonsaturating"
    divergence = "KL(p_g ‖ p_data) − 2·JSD(p_data, p_g)"
    summary = "−log D, the non-saturating heuristic; descends KL(q‖p) − 2·JSD"

    def _loss(self, fake):
        return bce_with_logits(fake, 1.0, backend=self.backend)

    def _estimate(self, loss, fake32, real):
        return -fake32.mean() - 2 * _jsd_from_ratio(fake32)


class ReverseKLGeneratorLoss(GeneratorLoss):
    """KL(p_g ‖ p_data) = −E_q[r] (mode-seeking); the Rényi op at α = 1."""

    name = "reverse_kl"
    divergence = "KL(p_g ‖ p_data)"
    summary = "−r, reverse KL (mode-seeking)"

    def _loss(self, fake):
        return renyi_divergence(fake, 1.0, backend=self.backend)

    def _estimate(self, loss, fake32, real):
        return loss


class ForwardKLGeneratorLoss(GeneratorLoss):
    """KL(p_data ‖ p_g) = E_q[e^r·r], self-normalised (see the module docstring); mass-covering."""

    name = "forward_kl"
    couples_batch = True
    divergence = "KL(p_data ‖ p_g)"
    summary = "e^r·r reweighted, self-normalised forward KL (mass-covering)"

    def _loss(self, fake):
        # Value KL(w ‖ uniform) = Σ w·r − (logsumexp r − log N); gradient −softmax(r), the
        # Rényi op's at α = 0, whose value is −(logsumexp r − log N).
        surrogate = renyi_divergence(fake, 0.0, backend=self.backend)
        with torch.no_grad():
            r = _float(fake.detach())
            weighted_mean = _self_normalised_mean(r, r)
        return surrogate + weighted_mean.to(surrogate.dtype)

    def _estimate(self, loss, fake32, real):
        return loss


class RenyiGeneratorLoss(GeneratorLoss):
    """D_α(p_g ‖ p_data) = 1/(α−1)·(logsumexp((1−α)·r) − log N), the fused Rényi op."""

    name = "renyi"
    couples_batch = True
    divergence = "D_α(p_g ‖ p_data)"
    summary = "Rényi-α divergence (needs alpha ≥ 0; 1 = reverse KL)"

    def __init__(self, *, alpha: float, backend: Optional[str] = None) -> None:
        super().__init__(backend=backend)
        self.alpha = check_alpha(alpha)

    def _params(self) -> dict:
        return {"alpha": self.alpha}

    def _loss(self, fake):
        return renyi_divergence(fake, self.alpha, backend=self.backend)

    def _estimate(self, loss, fake32, real):
        return loss


class HingeGeneratorLoss(_CriticLoss, GeneratorLoss):
    """−E_q[v], paired with the hinge discriminator."""

    name = "hinge"
    discriminator = "hinge"
    divergence = HingeDiscriminatorLoss.divergence
    summary = "−v, paired with the hinge discriminator"

    def _loss(self, fake):
        return -_float(fake).mean().to(fake.dtype)

    def _estimate(self, loss, fake32, real):
        if real is None:
            return None
        return HingeDiscriminatorLoss._estimate(_hinge_discriminator(real.detach().float(), fake32))


class WGANGeneratorLoss(_CriticLoss, GeneratorLoss):
    """−E_q[v], paired with the Wasserstein critic."""

    name = "wgan"
    discriminator = "wgan"
    divergence = WGANDiscriminatorLoss.divergence
    summary = "−v, paired with the Wasserstein critic"

    def _loss(self, fake):
        return -_float(fake).mean().to(fake.dtype)

    def _estimate(self, loss, fake32, real):
        if real is None:
            return None
        return real.detach().float().mean() - fake32.mean()


class LSGANGeneratorLoss(_CriticLoss, GeneratorLoss):
    """½E_q[(v − 1)²], paired with the least-squares discriminator."""

    name = "lsgan"
    discriminator = "lsgan"
    divergence = LSGANDiscriminatorLoss.divergence
    summary = "½(v − 1)², paired with the least-squares discriminator"

    def _loss(self, fake):
        return (0.5 * (_float(fake) - 1).square().mean()).to(fake.dtype)

    def _estimate(self, loss, fake32, real):
        if real is None:
            return None
        return LSGANDiscriminatorLoss._estimate(_lsgan_discriminator(real.detach().float(), fake32))


class FGANGeneratorLoss(_FGANMixin, GeneratorLoss):
    """−E_q[T(v)] (default, Nowozin et al.'s choice) or, with ``saturating=True``, the saddle
    objective −E_q[f*(T(v))], whose gradient is exactly that of D_f at the optimal T."""

    def __init__(self, *, divergence: str, saturating: bool = False, backend: Optional[str] = None) -> None:
        super().__init__(backend=backend)
        self.spec = _f_divergence(divergence)
        if not isinstance(saturating, bool):
            raise TypeError(f"saturating must be a bool, got {type(saturating).__name__}")
        self.saturating = saturating
        self.name = self.discriminator = f"fgan-{self.spec.name}"
        self.divergence = self.spec.title

    def _params(self) -> dict:
        return {"saturating": True} if self.saturating else {}

    def _loss(self, fake):
        spec = self.spec
        if spec.bce_offset is not None:
            if self.saturating:  # −E_q[sp(v) − c]
                return spec.bce_offset - bce_with_logits(fake, 0.0, backend=self.backend)
            return bce_with_logits(fake, 1.0, backend=self.backend) - spec.bce_offset  # −E_q[c − sp(−v)]
        v = _float(fake)
        term = spec.conjugate(v) if self.saturating else spec.activation(v)
        return -term.mean().to(fake.dtype)

    def _estimate(self, loss, fake32, real):
        if real is None:
            return None
        return self._variational_bound(real.detach().float(), fake32)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


class _Entry(NamedTuple):
    factory: Callable[..., _Loss]
    summary: str
    fixed: dict  # parameters the name itself sets (fgan-<div>: divergence)


def _registry() -> dict[str, dict[str, _Entry]]:
    discriminators = {
        cls.name: _Entry(cls, cls.summary, {})
        for cls in (BCEDiscriminatorLoss, HingeDiscriminatorLoss, LSGANDiscriminatorLoss, WGANDiscriminatorLoss)
    }
    generators = {
        cls.name: _Entry(cls, cls.summary, {})
        for cls in (
            MinimaxGeneratorLoss,
            NonSaturatingGeneratorLoss,
            ReverseKLGeneratorLoss,
            ForwardKLGeneratorLoss,
            RenyiGeneratorLoss,
            HingeGeneratorLoss,
            WGANGeneratorLoss,
            LSGANGeneratorLoss,
        )
    }
    for spec in F_DIVERGENCES.values():
        name = f"fgan-{spec.name}"
        discriminators[name] = _Entry(FGANDiscriminatorLoss, f"f-GAN, {spec.title}", {"divergence": spec.name})
        generators[name] = _Entry(
            FGANGeneratorLoss, f"f-GAN, {spec.title} (saturating=True: saddle form)", {"divergence": spec.name}
        )
    return {"discriminator": discriminators, "generator": generators}


_REGISTRY = _registry()


def _check_role(role) -> None:
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be 'discriminator', 'generator' or None, got {role!r}")


def available(role: Optional[str] = None) -> dict:
    """The registered losses: ``{name: one-line summary}`` for one ``role``
    (``"discriminator"`` or ``"generator"``), or ``{role: {name: summary}}`` for both."""
    _check_role(role)
    if role is None:
        return {r: available(r) for r in ROLES}
    return {name: entry.summary for name, entry in _REGISTRY[role].items()}


def get(name: str, role: Optional[str] = None, **params) -> _Loss:
    """A loss by registry name, e.g. ``get("renyi", alpha=0.5)``, ``get("bce")``,
    ``get("hinge", role="generator")``, ``get("fgan-pearson", role="discriminator")``.

    ``role`` may be omitted when the name belongs to one role only; names shared by both
    (``hinge``, ``wgan``, ``lsgan``, ``fgan-*``) need it. ``params`` go to the loss
    (``alpha``, ``real_label``, ``saturating``, ``backend``).
    """
    _check_role(role)
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    roles = [r for r in ROLES if (role is None or r == role) and name in _REGISTRY[r]]
    if not roles:
        where = _REGISTRY[role] if role else {**_REGISTRY["discriminator"], **_REGISTRY["generator"]}
        raise ValueError(f"unknown {role + ' ' if role else ''}loss {name!r}; available: {', '.join(sorted(where))}")
    if len(roles) > 1:
        raise ValueError(
            f"{name!r} names both a discriminator and a generator loss; pass role='discriminator' or role='generator'"
        )
    entry = _REGISTRY[roles[0]][name]
    accepted = [p for p in inspect.signature(entry.factory).parameters if p not in entry.fixed]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TypeError(f"{roles[0]} loss {name!r} does not take {', '.join(unknown)}; it takes: {', '.join(accepted)}")
    missing = [
        p.name
        for p in inspect.signature(entry.factory).parameters.values()
        if p.default is inspect.Parameter.empty and p.name not in entry.fixed and p.name not in params
    ]
    if missing:
        raise TypeError(f"{roles[0]} loss {name!r} needs {', '.join(missing)}")
    return entry.factory(**entry.fixed, **params)
