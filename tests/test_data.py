"""fastgan.data: the toy mixtures against the PacGAN definitions, image loading from files and
arrays written here, and the embedded shapes set against its exact detector."""

import math
import sys

import numpy as np
import pytest
import torch

from fastgan import data
from fastgan.data import (
    COLOUR_NAMES,
    NUM_SHAPE_MODES,
    PALETTE,
    SHAPE_NAMES,
    TOY_MIXTURES,
    ImageDataset,
    ShapesDataset,
    ToyMixture,
    classify_shapes,
    load_images,
    render_shapes,
    shape_mode_names,
    toy_mixture,
)

try:
    from PIL import Image
except ImportError:  # pragma: no cover - depends on the environment
    Image = None

needs_pil = pytest.mark.skipif(Image is None, reason="Pillow is not installed (pip install pillow)")


def gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


# --------------------------------------------------------------------------------------
# Toy mixtures
# --------------------------------------------------------------------------------------


def test_toy_mixture_definitions_match_pacgan():
    assert TOY_MIXTURES == ("ring8", "grid25", "grid100")
    ring = toy_mixture("ring8")
    angles = [2 * math.pi * k / 8 for k in range(8)]
    want = torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=torch.float64)
    torch.testing.assert_close(ring.centres, want, rtol=0, atol=1e-15)
    assert ring.std == 0.01 and ring.num_modes == 8
    torch.testing.assert_close(ring.centres.norm(dim=1), torch.ones(8, dtype=torch.float64))

    grid = toy_mixture("grid25")
    assert grid.std == 0.05 and grid.num_modes == 25
    want = [(x, y) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)]
    assert [tuple(c) for c in grid.centres.tolist()] == want

    big = toy_mixture("grid100")
    assert big.std == 0.05 and big.num_modes == 100
    values = list(range(-9, 10, 2))
    assert [tuple(c) for c in big.centres.tolist()] == [(x, y) for x in values for y in values]
    assert big.centres.mean(0).abs().max() == 0  # centred at the origin, spacing 2
    assert toy_mixture("grid25") is grid  # one shared object per name (its device caches)


def test_toy_mixture_errors():
    with pytest.raises(ValueError, match=r"unknown toy mixture 'grid9'.*ring8, grid25, grid100"):
        toy_mixture("grid9")
    with pytest.raises(ValueError, match=r"centres must have shape \(K, 2\)"):
        ToyMixture("bad", torch.zeros(3, 3), 0.1)
    with pytest.raises(ValueError, match="std must be a finite number > 0"):
        ToyMixture("bad", torch.zeros(3, 2), 0.0)
    with pytest.raises(TypeError, match="centres must be a floating tensor"):
        ToyMixture("bad", torch.zeros(3, 2, dtype=torch.int64), 0.1)
    with pytest.raises(ValueError, match="n must be >= 0"):
        toy_mixture("ring8").sample(-1)
    with pytest.raises(TypeError, match="n must be an int"):
        toy_mixture("ring8").sample(2.5)
    with pytest.raises(ValueError, match="generator is on cpu but samples were asked for on meta"):
        toy_mixture("ring8").sample(4, device="meta", generator=gen(0))


@pytest.mark.parametrize("name", TOY_MIXTURES)
def test_toy_samples_are_the_mixture(name):
    mix = toy_mixture(name)
    x, modes = mix.sample_with_modes(20000, generator=gen(1))
    assert x.shape == (20000, 2) and x.dtype == torch.float32 and modes.dtype == torch.int64
    # Each sample is its own centre plus N(0, σ²I): the standardised noise has mean 0, variance 1.
    z = (x.double() - mix.centres[modes]) / mix.std
    assert z.mean(0).abs().max() < 4 / math.sqrt(20000)
    assert (z.var(0) - 1).abs().max() < 0.05
    # The modes are uniform: a chi-square test with K − 1 degrees of freedom at ~5 sigma.
    counts = torch.bincount(modes, minlength=mix.num_modes).double()
    expected = 20000 / mix.num_modes
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    dof = mix.num_modes - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof)


