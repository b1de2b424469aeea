"""Reference generator and discriminator architectures.

* :class:`MLPGenerator` / :class:`MLPDiscriminator`: small multilayer perceptrons for the
  2-D toy mixtures (``fastgan.data``); the generator optionally draws its latent from a
  learnable Gaussian mixture (:class:`MixtureLatent`), the discriminator optionally reads
  Fourier features of its input, brought in coarse to fine (grid100's narrow modes).
* :class:`DCGANGenerator` / :class:`DCGANDiscriminator`: the DCGAN architecture (Radford et
  al., 2016) for 32×32 and 64×64 images, built on the fused BatchNorm → ReLU (generator) and
  BatchNorm → LeakyReLU(0.2) (discriminator) blocks of :mod:`fastgan.nn`.
* :class:`LayeredGenerator` / :class:`ConvDiscriminator`: a small layered generator (one
  flat-coloured object on a flat background, placed by a learned affine map, as in LR-GAN)
  with a mixture latent and a coordinate-MLP mask (:class:`CoordinateMask`), and a
  normalisation-free convolutional discriminator (for R1); the ``shapes`` preset, which
  learns on a CPU in minutes (README, issue 16).

Every discriminator returns one logit per sample, shape (N,): the estimate of
log p_data(x)/p_g(x) the losses in :mod:`fastgan.losses` read.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from fastgan.nn import BatchNormLeakyReLU2d

__all__ = ["LAYERED_MASKS", "ConvDiscriminator", "CoordinateMask", "DCGANDiscriminator", "DCGANGenerator",
           "LayeredGenerator", "MLPDiscriminator", "MLPGenerator", "MixtureLatent"]


def _check_positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _mlp(inputs: int, hidden: int, layers: int, outputs: int, activation) -> nn.Sequential:
    modules: list[nn.Module] = []
    width = inputs
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), activation()]
        width = hidden
    modules.append(nn.Linear(width, outputs))
    return nn.Sequential(*modules)


class MixtureLatent(nn.Module):
    """A learnable Gaussian-mixture latent prior (DeLiGAN, Gurumurthy et al., CVPR 2017),
    driven by standard normal noise: z (N, 1 + latent_dim) → (N, latent_dim).

    ``z[:, 0]`` picks one of ``components`` equally likely components through the normal CDF
    (k = ⌊Φ(z₀)·K⌋, so the trainer's plain N(0, I) draws are all it needs), and the rest is
    reparametrised as μ_k + σ_k ⊙ z[:, 1:], with learnable means (initialised uniform in
    [−1, 1]) and log-scales (initialised at ``init_scale``). Why: a continuous generator of a
    connected Gaussian latent must put mass between disconnected modes; with a discrete
    component per mode it need not. The choice is a one-hot product, so it is deterministic
    and never synchronises with the host.
    """

    def __init__(self, latent_dim: int, components: int, init_scale: float = 0.2):
        super().__init__()
        self.components = _check_positive(components, "components")
        self.output_dim = _check_positive(latent_dim, "latent_dim")
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale!r}")
        self.means = nn.Parameter(torch.rand(components, latent_dim) * 2 - 1)
        self.log_scales = nn.Parameter(torch.full((components, latent_dim), math.log(init_scale)))

    def component(self, z: Tensor) -> Tensor:
        """The component index (N,) int64 that ``z`` (N, 1 + latent_dim) selects."""
        uniform = torch.special.ndtr(z[:, 0].float())
        return torch.clamp((uniform * self.components).long(), 0, self.components - 1)

    def noise_for(self, components: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Noise z (N, 1 + latent_dim) that selects ``components`` (N,) int64: standard normal
        but for z₀, set to the middle of each component's slice of the normal CDF."""
        z = torch.randn(components.shape[0], 1 + self.output_dim, generator=generator, device=self.means.device)
        z[:, 0] = torch.special.ndtri((components.to(z.device, torch.float64) + 0.5) / self.components).float()
        return z

    def forward(self, z: Tensor) -> Tensor:
        one_hot = nn.functional.one_hot(self.component(z), self.components).to(self.means.dtype)
        return one_hot @ self.means + (one_hot @ self.log_scales).exp() * z[:, 1:]


class MLPGenerator(nn.Module):
    """z (N, latent_dim) → x (N, data_dim): ``layers`` hidden ReLU layers of ``hidden`` units.

    ``scale`` multiplies the output, so the network works at unit scale whatever the data's
    extent (the toy grids span ±4 or ±9). ``components`` > 0 puts a learnable
    :class:`MixtureLatent` of that many components in front of the MLP: then the noise the
    generator takes, ``self.latent_dim``, is ``latent_dim + 1`` wide (one coordinate picks the
    component).
    """

    def __init__(self, latent_dim: int = 8, data_dim: int = 2, hidden: int = 128, layers: int = 3, scale: float = 1.0,
                 components: int = 0):
        super().__init__()
        _check_positive(latent_dim, "latent_dim")
        _check_components(components)
        self.prior = MixtureLatent(latent_dim, components) if components else None
        self.latent_dim = latent_dim + (1 if components else 0)
        self.net = _mlp(latent_dim, _check_positive(hidden, "hidden"), _check_positive(layers, "layers"),
                        _check_positive(data_dim, "data_dim"), nn.ReLU)
        self.register_buffer("scale", torch.tensor(float(scale)))

    def decode(self, latent: Tensor) -> Tensor:
        """The map after the mixture latent: latent (N, latent_dim without the component
        coordinate) → x (N, data_dim)."""
        return self.net(latent) * self.scale

    def forward(self, z: Tensor) -> Tensor:
        if self.prior is not None:
            z = self.prior(z)
        return self.decode(z)


class MLPDiscriminator(nn.Module):
    """x (N, data_dim) → logits (N,): ``layers`` hidden LeakyReLU(0.2) layers of ``hidden`` units.

    ``scale`` divides the input (the generator's ``scale``), so both networks see unit-scale data.

    ``fourier_octaves`` L > 0 feeds the network the positional encoding of the unit-scale input
    u beside u itself: sin(π·2^i·u) and cos(π·2^i·u) for i < L, per coordinate (NeRF's
    encoding; Tancik et al., NeurIPS 2020, "Fourier features let networks learn high frequency
    functions"). Why: an MLP learns low frequencies first, so a plain D cannot resolve modes
    much narrower than their spacing (grid100's σ is 1/180 of its extent) and the generator's
    samples stay smeared between them. Periods run from 2 (the whole unit box) down to 2^(2−L).
    Under autocast the input is rounded to the autocast dtype first, as a Linear would round it:
    otherwise fp32 real data and the generator's low-precision samples would differ in their
    high-octave phases, a difference D could learn that has nothing to do with the data.

    ``coarse_to_fine`` f > 0 brings the octaves in one after another over the first fraction f
    of training (BARF's schedule, Lin et al., ICCV 2021): octave i has weight
    (1 − cos(π·clamp(L·t/f − i, 0, 1)))/2 at training progress t. A sharp D from the first step
    traps each generator component at the mode nearest its start, duplicates and all; a D that
    sharpens gradually lets the components spread over the data first. The trainer calls
    :meth:`set_training_progress`; the weights are a buffer (in the state_dict, so a
    checkpoint's D is the D that was trained), all 1 at construction and once t ≥ f.
    """

    def __init__(self, data_dim: int = 2, hidden: int = 128, layers: int = 3, scale: float = 1.0,
                 fourier_octaves: int = 0, coarse_to_fine: float = 0.0):
        super().__init__()
        data_dim = _check_positive(data_dim, "data_dim")
        if isinstance(fourier_octaves, bool) or not isinstance(fourier_octaves, int) or not 0 <= fourier_octaves <= 16:
            raise ValueError(f"fourier_octaves must be an integer from 0 to 16, got {fourier_octaves!r}")
        if isinstance(coarse_to_fine, bool) or not isinstance(coarse_to_fine, (int, float)) or not 0.0 <= coarse_to_fine <= 1.0:
            raise ValueError(f"coarse_to_fine must be a fraction of training in [0, 1], got {coarse_to_fine!r}")
        self.fourier_octaves, self.coarse_to_fine = fourier_octaves, float(coarse_to_fine)
        self.net = _mlp(data_dim * (1 + 2 * fourier_octaves), _check_positive(hidden, "hidden"),
                        _check_positive(layers, "layers"), 1, lambda: nn.LeakyReLU(0.2))
        self.register_buffer("inv_scale", torch.tensor(1.0 / float(scale)))
        if fourier_octaves:
            self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(fourier_octaves, dtype=torch.float32),
                                 persistent=False)
            self.register_buffer("octave_weights", torch.ones(fourier_octaves))
            self._progress_weights: Optional[tuple] = None  # the weights last written, to skip rewrites

    def octave_weights_at(self, progress: float) -> list[float]:
        """The coarse-to-fine weights of the ``fourier_octaves`` octaves at training progress
        ``progress`` in [0, 1]."""
        if self.coarse_to_fine == 0.0:
            return [1.0] * self.fourier_octaves
        reached = self.fourier_octaves * min(1.0, progress / self.coarse_to_fine)
        return [(1.0 - math.cos(math.pi * min(1.0, max(0.0, reached - i)))) / 2.0 for i in range(self.fourier_octaves)]

    def set_training_progress(self, progress: float) -> None:
        """Set the octave weights for training progress ``progress`` (step / total steps)."""
        if not self.fourier_octaves:
            return
        weights = tuple(self.octave_weights_at(progress))
        if weights != self._progress_weights:
            # In place (CUDA graphs replay with the new values), one fill per octave: a copy from
            # a host tensor would synchronise with a GPU on every step of the schedule.
            for octave, weight in enumerate(weights):
                self.octave_weights[octave].fill_(weight)
            self._progress_weights = weights

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        if self.fourier_octaves:
            self._progress_weights = None  # the loaded weights replace what was last written

    def forward(self, x: Tensor) -> Tensor:
        u = x * self.inv_scale
        if self.fourier_octaves:
            if torch.is_autocast_enabled(u.device.type):
                u = u.to(torch.get_autocast_dtype(u.device.type)).to(u.dtype)
            phases = u.unsqueeze(-1) * self.frequencies  # (N, data_dim, L)
            u = torch.cat([u, (phases.sin() * self.octave_weights).flatten(1),
                           (phases.cos() * self.octave_weights).flatten(1)], dim=1)
        return self.net(u).squeeze(-1)


