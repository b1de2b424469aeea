"""fastgan.models additions: the learnable mixture latent prior (MixtureLatent) against a
float64 indexing reference, its components equally likely under N(0, 1) noise, gradients
that reach only the chosen components, and MLPGenerator's wider noise when it has one."""

import math

import pytest
import torch
from torch import nn

from fastgan import models


def test_mixture_latent_matches_an_indexing_reference():
    torch.manual_seed(0)
    prior = models.MixtureLatent(5, 7, init_scale=0.3).double()
    with torch.no_grad():
        prior.log_scales.normal_(-1.0, 0.5)  # distinct scales per component and coordinate
    z = torch.randn(301, 6, dtype=torch.float64) * 1.5 + 0.2
    index = torch.clamp((torch.special.ndtr(z[:, 0]) * 7).floor().long(), 0, 6)
    expected = prior.means[index] + prior.log_scales[index].exp() * z[:, 1:]
    torch.testing.assert_close(prior(z), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(prior.component(z), index)


def test_mixture_components_are_equally_likely():
    prior = models.MixtureLatent(3, 25)
    counts = torch.bincount(prior.component(torch.randn(100_000, 4, generator=torch.Generator().manual_seed(1))),
                            minlength=25).double()
    expected = 100_000 / 25
    assert ((counts - expected).abs() < 5 * math.sqrt(expected * (1 - 1 / 25))).all(), counts
    # Extreme noise maps to the end components, not out of range.
    assert prior.component(torch.tensor([[-1e4, 0, 0, 0], [1e4, 0, 0, 0]])).tolist() == [0, 24]


def test_gradients_reach_only_the_chosen_components():
    prior = models.MixtureLatent(2, 10)
    z = torch.randn(3, 3, generator=torch.Generator().manual_seed(2))
    prior(z).square().sum().backward()
    chosen = set(prior.component(z).tolist())
    for k in range(10):
        touched = bool(prior.means.grad[k].abs().sum() > 0) or bool(prior.log_scales.grad[k].abs().sum() > 0)
        assert touched == (k in chosen), k


def test_mlp_generator_with_a_mixture_takes_one_more_noise_coordinate():
    plain = models.MLPGenerator(8, 2, 16, 2)
    mixed = models.MLPGenerator(8, 2, 16, 2, components=25)
    assert plain.latent_dim == 8 and plain.prior is None
    assert mixed.latent_dim == 9 and mixed.prior.components == 25
    assert mixed(torch.randn(11, 9)).shape == (11, 2)


@pytest.mark.parametrize("components", [-1, 1.5, True])
def test_bad_components_are_named(components):
    with pytest.raises(ValueError, match="components must be a non-negative integer"):
        models.MLPGenerator(4, 2, 8, 1, components=components)


def test_bad_mixture_arguments_are_named():
    with pytest.raises(ValueError, match="init_scale must be > 0"):
        models.MixtureLatent(3, 4, init_scale=0.0)
    with pytest.raises(ValueError, match="components must be a positive integer"):
        models.MixtureLatent(3, 0)


def _mask_logits_at_identity(generator, code):
    """The mask network's logits with the placement at the identity (scale 1, shift 0)."""
    n = code.shape[0]
    if generator.mask_kind == "coordinates":
        return generator.mask(code, torch.ones(n), torch.zeros(n, 2))
    return generator.mask(generator.project(code).view(n, 4 * generator.width, 4, 4))


@pytest.mark.parametrize("mask", models.LAYERED_MASKS)
def test_layered_generator_composites_a_placed_mask_over_two_colours(mask):
    torch.manual_seed(0)
    generator = models.LayeredGenerator(8, 3, 32, width=4, components=5, mask=mask).eval()
    assert generator.latent_dim == 9 and generator.prior.components == 5
    z = torch.randn(6, 9) * 1.3 + 0.1
    images = generator(z)
    assert images.shape == (6, 3, 32, 32) and images.abs().max() <= 1
    # At initialisation the placement is the identity: the image is the plain composite.
    code = generator.prior(z)
    mask_values = torch.sigmoid(_mask_logits_at_identity(generator, code))
    colours = torch.sigmoid(generator.colours(code)).view(6, 2, 3, 1, 1)
    expected = (mask_values * colours[:, 0] + (1 - mask_values) * colours[:, 1]) * 2 - 1
    torch.testing.assert_close(images, expected, rtol=1e-5, atol=1e-5)
    # A shift of a quarter of the half-image (tanh(b)/2 = 1/4) samples the mask 4 pixels (of 32) to
    # the right, so the object moves 4 pixels left.
    with torch.no_grad():
        generator.placement.bias.copy_(torch.tensor([0.0, math.atanh(0.5), 0.0]))
    shifted = generator(z)
    torch.testing.assert_close(shifted[..., :-4], images[..., 4:], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(shifted, images, atol=1e-3)
    assert models.LayeredGenerator(8, 1, 64, width=4, components=0, mask=mask)(torch.randn(2, 8)).shape == (2, 1, 64, 64)


@pytest.mark.parametrize("n,image_size,width,layers", [(3, 32, 5, 3), (1, 64, 8, 1), (4, 32, 7, 2)])
def test_coordinate_mask_is_its_mlp_at_the_placed_coordinates(n, image_size, width, layers):
    """The mask's fused first layer (scale·(p·W) + shift·W + bias) and batched hidden layers equal
    the plain MLP evaluated pixel by pixel at q = scale·p + shift, p the pixel centre in (−1, 1)²."""
    torch.manual_seed(1)
    mask = models.CoordinateMask(6, image_size, width, layers).double()
    code = torch.randn(n, 6, dtype=torch.float64) + 0.3
    scale = torch.rand(n, dtype=torch.float64) + 0.6
    shift = torch.rand(n, 2, dtype=torch.float64) - 0.5
    logits = mask(code, scale, shift)
    assert logits.shape == (n, 1, image_size, image_size)
    centres = (torch.arange(image_size, dtype=torch.float64) + 0.5) / image_size * 2 - 1
    biases = mask.code_biases(code).view(n, layers, width)
    for sample in range(n):
        for row, column in [(0, 0), (image_size - 1, 2), (image_size // 2, image_size - 1), (5, 11)]:
            q = scale[sample] * torch.stack([centres[column], centres[row]]) + shift[sample]  # (x, y)
            hidden = torch.relu(q @ mask.coordinate_weight + biases[sample, 0])
            for index, weight in enumerate(mask.hidden_weights):
                hidden = torch.relu(hidden @ weight + biases[sample, index + 1])
            torch.testing.assert_close(logits[sample, 0, row, column], mask.out(hidden)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("image_size", [32, 64])
def test_coordinate_mask_pixels_are_affine_grids_sampling_points(image_size):
    """The convolutional mask is placed by affine_grid (align_corners=False): the coordinate mask
    reads the same (x, y) points, so both masks move the same way under one placement."""
    identity = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    grid = nn.functional.affine_grid(identity, [1, 1, image_size, image_size], align_corners=False)
    torch.testing.assert_close(models.CoordinateMask(4, image_size).pixels, grid.view(-1, 2), rtol=0, atol=1e-6)


def test_coordinate_mask_gradients_match_finite_differences():
    torch.manual_seed(2)
    mask = models.CoordinateMask(3, 32, 4, 2).double()
    code = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    scale = (torch.rand(2, dtype=torch.float64) + 0.7).requires_grad_()
    shift = (torch.rand(2, 2, dtype=torch.float64) - 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda c, s, t: mask(c, s, t), (code, scale, shift))


def test_the_convolutional_mask_keeps_the_state_dict_of_its_runs():
    """Runs saved before the coordinate mask hold these keys: they still load (README)."""
    generator = models.LayeredGenerator(8, 3, 32, width=4, components=5, mask="convolutions")
    assert sorted(generator.state_dict()) == sorted([
        "prior.means", "prior.log_scales", "project.weight", "project.bias",
        *[f"mask.{i}.{name}" for i in (0, 2, 4) for name in ("weight", "bias", "running_mean", "running_var",
                                                             "num_batches_tracked")],
        *[f"mask.{i}.{name}" for i in (1, 3, 5) for name in ("weight", "bias")],
        "colours.weight", "colours.bias", "placement.weight", "placement.bias",
    ])


def test_layered_generator_and_conv_discriminator_arguments():
    with pytest.raises(ValueError, match="components must be a non-negative integer"):
        models.LayeredGenerator(8, 3, 32, 4, components=-1)
    with pytest.raises(ValueError, match="image_size must be 32 or 64"):
        models.LayeredGenerator(8, 3, 48, 4)
    with pytest.raises(ValueError, match="mask must be one of coordinates, convolutions, got 'pixels'"):
        models.LayeredGenerator(8, 3, 32, 4, mask="pixels")
    with pytest.raises(ValueError, match="layers must be a positive integer"):
        models.CoordinateMask(8, 32, 4, layers=0)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        models.ConvDiscriminator(3, 32, 0)


@pytest.mark.parametrize("image_size", [32, 64])
def test_conv_discriminator_scores_each_sample_alone(image_size):
    """No normalisation layer: a sample's logit does not depend on the rest of the batch (R1 needs that)."""
    torch.manual_seed(1)
    discriminator = models.ConvDiscriminator(3, image_size, width=4).train()
    x = torch.randn(5, 3, image_size, image_size)
    logits = discriminator(x)
    assert logits.shape == (5,)
    other = torch.cat([x[:2], torch.randn(3, 3, image_size, image_size) * 3 + 1])
    torch.testing.assert_close(discriminator(other)[:2], logits[:2])


def test_fourier_discriminator_feeds_the_octaves_of_its_unit_scale_input():
    torch.manual_seed(0)
    plain = models.MLPDiscriminator(2, 16, 2, scale=4.0)
    fourier = models.MLPDiscriminator(2, 16, 2, scale=4.0, fourier_octaves=3)
    assert set(plain.state_dict()) == {"inv_scale", "net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias",
                                       "net.4.weight", "net.4.bias"}  # unchanged without octaves
    assert fourier.net[0].in_features == 2 * (1 + 2 * 3) and "octave_weights" in fourier.state_dict()
    x = torch.randn(9, 2, dtype=torch.float64) * 3 + 0.5
    fourier.double()
    u = x / 4.0
    torch.testing.assert_close(fourier.frequencies, torch.tensor([math.pi * 2 ** i for i in range(3)],
                                                                 dtype=torch.float64), rtol=1e-7, atol=0)
    phases = torch.stack([u * fourier.frequencies[i] for i in range(3)], -1)  # (N, 2, L)
    features = torch.cat([u, phases.sin().flatten(1), phases.cos().flatten(1)], 1)
    torch.testing.assert_close(fourier(x), fourier.net(features).squeeze(-1), rtol=1e-12, atol=1e-12)


def test_coarse_to_fine_weights_follow_barfs_schedule():
    d = models.MLPDiscriminator(2, 8, 1, fourier_octaves=4, coarse_to_fine=0.5)
    assert d.octave_weights.tolist() == [1.0] * 4  # a D used outside a trainer sees every octave
    assert d.octave_weights_at(0.0) == [0.0] * 4
    # Halfway through the schedule (progress 0.25): octaves 0 and 1 on, 2 and 3 off.
    assert d.octave_weights_at(0.25) == pytest.approx([1.0, 1.0, 0.0, 0.0])
    # Octave i ramps as (1 - cos(pi * (4 t / 0.5 - i))) / 2: at t = 0.3125, octave 2 is half on.
    assert d.octave_weights_at(0.3125) == pytest.approx([1.0, 1.0, 0.5, 0.0])
    assert d.octave_weights_at(0.5) == d.octave_weights_at(0.9) == [1.0] * 4
    address = d.octave_weights.data_ptr()
    d.set_training_progress(0.3125)
    assert d.octave_weights.tolist() == pytest.approx([1.0, 1.0, 0.5, 0.0]) and d.octave_weights.data_ptr() == address
    # The weights scale the octaves' features: switched-off octaves do not reach the output.
    d.set_training_progress(0.25)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1)) + 0.3
    phases = torch.stack([x * math.pi * 2 ** i for i in range(4)], -1)
    weights = torch.tensor([1.0, 1.0, 0.0, 0.0])
    features = torch.cat([x, (phases.sin() * weights).flatten(1), (phases.cos() * weights).flatten(1)], 1)
    with torch.no_grad():
        torch.testing.assert_close(d(x), d.net(features).squeeze(-1))
    assert models.MLPDiscriminator(2, 8, 1).octave_weights_at(0.3) == []


@pytest.mark.parametrize("octaves, schedule, message", [(-1, 0.0, "fourier_octaves"), (17, 0.0, "fourier_octaves"),
                                                        (2.0, 0.0, "fourier_octaves"), (2, 1.5, "coarse_to_fine"),
                                                        (2, float("nan"), "coarse_to_fine"), (2, "0.5", "coarse_to_fine")])
def test_bad_fourier_arguments_are_named(octaves, schedule, message):
    with pytest.raises(ValueError, match=message):
        models.MLPDiscriminator(2, 8, 1, fourier_octaves=octaves, coarse_to_fine=schedule)


def test_fourier_features_see_real_and_generated_inputs_alike_under_autocast():
    """Under bfloat16 autocast the generator's samples are bfloat16 and real data float32: the
    features must not tell them apart by rounding (a plain Linear input would not)."""
    torch.manual_seed(0)
    d = models.MLPDiscriminator(2, 16, 2, scale=4.0, fourier_octaves=12)
    x = torch.randn(64, 2) * 3 + 0.7
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(d(x), d(x.bfloat16()))
    assert not torch.equal(d(x), d(x.bfloat16().float()))  # in float32 the rounding is visible: the test can fail


def test_loading_octave_weights_is_not_undone_by_the_schedule_cache():
    d = models.MLPDiscriminator(2, 8, 1, fourier_octaves=3, coarse_to_fine=0.5)
    d.set_training_progress(1.0)  # all on
    saved = {k: v.clone() for k, v in d.state_dict().items()}
    d.set_training_progress(0.1)
    d.load_state_dict(saved)  # back to all on
    d.set_training_progress(0.1)  # the same progress as the last write: it must be written again
    assert d.octave_weights.tolist() == pytest.approx(d.octave_weights_at(0.1))