def test_toy_sampling_is_reproducible_and_uses_the_global_rng():
    mix = toy_mixture("grid25")
    torch.testing.assert_close(mix.sample(100, generator=gen(7)), mix.sample(100, generator=gen(7)), rtol=0, atol=0)
    assert not torch.equal(mix.sample(100, generator=gen(7)), mix.sample(100, generator=gen(8)))
    torch.manual_seed(3)
    a = mix.sample(50)
    torch.manual_seed(3)
    torch.testing.assert_close(mix.sample(50), a, rtol=0, atol=0)
    assert mix.sample(0).shape == (0, 2)
    assert mix.sample(5, dtype=torch.float64).dtype == torch.float64


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_toy_and_shapes_sampling_capture_in_a_cuda_graph():
    mix = toy_mixture("grid25")
    shapes = ShapesDataset()
    g = torch.Generator(device="cuda").manual_seed(0)
    mix.sample(256, device="cuda", generator=g)  # warm-up: centres and palette copied once
    shapes.sample(64, device="cuda", generator=g)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        x = mix.sample(256, device="cuda")
        images = shapes.sample(64, device="cuda")
    graph.replay()
    torch.cuda.synchronize()
    assert x.is_cuda and x.shape == (256, 2) and images.shape == (64, 3, 32, 32)
    from fastgan.metrics import shapes_metrics, toy_metrics

    assert toy_metrics(x, mix).high_quality > 0.9
    assert shapes_metrics(images).high_quality == 1.0


# --------------------------------------------------------------------------------------
# Images from arrays
# --------------------------------------------------------------------------------------


def test_npy_uint8_gray_and_rgb(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (5, 6, 6), dtype=np.uint8)
    np.save(tmp_path / "gray.npy", gray)
    x = load_images(tmp_path / "gray.npy", 6)
    assert x.shape == (5, 3, 6, 6) and x.dtype == torch.float32
    want = torch.from_numpy(gray).float() / 255 * 2 - 1
    for c in range(3):  # grayscale replicated
        torch.testing.assert_close(x[:, c], want)
    one = load_images(str(tmp_path / "gray.npy"), 6, channels=1)
    assert one.shape == (5, 1, 6, 6)
    torch.testing.assert_close(one[:, 0], want)

    rgb = rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    x = load_images(tmp_path / "rgb.npy", 6)
    torch.testing.assert_close(x, torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255 * 2 - 1)
    luma = load_images(tmp_path / "rgb.npy", 6, channels=1)
    want = (torch.from_numpy(rgb).double() / 255 * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)).sum(-1)
    torch.testing.assert_close(luma[:, 0].double(), want * 2 - 1, rtol=0, atol=1e-6)


def test_npz_float_rgba_and_resize(tmp_path):
    rng = np.random.default_rng(1)
    rgba = rng.random((3, 8, 8, 4), dtype=np.float32)
    rgba[..., 3] = 0.0  # alpha is dropped, not composited
    np.savez(tmp_path / "rgba.npz", images=rgba)
    x = load_images(tmp_path / "rgba.npz", 8)
    torch.testing.assert_close(x, torch.from_numpy(rgba[..., :3]).permute(0, 3, 1, 2) * 2 - 1)
    # Shrinking averages (antialias): stripes 1, 0, 0, 0 shrunk 4x become their mean 0.25
    # (plain bilinear would sample between two zero columns and give 0).
    stripes = np.tile((np.arange(16) % 4 == 0).astype(np.float64), (1, 16, 1))  # (1, 16, 16), float64
    np.savez(tmp_path / "stripes.npz", stripes)
    small = load_images(tmp_path / "stripes.npz", 4)
    assert small.shape == (1, 3, 4, 4)
    interior = small[..., 1:3]  # the filter is truncated at the borders
    torch.testing.assert_close(interior, torch.full_like(interior, 0.25 * 2 - 1), rtol=0, atol=1e-6)
    # Growing a constant image keeps it constant and in range.
    np.save(tmp_path / "const.npy", np.full((2, 3, 5, 1), 51, dtype=np.uint8))
    big = load_images(tmp_path / "const.npy", 9)
    assert big.shape == (2, 3, 9, 9)
    torch.testing.assert_close(big, torch.full_like(big, 51 / 255 * 2 - 1))


