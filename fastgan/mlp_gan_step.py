"""The MLP GAN's training step with its backward derived by hand: the toy presets' CPU step.

Why: the toy presets train a 3×128 ReLU generator against a 3×128 LeakyReLU discriminator at
batch 256 for thousands of steps on a CPU, and a step under autograd is about 400 small
operations, the R1 penalty's double backward among them. Its matrix products run near the
CPU's peak; what autograd adds (graph nodes, saved tensors, the double-backward formulas, the
losses' telemetry, ``torch.optim``'s per-call bookkeeping) was a third of the step. This
module computes the same gradients with plain tensor operations under ``torch.no_grad``. The
trainer uses it where its models and losses are the ones derived here
(:func:`unsupported_reason`), and autograd elsewhere.

Notation. D: u = x·s_D (s_D = ``inv_scale``); a_0 = u W_0ᵀ + b_0; h_j = lrelu(a_j) (slope
0.2); a_j = h_{j−1} W_jᵀ + b_j; logit v = h_{n−2} W_{n−1}ᵀ + b_{n−1}; m_j = lrelu'(a_j) ∈ {1, 0.2}
(rows: samples). G: the mixture latent ℓ = μ_k + e^{λ_k} ⊙ z' (k picked by z_0), then
ReLU layers, the output times ``scale``.

Losses (BCE discriminator, non-saturating generator; sp = softplus, σ = sigmoid):
    L_D = mean_real sp(−v) + mean_fake sp(v) + c·mean_real ‖∇_x v‖²,   c = γ·r1_every/2
    L_G = mean_fake sp(−v)
so ∂L_D/∂v = −σ(−v)/N on real rows and σ(v)/N on fake rows; ∂L_G/∂v = −σ(−v)/N.
Ordinary backward (D's weights from L_D; G's weights through D's input gradient) is the chain
rule layer by layer: g_j ← g_{j+1}·W_{j+1} ⊙ m_j, ∂W_j = g_jᵀ·input_j, ∂b_j = Σ_rows g_j.

The R1 term. D is piecewise linear, so on real row x its input gradient is a product of
masked weights: δ_{n−2} = m_{n−2} ⊙ W_{n−1}, δ_{j−1} = m_{j−1} ⊙ (δ_j W_j), ∇_x v = s_D·δ_0 W_0.
The masks are piecewise constant (zero derivative almost everywhere, as autograd takes them),
so the penalty's gradient flows through the weights alone. With ε = 2c·∇_x v/N:
    q_0 = s_D·ε,              ∂W_0 += δ_0ᵀ q_0,            r_0 = q_0 W_0ᵀ
    q_j = m_{j−1} ⊙ r_{j−1},  ∂W_j += δ_jᵀ q_j,            r_j = q_j W_jᵀ      (j = 1 … n−2)
    ∂W_{n−1} += Σ_rows m_{n−2} ⊙ r_{n−2}
and no bias gradient. tests/test_mlp_gan_step.py checks every gradient against autograd in
float64.

The optimisers, the EMA, the random streams (real batch, then noise, per D update; noise for
the G update) and the log accumulators are the trainer's own, so a step is the autograd step up
to float32 rounding (the products are grouped differently: D sees real and fake rows in one
product; over thousands of steps the two runs part, as any two roundings of a GAN do).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Adam

_LOG2 = math.log(2.0)
LEAKY_SLOPE = 0.2  # MLPDiscriminator's LeakyReLU


def _linears(sequential: nn.Sequential, activation: type, slope: Optional[float] = None) -> Optional[list]:
    """The Linear layers of ``Linear, act, Linear, act, …, Linear`` (one hidden layer at least),
    or None for any other shape."""
    modules = list(sequential)
    if len(modules) % 2 != 1 or len(modules) < 3:
        return None
    for index, module in enumerate(modules):
        if index % 2 == 0:
            if type(module) is not nn.Linear or module.bias is None:
                return None
        elif type(module) is not activation or (slope is not None and module.negative_slope != slope):
            return None
    return modules[0::2]


_MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_MODULE_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                        "_global_backward_pre_hooks")


def _has_hooks(model: nn.Module) -> bool:
    """Whether any hook would run in an autograd step of ``model``: module hooks (global or on
    any submodule, e.g. the old hook-based spectral norm) or gradient hooks on a parameter."""
    from torch.nn.modules import module as module_internals

    if any(getattr(module_internals, name, None) for name in _GLOBAL_MODULE_HOOKS):
        return True
    if any(getattr(m, name, None) for m in model.modules() for name in _MODULE_HOOKS):
        return True
    return any(getattr(p, "_backward_hooks", None) or getattr(p, "_post_accumulate_grad_hooks", None)
               for p in model.parameters())


class DerivedBackwardUnavailable(ValueError):
    """``backward="derived"`` was asked for a run the derived step does not cover; ``reason``
    says why (:func:`unsupported_reason`, or the trainer's own settings)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"backward='derived' cannot train this: {reason}")
        self.reason = reason


def unsupported_reason(generator: nn.Module, discriminator: nn.Module, d_loss, g_loss) -> Optional[str]:
    """Why the hand-derived step cannot train these models with these losses, or None if it can.

    It covers :class:`~fastgan.models.MLPGenerator` (with or without a mixture latent) against
    :class:`~fastgan.models.MLPDiscriminator` without Fourier features, as constructed (their
    own layers and parameters, all trainable, no hooks), float32 or float64, the ``bce``
    discriminator loss (real label 1) and the ``nonsaturating`` generator loss."""
    from fastgan import losses
    from fastgan.models import MixtureLatent, MLPDiscriminator, MLPGenerator

    if type(generator) is not MLPGenerator or type(discriminator) is not MLPDiscriminator:
        return "the models are not fastgan's MLPGenerator and MLPDiscriminator"
    if discriminator.fourier_octaves:
        return "the discriminator has Fourier input features"
    if generator.prior is not None and type(generator.prior) is not MixtureLatent:
        return "the generator's latent prior is not a MixtureLatent"
    g_linears, d_linears = _linears(generator.net, nn.ReLU), _linears(discriminator.net, nn.LeakyReLU, LEAKY_SLOPE)
    if g_linears is None or d_linears is None:
        return "the MLPs' layers were changed after construction"
    prior = [generator.prior.means, generator.prior.log_scales] if generator.prior is not None else []
    expected = (prior + [p for linear in g_linears for p in (linear.weight, linear.bias)],
                [p for linear in d_linears for p in (linear.weight, linear.bias)])
    for model, parameters in zip((generator, discriminator), expected):
        if [id(p) for p in model.parameters()] != [id(p) for p in parameters]:
            return "the models hold parameters besides their layers' (the step would not update them)"
    parameters = expected[0] + expected[1]
    if not all(p.requires_grad for p in parameters):
        return "a parameter is frozen (requires_grad=False)"
    if _has_hooks(generator) or _has_hooks(discriminator):
        return "the models have hooks (module, parameter or global), which the step would not call"
    dtypes = {p.dtype for p in (*generator.parameters(), *discriminator.parameters())}
    dtypes |= {b.dtype for b in (*generator.buffers(), *discriminator.buffers())}
    if len(dtypes) != 1 or dtypes.pop() not in (torch.float32, torch.float64):
        return "the models' parameters are not all float32 or all float64"
    if type(d_loss) is not losses.BCEDiscriminatorLoss or d_loss.real_label != 1.0:
        return f"the discriminator loss is {d_loss.name!r} (derived: 'bce' with real label 1)"
    if type(g_loss) is not losses.NonSaturatingGeneratorLoss:
        return f"the generator loss is {g_loss.name!r} (derived: 'nonsaturating')"
    return None


class MLPGANStep:
    """The gradients of one D update and one G update, computed by hand (module docstring).

    ``generator``, ``discriminator``: an :class:`~fastgan.models.MLPGenerator` and an
    :class:`~fastgan.models.MLPDiscriminator` that :func:`unsupported_reason` accepts.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module) -> None:
        self.generator, self.discriminator = generator, discriminator
        self.g_linears = _linears(generator.net, nn.ReLU)
        self.d_linears = _linears(discriminator.net, nn.LeakyReLU, LEAKY_SLOPE)
        self.g_parameters, self.d_parameters = list(generator.parameters()), list(discriminator.parameters())

    # ----------------------------------------------------------------------------------
    # D
    # ----------------------------------------------------------------------------------

    def _d_forward(self, x: Tensor):
        """x (N, data_dim) → logits (N, 1), the layers' inputs and their pre-activations a_j."""
        inputs, pre = [], []
        h = x * self.discriminator.inv_scale
        last = len(self.d_linears) - 1
        for index, linear in enumerate(self.d_linears):
            inputs.append(h)
            h = torch.addmm(linear.bias, h, linear.weight.t())
            if index < last:
                pre.append(h)
                h = F.leaky_relu(h, LEAKY_SLOPE)
        return h, inputs, pre

    def _d_backward(self, grad_logits: Tensor, inputs: list, pre: list, *, weights: bool) -> tuple[list, Tensor]:
        """Backward from ∂L/∂logits (N, 1): [∂W_0, ∂b_0, …] (if ``weights``) and ∂L/∂x."""
        grads: list = [None] * (2 * len(self.d_linears))
        g = grad_logits
        for index in reversed(range(len(self.d_linears))):
            linear = self.d_linears[index]
            if weights:
                grads[2 * index] = g.t().mm(inputs[index])
                grads[2 * index + 1] = g.sum(0)
            if index == 0 and weights:
                return grads, None
            g = g.mm(linear.weight)
            if index > 0:
                g = torch.ops.aten.leaky_relu_backward(g, pre[index - 1], LEAKY_SLOPE, False)
        return grads, g * self.discriminator.inv_scale

    def _add_r1_gradients(self, grads: list, pre: list, rows: int, weight: float) -> None:
        """Add ∂(weight · mean ‖∇_x logit‖²)/∂W over the first ``rows`` rows to ``grads``."""
        linears, scale = self.d_linears, self.discriminator.inv_scale
        masks_at = [a[:rows] for a in pre]  # the real rows' pre-activations
        last = len(linears) - 1
        # δ_j = ∂logit/∂a_j, from the output back.
        deltas = [None] * last
        deltas[last - 1] = torch.ops.aten.leaky_relu_backward(
            linears[last].weight.expand(rows, -1), masks_at[last - 1], LEAKY_SLOPE, False)
        for j in range(last - 1, 0, -1):
            deltas[j - 1] = torch.ops.aten.leaky_relu_backward(
                deltas[j].mm(linears[j].weight), masks_at[j - 1], LEAKY_SLOPE, False)
        input_grad = deltas[0].mm(linears[0].weight) * scale
        q = input_grad * (2.0 * weight / rows) * scale
        grads[0] = torch.addmm(grads[0], deltas[0].t(), q)
        r = q.mm(linears[0].weight.t())
        for j in range(1, last):
            q = torch.ops.aten.leaky_relu_backward(r, masks_at[j - 1], LEAKY_SLOPE, False)
            grads[2 * j] = torch.addmm(grads[2 * j], deltas[j].t(), q)
            r = q.mm(linears[j].weight.t())
        q = torch.ops.aten.leaky_relu_backward(r, masks_at[last - 1], LEAKY_SLOPE, False)
        grads[2 * last] = grads[2 * last] + q.sum(0, keepdim=True)

    @torch.no_grad()
    def discriminator_gradients(self, real: Tensor, fake: Tensor, r1_weight: float = 0.0):
        """The gradients of L_D = BCE(real, fake) + r1_weight · mean_real ‖∇_x D‖².

        Args:
            real, fake: (N, data_dim) samples (the same N).
        Returns:
            ``(grads, stats)``: the gradients in ``discriminator.parameters()`` order, and a
            (4,) tensor: the BCE part of the loss, the JSD estimate log 2 − loss/2, and the mean
            D = σ(v) on real and on fake rows.
        """
        rows = real.shape[0]
        logits, inputs, pre = self._d_forward(torch.cat([real, fake]))
        real_logits, fake_logits = logits[:rows], logits[rows:]
        loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
        grad_logits = torch.cat([torch.sigmoid(-real_logits).neg_(), torch.sigmoid(fake_logits)]).div_(rows)
        grads, _ = self._d_backward(grad_logits, inputs, pre, weights=True)
        if r1_weight:
            self._add_r1_gradients(grads, pre, rows, r1_weight)
        stats = torch.stack([loss, _LOG2 - 0.5 * loss, torch.sigmoid(real_logits).mean(),
                             torch.sigmoid(fake_logits).mean()])
        return grads, stats

    # ----------------------------------------------------------------------------------
    # G
    # ----------------------------------------------------------------------------------

    def _g_forward(self, noise: Tensor, keep: bool):
        """G(noise) (N, data_dim), and if ``keep`` what the backward needs: the component
        picked, its scales e^λ, the unit noise, the layers' inputs and pre-activations.

        The mixture latent gathers its component's rows where the module multiplies by a
        one-hot matrix: the same values (one term of each sum is non-zero)."""
        prior = self.generator.prior
        component = scales = unit = None
        if prior is not None:
            component = prior.component(noise)
            scales = prior.log_scales.exp()[component]
            unit = noise[:, 1:]
            h = prior.means[component] + scales * unit
        else:
            h = noise
        inputs, pre = [], []
        last = len(self.g_linears) - 1
        for index, linear in enumerate(self.g_linears):
            if keep:
                inputs.append(h)
            h = torch.addmm(linear.bias, h, linear.weight.t())
            if index < last:
                if keep:
                    pre.append(h)
                h = torch.relu(h)
        return h * self.generator.scale, (component, scales, unit, inputs, pre)

    @torch.no_grad()
    def generate(self, noise: Tensor) -> Tensor:
        """G(noise) (N, data_dim): the D update's fake batch."""
        return self._g_forward(noise, keep=False)[0]

    @torch.no_grad()
    def generator_gradients(self, noise: Tensor, saturation_threshold: float):
        """The gradients of L_G = mean sp(−D(G(noise))).

        Args:
            noise: (N, generator.latent_dim).
        Returns:
            ``(grads, stats)``: the gradients in ``generator.parameters()`` order, and a (2,)
            tensor: the loss and the fraction of logits with |v| > ``saturation_threshold``.
        """
        generator, prior = self.generator, self.generator.prior
        fake, (component, scales, unit, inputs, pre) = self._g_forward(noise, keep=True)
        logits, d_inputs, d_pre = self._d_forward(fake)
        rows = noise.shape[0]
        loss = F.softplus(-logits).mean()
        _, g = self._d_backward(torch.sigmoid(-logits).neg_().div_(rows), d_inputs, d_pre, weights=False)
        g = g * generator.scale
        grads: list = []
        for index in reversed(range(len(self.g_linears))):
            linear = self.g_linears[index]
            grads += [g.sum(0), g.t().mm(inputs[index])]
            if index == 0 and prior is None:
                break
            g = g.mm(linear.weight)
            if index > 0:
                g = torch.ops.aten.threshold_backward(g, pre[index - 1], 0)
        grads.reverse()
        if prior is not None:
            grad_means = torch.zeros_like(prior.means).index_add_(0, component, g)
            grad_log_scales = torch.zeros_like(prior.log_scales).index_add_(0, component, g * unit * scales)
            grads = [grad_means, grad_log_scales, *grads]
        saturated = (logits.abs() > saturation_threshold).sum().to(loss.dtype) / rows
        return grads, torch.stack([loss, saturated])


def adam_step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()`` for the trainer's fused CPU Adam, without torch.optim's per-call
    bookkeeping (hooks, grouping, checks: about 100 µs a call, 7 % of a toy step): the same
    ``torch._fused_adam_`` call on the same state, so the same values bit for bit. Anything
    else (another optimizer or setting, a parameter without a gradient, the first step, which
    creates the state) goes through ``optimizer.step()``."""
    from torch.optim import optimizer as optimizer_internals

    groups = optimizer.param_groups
    group = groups[0]
    if (type(optimizer) is not Adam or "step" in vars(optimizer)  # e.g. an LR scheduler's counting wrapper
            or len(groups) != 1 or not group.get("fused") or group["amsgrad"] or group["maximize"]
            or group["weight_decay"] or group.get("decoupled_weight_decay") or group.get("differentiable")
            or any(isinstance(v, Tensor) for v in (group["lr"], *group["betas"]))
            or optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
            or getattr(optimizer_internals, "_global_optimizer_pre_hooks", None)
            or getattr(optimizer_internals, "_global_optimizer_post_hooks", None)
            or getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None):
        optimizer.step()
        return
    params = group["params"]
    states = [optimizer.state.get(p) for p in params]
    if not all(states) or any(p.grad is None for p in params):
        optimizer.step()
        return
    steps = [state["step"] for state in states]
    torch._foreach_add_(steps, 1)
    beta1, beta2 = group["betas"]
    torch._fused_adam_(params, [p.grad for p in params], [state["exp_avg"] for state in states],
                       [state["exp_avg_sq"] for state in states], [], steps, amsgrad=False, lr=group["lr"],
                       beta1=beta1, beta2=beta2, weight_decay=0.0, eps=group["eps"], maximize=False,
                       grad_scale=None, found_inf=None)