def _check_image_size(image_size: int) -> int:
    if image_size not in (32, 64):
        raise ValueError(f"image_size must be 32 or 64, got {image_size!r}")
    return image_size


class DCGANGenerator(nn.Module):
    """z (N, latent_dim) → images (N, channels, image_size, image_size) in [−1, 1].

    A 4×4 projection, then stride-2 transposed convolutions halving the width up to
    ``image_size`` (32 or 64), each followed by the fused BatchNorm → ReLU block, and a
    final transposed convolution with tanh.
    """

    def __init__(self, latent_dim: int = 100, channels: int = 3, image_size: int = 64, width: int = 64):
        super().__init__()
        self.latent_dim = _check_positive(latent_dim, "latent_dim")
        _check_positive(channels, "channels"), _check_positive(width, "width")
        upsamplings = {32: 2, 64: 3}[_check_image_size(image_size)]
        features = width * 2**upsamplings
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, features, 4, 1, 0, bias=False),
            BatchNormLeakyReLU2d(features, negative_slope=0.0),
        ]
        for _ in range(upsamplings):
            layers += [
                nn.ConvTranspose2d(features, features // 2, 4, 2, 1, bias=False),
                BatchNormLeakyReLU2d(features // 2, negative_slope=0.0),
            ]
            features //= 2
        layers += [nn.ConvTranspose2d(features, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.view(z.shape[0], -1, 1, 1))


class DCGANDiscriminator(nn.Module):
    """images (N, channels, image_size, image_size) → logits (N,).

    Stride-2 convolutions doubling the width, LeakyReLU(0.2), the fused BatchNorm →
    LeakyReLU(0.2) block after every convolution but the first, and a 4×4 convolution to one
    logit.
    """

    def __init__(self, channels: int = 3, image_size: int = 64, width: int = 64):
        super().__init__()
        _check_positive(channels, "channels"), _check_positive(width, "width")
        downsamplings = {32: 2, 64: 3}[_check_image_size(image_size)]
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
        features = width
        for _ in range(downsamplings):
            layers += [
                nn.Conv2d(features, features * 2, 4, 2, 1, bias=False),
                BatchNormLeakyReLU2d(features * 2, negative_slope=0.2),
            ]
            features *= 2
        layers.append(nn.Conv2d(features, 1, 4, 1, 0, bias=False))
        self.net = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).view(x.shape[0])


def _check_components(components) -> int:
    if isinstance(components, bool) or not isinstance(components, int) or components < 0:
        raise ValueError(f"components must be a non-negative integer, got {components!r}")
    return components


class CoordinateMask(nn.Module):
    """Mask logits (N, 1, S, S) from a code (N, code_dim) and a placement: a ReLU MLP of the
    pixel coordinates (a CPPN, Ha 2016; the coordinate generators of CIPS, Anokhin et al.,
    CVPR 2021), ``layers`` layers of ``width`` units, the code entering as a bias of every layer.

    Pixel centres p ∈ (−1, 1)² are evaluated at the placed coordinates q = scale·p + shift (the
    same map ``affine_grid`` would apply), so the mask needs no resampling. Why this network: a
    ReLU MLP is piecewise linear in q, so the mask's edge is a polygon whose corners stay sharp
    (a square, a triangle and a plus are such polygons; a circle becomes one of many short
    edges). Transposed convolutions of a CPU-affordable width made rounded squares and lumpy
    circles, which the ``shapes`` detector cannot tell apart (README: 75–88 % valid, against
    90–97 % with this mask). The first layer's lines share their directions across codes (the
    code moves them), which suits a set whose shapes are drawn unrotated.

    Cost: every layer is an (N·S², width) tensor, memory-bound on a CPU; width 32 and 3 layers
    cost about twice the convolutional mask's time per sample at 32×32.
    """

    def __init__(self, code_dim: int, image_size: int, width: int = 32, layers: int = 3):
        super().__init__()
        self.width = _check_positive(width, "width")
        self.layers = _check_positive(layers, "layers")
        self.image_size = image_size
        # (2, width): the first layer's lines in the coordinates; N(0, 3²) puts a few across the image.
        self.coordinate_weight = nn.Parameter(torch.randn(2, width) * 3.0)
        self.code_biases = nn.Linear(code_dim, width * layers)
        bound = 1 / math.sqrt(width)  # nn.Linear's default range
        self.hidden_weights = nn.ParameterList(
            nn.Parameter(torch.empty(width, width).uniform_(-bound, bound)) for _ in range(layers - 1)
        )
        self.out = nn.Linear(width, 1)
        centres = (torch.arange(image_size, dtype=torch.float32) * 2 + 1) / image_size - 1
        rows, columns = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("pixels", torch.stack([columns, rows], -1).view(-1, 2), persistent=False)  # (S², 2) x, y

    def forward(self, code: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        """``code`` (N, code_dim), ``scale`` (N,), ``shift`` (N, 2) → logits (N, 1, S, S)."""
        n = code.shape[0]
        biases = self.code_biases(code).view(n, self.layers, self.width)
        # The first layer at q = scale·p + shift is scale·(p·W) + (shift·W + b): one fused multiply-add.
        first_bias = biases[:, 0] + shift @ self.coordinate_weight
        lines = (self.pixels @ self.coordinate_weight).unsqueeze(0)  # (1, S², width)
        hidden = torch.addcmul(first_bias.unsqueeze(1), scale.view(n, 1, 1), lines).relu_()
        for index, weight in enumerate(self.hidden_weights):
            hidden = torch.baddbmm(biases[:, index + 1].unsqueeze(1), hidden, weight.expand(n, -1, -1)).relu_()
        return self.out(hidden).view(n, 1, self.image_size, self.image_size)


#: The layered generator's mask networks (:class:`LayeredGenerator`).
LAYERED_MASKS = ("coordinates", "convolutions")


class LayeredGenerator(nn.Module):
    """z (N, latent_dim [+ 1]) → images (N, channels, image_size, image_size) in [−1, 1]: one
    flat-coloured object on a flat background, in layers (LR-GAN, Yang et al., ICLR 2017).

    From the latent code c (drawn from a learnable :class:`MixtureLatent` of ``components``
    components when > 0; then the noise is ``latent_dim + 1`` wide, as for :class:`MLPGenerator`):

    - a placement: scale s = exp(±½) and shift t ∈ (−½, ½)² (of the half-image) from a linear
      map of c (initialised to the identity);
    - a mask m ∈ (0, 1) (1, S, S), the sigmoid of the mask network's logits, placed by s and t:
      ``mask="coordinates"`` (the default), a :class:`CoordinateMask` of ``width`` units
      evaluated at the placed pixel coordinates; ``mask="convolutions"`` (the recipe before
      it, kept for its runs), a linear projection to 4×4 then stride-2 transposed convolutions
      with the fused BatchNorm → ReLU block, halving the width from 4·``width``, placed by
      ``affine_grid`` / ``grid_sample`` (bilinear, zero outside);
    - a foreground and a background colour f, b ∈ (0, 1)^channels (linear map of c, sigmoid);

    and composites x = 2·(m·f + (1 − m)·b) − 1. Why: on the ``shapes`` set a plain DCGAN of any
    CPU-affordable width makes coloured blobs for thousands of steps; with the colour and the
    pose factored out, the mask network learns only a shape per component. The mixture's
    components give the discrete choice of shape and colour that a connected Gaussian latent
    cannot (README: 24/24 modes in under 5 minutes on the 2-core CPU).

    Checkpoints saved before the coordinate mask (2026-11-30) hold the convolutional one at
    width 16: rebuild them with ``width=16, mask="convolutions"`` (the command line reads both
    from the run's config).
    """

    def __init__(self, latent_dim: int = 32, channels: int = 3, image_size: int = 32, width: int = 32,
                 components: int = 48, mask: str = "coordinates"):
        super().__init__()
        _check_positive(latent_dim, "latent_dim")
        self.channels = _check_positive(channels, "channels")
        self.width = _check_positive(width, "width")
        components = _check_components(components)
        if mask not in LAYERED_MASKS:
            raise ValueError(f"mask must be one of {', '.join(LAYERED_MASKS)}, got {mask!r}")
        self.mask_kind = mask
        _check_image_size(image_size)
        self.prior = MixtureLatent(latent_dim, components) if components else None
        self.latent_dim = latent_dim + (1 if components else 0)
        if mask == "coordinates":
            self.mask = CoordinateMask(latent_dim, image_size, width)
        else:
            features = 4 * width
            self.project = nn.Linear(latent_dim, features * 16)
            layers: list[nn.Module] = [BatchNormLeakyReLU2d(features, negative_slope=0.0)]
            upsamplings = {32: 3, 64: 4}[image_size]
            for index in range(upsamplings):
                last = index == upsamplings - 1
                out = 1 if last else max(features // 2, 1)
                layers.append(nn.ConvTranspose2d(features, out, 4, 2, 1))
                if not last:
                    layers.append(BatchNormLeakyReLU2d(out, negative_slope=0.0))
                features = out
            self.mask = nn.Sequential(*layers)
        self.colours = nn.Linear(latent_dim, 2 * channels)
        self.placement = nn.Linear(latent_dim, 3)
        nn.init.zeros_(self.placement.weight)
        nn.init.zeros_(self.placement.bias)

    def forward(self, z: Tensor) -> Tensor:
        code = self.prior(z) if self.prior is not None else z
        n = code.shape[0]
        place = torch.tanh(self.placement(code))
        scale, shift = torch.exp(0.5 * place[:, 0]), 0.5 * place[:, 1:]
        if self.mask_kind == "coordinates":
            mask = torch.sigmoid(self.mask(code, scale, shift))
        else:
            mask = torch.sigmoid(self.mask(self.project(code).view(n, 4 * self.width, 4, 4)))
            zero = torch.zeros_like(scale)
            theta = torch.stack([scale, zero, shift[:, 0], zero, scale, shift[:, 1]], 1).view(n, 2, 3)
            grid = nn.functional.affine_grid(theta.to(mask.dtype), list(mask.shape), align_corners=False)
            mask = nn.functional.grid_sample(mask, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        foreground, background = torch.sigmoid(self.colours(code)).view(n, 2, self.channels, 1, 1).unbind(1)
        return (mask * foreground + (1 - mask) * background) * 2 - 1


class ConvDiscriminator(nn.Module):
    """images (N, channels, image_size, image_size) → logits (N,), without normalisation layers
    (so the R1 penalty sees each sample alone): stride-2 4×4 convolutions doubling the width from
    ``width`` down to 4×4, LeakyReLU(0.2) after each, and a 4×4 convolution to one logit."""

    def __init__(self, channels: int = 3, image_size: int = 32, width: int = 16):
        super().__init__()
        _check_positive(channels, "channels"), _check_positive(width, "width")
        downsamplings = {32: 3, 64: 4}[_check_image_size(image_size)]
        layers: list[nn.Module] = []
        features_in, features = channels, width
        for _ in range(downsamplings):
            layers += [nn.Conv2d(features_in, features, 4, 2, 1), nn.LeakyReLU(0.2)]
            features_in, features = features, features * 2
        layers.append(nn.Conv2d(features_in, 1, 4, 1, 0))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).view(x.shape[0])


def _dcgan_init(module: nn.Module, generator: Optional[torch.Generator] = None) -> None:
    """DCGAN's initialisation: convolutions N(0, 0.02), BatchNorm weights N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02, generator=generator)
        elif isinstance(m, BatchNormLeakyReLU2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02, generator=generator)
            nn.init.zeros_(m.bias)