def test_center_crop_keeps_the_middle_square(tmp_path):
    wide = np.zeros((1, 4, 8), dtype=np.uint8)
    wide[:, :, 2:6] = 255  # the middle 4x4 square is white, the sides black
    np.save(tmp_path / "wide.npy", wide)
    cropped = load_images(tmp_path / "wide.npy", 4, center_crop=True)
    torch.testing.assert_close(cropped, torch.ones_like(cropped))
    stretched = load_images(tmp_path / "wide.npy", 4)
    assert stretched[..., 0].max() < 0 < stretched[..., 1:3].min()  # the black sides squeezed in


def test_array_errors_name_the_file(tmp_path):
    cases = {
        "range.npy": (np.full((2, 4, 4), 2.0, dtype=np.float32), r"values in \[0, 1\], got \[2, 2\]"),
        "signed.npy": (np.full((2, 4, 4), -0.5, dtype=np.float32), r"looks like \[-1, 1\] data"),
        "dtype.npy": (np.zeros((2, 4, 4), dtype=np.int32), "dtype int32: expected uint8"),
        "nchw.npy": (np.zeros((2, 3, 8, 8), dtype=np.uint8), "looks channels-first"),
        "rank.npy": (np.zeros((4, 4), dtype=np.uint8), r"shape \(N, H, W\) or \(N, H, W, C\)"),
        "nan.npy": (np.full((1, 4, 4), np.nan, dtype=np.float32), "NaN"),
        "empty.npy": (np.zeros((0, 4, 4), dtype=np.uint8), "holds no images"),
    }
    for name, (arr, message) in cases.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(ValueError, match=message) as info:
            load_images(tmp_path / name, 4)
        assert name in str(info.value)
    np.savez(tmp_path / "two.npz", a=np.zeros((1, 4, 4), np.uint8), b=np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"two.npz.*holds 2 arrays \(a, b\); pass key="):
        load_images(tmp_path / "two.npz", 4)
    assert load_images(tmp_path / "two.npz", 4, key="b").shape == (1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"two.npz.*no array 'c'"):
        load_images(tmp_path / "two.npz", 4, key="c")
    (tmp_path / "junk.npy").write_bytes(b"definitely not numpy")
    with pytest.raises(ValueError, match="junk.npy"):
        load_images(tmp_path / "junk.npy", 4)


def test_path_and_argument_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_images(missing, 8)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"empty' holds no PNG/JPG/JPEG files$"):
        load_images(tmp_path / "empty", 8)
    (tmp_path / "table.csv").write_text("1,2")
    with pytest.raises(ValueError, match=r"table.csv.*expected a folder, a PNG/JPEG file or a .npy/.npz array"):
        load_images(tmp_path / "table.csv", 8)
    with pytest.raises(ValueError, match="size must be an int >= 1"):
        load_images(tmp_path, 0)
    with pytest.raises(ValueError, match="channels must be 1"):
        load_images(tmp_path, 8, channels=4)


# --------------------------------------------------------------------------------------
# Images from files (Pillow)
# --------------------------------------------------------------------------------------


def write_png(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path)


@needs_pil
def test_png_folder_loads_sorted_with_the_right_values(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 10, 10, 3), dtype=np.uint8)
    for i, name in enumerate(["b.png", "a.PNG", "c.png"]):
        write_png(tmp_path / name, images[i])
    (tmp_path / "readme.txt").write_text("skipped")
    (tmp_path / ".hidden.png").write_bytes(b"skipped, not even a PNG")
    x = load_images(tmp_path, 10)
    assert x.shape == (3, 3, 10, 10) and x.dtype == torch.float32
    order = [1, 0, 2]  # a.PNG, b.png, c.png
    want = torch.from_numpy(images[order]).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    torch.testing.assert_close(x, want)
    small = load_images(tmp_path, 5)
    assert small.shape == (3, 3, 5, 5) and small.min() >= -1 and small.max() <= 1
    torch.testing.assert_close(small.mean((2, 3)), want.mean((2, 3)), rtol=0, atol=0.02)
    single = load_images(tmp_path / "c.png", 10)
    torch.testing.assert_close(single, want[2:])


