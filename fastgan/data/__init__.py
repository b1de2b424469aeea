"""Training data sampled on the device: 2-D toy mixtures, image folders and arrays, and an
embedded image set whose mode coverage can be measured exactly.

Every source here has the same sampling call, ``source.sample(n, device=None,
generator=None) -> Tensor``, which draws ``n`` samples uniformly at random (with
replacement) on ``device`` with ``torch.randint``/``torch.randn`` from ``generator`` (a
``torch.Generator``) or the global RNG. There is no data loader and no host
synchronisation: a sample is a couple of kernel launches, so it can be captured in a CUDA
graph once the source's tensors are on the device (call ``sample`` once before capturing).
``device=None`` means the generator's device when one is given, else the device the
source's tensors already live on (toy mixtures: the default device). A sample is
reproducible given the generator's seed on one kind of device (CPU and CUDA generators
draw different streams).

Importing this module touches no GPU.

One module per kind of source: :mod:`fastgan.data.toy` (the 2-D toy mixtures),
:mod:`fastgan.data.images` (image folders, files and arrays) and :mod:`fastgan.data.shapes`
(the embedded ``shapes`` set and its exact detector); their public names are all
imported here, so ``fastgan.data.X`` works for each.
"""

from fastgan.data.toy import TOY_MIXTURES, ToyMixture, toy_mixture
from fastgan.data.images import IMAGE_EXTENSIONS, ImageDataset, load_images
from fastgan.data.shapes import (
    COLOUR_NAMES,
    NUM_SHAPE_MODES,
    PALETTE,
    SHAPE_NAMES,
    ShapesClassification,
    ShapesDataset,
    classify_shapes,
    render_shapes,
    shape_mode_names,
)

__all__ = [
    "COLOUR_NAMES",
    "IMAGE_EXTENSIONS",
    "NUM_SHAPE_MODES",
    "PALETTE",
    "SHAPE_NAMES",
    "TOY_MIXTURES",
    "ImageDataset",
    "ShapesClassification",
    "ShapesDataset",
    "ToyMixture",
    "classify_shapes",
    "load_images",
    "render_shapes",
    "shape_mode_names",
    "toy_mixture",
]
