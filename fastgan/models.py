"""Reference generator and discriminator architectures.

* :class:`MLPGenerator` / :class:`MLPDiscriminator`: small multilayer perceptrons for the
  2-D toy mixtures (``fastgan.data``).
* :class:`DCGANGenerator` / :class:`DCGANDiscriminator`: the DCGAN architecture (Radford et
  al., 2016) for 32×32 and 64×64 images, built on the fused BatchNorm → ReLU (generator) and
  BatchNorm → LeakyReLU(0.2) (discriminator) blocks of :mod:`fastgan.nn`.

Every discriminator returns one logit per sample, shape (N,): the estimate of
log p_data(x)/p_g(x) the losses in :mod:`fastgan.losses` read.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from fastgan.nn import BatchNormLeakyReLU2d

__all__ = ["DCGANDiscriminator", "DCGANGenerator", "MLPDiscriminator", "MLPGenerator"]


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


class MLPGenerator(nn.Module):
    """z (N, latent_dim) → x (N, data_dim): ``layers`` hidden ReLU layers of ``hidden`` units.

    ``scale`` multiplies the output, so the network works at unit scale whatever the data's
    extent (the toy grids span ±4 or ±9).
    """

    def __init__(self, latent_dim: int = 8, data_dim: int = 2, hidden: int = 128, layers: int = 3, scale: float = 1.0):
        super().__init__()
        self.latent_dim = _check_positive(latent_dim, "latent_dim")
        self.net = _mlp(latent_dim, _check_positive(hidden, "hidden"), _check_positive(layers, "layers"),
                        _check_positive(data_dim, "data_dim"), nn.ReLU)
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z) * self.scale


class MLPDiscriminator(nn.Module):
    """x (N, data_dim) → logits (N,): ``layers`` hidden LeakyReLU(0.2) layers of ``hidden`` units.

    ``scale`` divides the input (the generator's ``scale``), so both networks see unit-scale data.
    """

    def __init__(self, data_dim: int = 2, hidden: int = 128, layers: int = 3, scale: float = 1.0):
        super().__init__()
        self.net = _mlp(_check_positive(data_dim, "data_dim"), _check_positive(hidden, "hidden"),
                        _check_positive(layers, "layers"), 1, lambda: nn.LeakyReLU(0.2))
        self.register_buffer("inv_scale", torch.tensor(1.0 / float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x * self.inv_scale).squeeze(-1)


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


def _dcgan_init(module: nn.Module, generator: Optional[torch.Generator] = None) -> None:
    """DCGAN's initialisation: convolutions N(0, 0.02), BatchNorm weights N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02, generator=generator)
        elif isinstance(m, BatchNormLeakyReLU2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02, generator=generator)
            nn.init.zeros_(m.bias)