@needs_pil
def test_png_modes_gray_rgba_palette_and_16_bit(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    write_png(tmp_path / "0_gray.png", gray)
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # transparent red: alpha dropped
    write_png(tmp_path / "1_rgba.png", rgba)
    Image.fromarray(np.full((8, 8, 3), (0, 0, 255), np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        tmp_path / "2_palette.png"
    )
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "3_gray16.png")
    x = load_images(tmp_path, 8)
    g = torch.from_numpy(gray).float() / 255 * 2 - 1
    torch.testing.assert_close(x[0], g.expand(3, 8, 8))
    torch.testing.assert_close(x[1, 0], torch.full((8, 8), 200 / 255 * 2 - 1))
    torch.testing.assert_close(x[1, 1:], -torch.ones(2, 8, 8))
    torch.testing.assert_close(x[2], torch.tensor([-1.0, -1.0, 1.0]).view(3, 1, 1).expand(3, 8, 8))
    torch.testing.assert_close(x[3], g.expand(3, 8, 8))
    luma = load_images(tmp_path, 8, channels=1)
    assert luma.shape == (4, 1, 8, 8)
    torch.testing.assert_close(luma[1, 0], torch.full((8, 8), round(200 * 0.299) / 255 * 2 - 1))


@needs_pil
def test_jpeg_and_recursive_folders(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    colour = np.zeros((16, 16, 3), dtype=np.uint8)
    colour[..., 1] = 180
    Image.fromarray(colour).save(tmp_path / "sub" / "x.jpg", quality=95)
    Image.fromarray(colour).save(tmp_path / "sub" / "deeper" / "y.JPEG", quality=95)
    with pytest.raises(ValueError, match="its subfolders have some: pass recursive=True"):
        load_images(tmp_path, 8)
    x = load_images(tmp_path, 8, recursive=True)
    assert x.shape == (2, 3, 8, 8)
    want = torch.tensor([-1.0, 180 / 255 * 2 - 1, -1.0]).view(1, 3, 1, 1).expand_as(x)
    torch.testing.assert_close(x, want, rtol=0, atol=0.05)  # JPEG is lossy


@needs_pil
def test_many_files_and_mixed_sizes_go_through_the_thread_pool(tmp_path):
    for i in range(40):
        side = 6 + i % 5
        write_png(tmp_path / f"{i:03d}.png", np.full((side, side + 1, 3), i * 5, dtype=np.uint8))
    x = load_images(tmp_path, 4, workers=4)
    assert x.shape == (40, 3, 4, 4)
    torch.testing.assert_close(x[:, 0, 0, 0], torch.arange(40) * 5 / 255 * 2 - 1)
    torch.testing.assert_close(load_images(tmp_path, 4, workers=1), x)


@needs_pil
def test_corrupt_and_truncated_files_are_named(tmp_path):
    write_png(tmp_path / "good.png", np.zeros((8, 8, 3), dtype=np.uint8))
    (tmp_path / "zz_bad.png").write_bytes(b"this is not a PNG file")
    with pytest.raises(ValueError, match=r"cannot read image file .*zz_bad\.png"):
        load_images(tmp_path, 8)
    (tmp_path / "zz_bad.png").unlink()
    big = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    write_png(tmp_path / "full.png", big)
    payload = (tmp_path / "full.png").read_bytes()
    (tmp_path / "half.png").write_bytes(payload[: len(payload) // 2])
    with pytest.raises(ValueError, match=r"half\.png"):
        load_images(tmp_path, 8)
    with pytest.raises(ValueError, match=r"half\.png"):
        load_images(tmp_path / "half.png", 8)


def test_missing_pillow_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(b"whatever")
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="needs Pillow.*pip install pillow"):
        load_images(tmp_path, 8)


# --------------------------------------------------------------------------------------
# ImageDataset
# --------------------------------------------------------------------------------------


def test_image_dataset_samples_rows_on_its_device(tmp_path):
    images = torch.linspace(-1, 1, 7).view(7, 1, 1, 1).expand(7, 3, 4, 4).contiguous()
    ds = ImageDataset(images)
    assert len(ds) == 7 and ds.shape == (3, 4, 4) and ds.device.type == "cpu"
    batch = ds.sample(500, generator=gen(0))
    assert batch.shape == (500, 3, 4, 4)
    values = batch[:, 0, 0, 0]
    assert torch.isin(values, images[:, 0, 0, 0]).all()
    assert len(values.unique()) == 7  # every image is drawn (P(miss) ~ 7·(6/7)^500)
    torch.testing.assert_close(ds.sample(20, generator=gen(5)), ds.sample(20, generator=gen(5)), rtol=0, atol=0)
    np.save(tmp_path / "a.npy", np.zeros((3, 8, 8), dtype=np.uint8))
    from_path = ImageDataset.from_path(tmp_path / "a.npy", 4, channels=1)
    assert len(from_path) == 3 and from_path.shape == (1, 4, 4)
    with pytest.raises(ValueError, match=r"images must have shape \(N, C, H, W\)"):
        ImageDataset(torch.zeros(3, 4, 4))
    with pytest.raises(TypeError, match="floating"):
        ImageDataset(torch.zeros(3, 1, 4, 4, dtype=torch.uint8))


# --------------------------------------------------------------------------------------
# The shapes set
# --------------------------------------------------------------------------------------


def test_shapes_definitions():
    assert SHAPE_NAMES == ("circle", "square", "triangle", "plus")
    assert len(COLOUR_NAMES) == 6 and NUM_SHAPE_MODES == 24
    assert PALETTE.shape == (6, 3) and set(PALETTE.unique().tolist()) == {0.0, 1.0}
    assert (PALETTE.amax(1) == 1).all() and len({tuple(c) for c in PALETTE.tolist()}) == 6
    names = shape_mode_names()
    assert len(names) == 24 and names[0] == "red circle" and names[6 * 2 + 4] == "blue triangle"


def test_render_shapes_colours_areas_and_centres():
    n = 24
    shape = torch.arange(n) // 6
    colour = torch.arange(n) % 6
    centre = torch.full((n, 2), 16.0)
    centre[:, 0] += 1.5  # off the pixel grid
    scale = torch.full((n,), 7.0)
    x = render_shapes(shape, colour, centre, scale)
    assert x.shape == (n, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    corners = x[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == -1).all()  # a black background
    inside = x[:, :, 16, 17]  # the centre pixel is fully covered: exactly the palette colour
    torch.testing.assert_close(inside, PALETTE[colour] * 2 - 1, rtol=0, atol=0)
    coverage = ((x + 1) / 2).amax(1).sum((1, 2))  # the rendered area, in pixels
    area = torch.tensor(data.shapes._AREA)[shape] * 49
    torch.testing.assert_close(coverage, area.float(), rtol=0.01, atol=0)
    # The coverage centroid is the centre (the triangle's centre is its centroid).
    cov = ((x + 1) / 2).amax(1)
    grid = torch.arange(32) + 0.5
    cx = (cov.sum(1) * grid).sum(1) / cov.sum((1, 2))
    cy = (cov.sum(2) * grid).sum(1) / cov.sum((1, 2))
    torch.testing.assert_close(cx, centre[:, 0], rtol=0, atol=0.05)
    torch.testing.assert_close(cy, centre[:, 1], rtol=0, atol=0.05)
    with pytest.raises(ValueError, match=r"centre must have shape \(24, 2\)"):
        render_shapes(shape, colour, centre[:, :1], scale)
    with pytest.raises(TypeError, match="shape must be an integer tensor"):
        render_shapes(shape.float(), colour, centre, scale)


def test_shapes_sampling_is_reproducible_and_uniform():
    ds = ShapesDataset()
    a, ma = ds.sample_with_modes(600, generator=gen(11))
    b, mb = ds.sample_with_modes(600, generator=gen(11))
    assert torch.equal(a, b) and torch.equal(ma, mb)
    assert a.shape == (600, 3, 32, 32) and a.dtype == torch.float32 and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(ds.sample(8, generator=gen(12)), a[:8])
    counts = torch.bincount(ma, minlength=24).double()
    chi2 = ((counts - 25) ** 2 / 25).sum().item()
    assert chi2 < 23 + 5 * math.sqrt(46)
    sub = ShapesDataset(modes=[3, 17])
    assert set(sub.sample_with_modes(200, generator=gen(0))[1].unique().tolist()) == {3, 17}
    assert ShapesDataset(size=48).sample(2).shape == (2, 3, 48, 48)
    with pytest.raises(ValueError, match=r"mode indices in \[0, 24\)"):
        ShapesDataset(modes=[24])
    with pytest.raises(ValueError, match="size must be >= 24"):
        ShapesDataset(size=16)


@pytest.mark.parametrize("size,n", [(32, 4000), (24, 1000), (64, 500)])
def test_detector_recovers_every_true_sample(size, n):
    images, modes = ShapesDataset(size).sample_with_modes(n, generator=gen(size))
    found = classify_shapes(images)
    assert found.mode.dtype == torch.int64 and found.quality.dtype == torch.bool
    wrong = (found.mode != modes).nonzero().flatten().tolist()
    first = wrong[:10]
    assert not wrong, f"misclassified true samples {first}: {modes[first].tolist()} -> {found.mode[first].tolist()}"
    assert found.quality.all(), f"{(~found.quality).sum().item()} true samples flagged low-quality"


def test_detector_tolerates_faint_noise():
    images, modes = ShapesDataset().sample_with_modes(500, generator=gen(1))
    noisy = (images + 0.05 * torch.randn(images.shape, generator=gen(2))).clamp(-1, 1)
    found = classify_shapes(noisy)
    assert torch.equal(found.mode, modes) and found.quality.all()


def test_detector_flags_what_is_not_a_clean_shape():
    n = 200
    g = gen(5)
    blank = -torch.ones(n, 3, 32, 32)
    gray = torch.zeros(n, 3, 32, 32)
    noise = torch.rand((n, 3, 32, 32), generator=g) * 2 - 1
    white = torch.ones(n, 3, 32, 32)
    nan = torch.full((n, 3, 32, 32), float("nan"))
    for name, images in [("blank", blank), ("gray", gray), ("noise", noise), ("white", white), ("nan", nan)]:
        assert not classify_shapes(images).quality.any(), name
    scale = torch.rand((n,), generator=g) * 3 + 5
    centre = 16 + torch.rand((n, 2), generator=g) * 6 - 3
    colour = torch.randint(6, (n,), generator=g)
    circles = render_shapes(torch.zeros(n, dtype=torch.long), colour, centre, scale)
    squares = render_shapes(torch.ones(n, dtype=torch.long), colour, centre, scale * math.sqrt(math.pi) / 1.8)
    assert classify_shapes(circles).quality.all() and classify_shapes(squares).quality.all()
    assert not classify_shapes(0.5 * (circles + squares)).quality.any()  # ambiguous blend
    orange = circles.clone()
    red = colour == 0
    orange[:, 1] = 0.6 * (orange[:, 0] + 1) - 1  # red (1, 0, 0) becomes orange (1, 0.6, 0)
    assert not classify_shapes(orange[red]).quality.any()
    two = circles.clone()  # a second, differently coloured shape in a corner
    two[:, :, :5, :5] = (PALETTE[(colour + 1) % 6] * 2 - 1).view(n, 3, 1, 1)
    assert not classify_shapes(two).quality.any()
    tiny = render_shapes(torch.zeros(n, dtype=torch.long), colour, centre, scale * 0.5)
    assert not classify_shapes(tiny).quality.any()  # a clean circle, but off the size range
    assert classify_shapes(torch.zeros(0, 3, 32, 32)).mode.shape == (0,)
    with pytest.raises(ValueError, match=r"images must have shape \(N, 3, S, S\)"):
        classify_shapes(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="at least 24x24"):
        classify_shapes(torch.zeros(2, 3, 16, 16))
