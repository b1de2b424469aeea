"""fastgan.fuse on models written the way people write them: the PyTorch examples' DCGAN
(nn.Sequential, weights_init by class name) and one with BatchNorm attributes and functional
activations in forward(); fused before and after initialisation, checked against the unfused
model (forward, one training step, state_dict both ways), and the report of what was not
fused."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan.nn import BatchNorm1dLeakyReLU, BatchNorm2dLeakyReLU, SyncBatchNormLeakyReLU

NZ, WIDTH, CHANNELS = 8, 4, 3


# --------------------------------------------------------------------------------------
# The PyTorch examples' DCGAN (examples/dcgan/main.py), at a small width
# --------------------------------------------------------------------------------------


def weights_init(m):
    """The examples' initialisation, by class name."""
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


class ExamplesGenerator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(NZ, WIDTH * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(WIDTH * 8), nn.ReLU(True),
            nn.ConvTranspose2d(WIDTH * 8, WIDTH * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(WIDTH * 4), nn.ReLU(True),
            nn.ConvTranspose2d(WIDTH * 4, WIDTH * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(WIDTH * 2), nn.ReLU(True),
            nn.ConvTranspose2d(WIDTH * 2, WIDTH, 4, 2, 1, bias=False), nn.BatchNorm2d(WIDTH), nn.ReLU(True),
            nn.ConvTranspose2d(WIDTH, CHANNELS, 4, 2, 1, bias=False), nn.Tanh(),
        )

    def forward(self, input):
        return self.main(input)


class ExamplesDiscriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(CHANNELS, WIDTH, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(WIDTH, WIDTH * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(WIDTH * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(WIDTH * 2, WIDTH * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(WIDTH * 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(WIDTH * 4, WIDTH * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(WIDTH * 8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(WIDTH * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid(),
        )

    def forward(self, input):
        return self.main(input).view(-1, 1).squeeze(1)


# --------------------------------------------------------------------------------------
# The same networks written with attributes and functional activations
# --------------------------------------------------------------------------------------


class UpBlock(nn.Module):
    """A nested block with its own forward (fused on its own, so it stays right when called alone)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.norm(self.conv(x)))


class FunctionalGenerator(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(NZ, WIDTH * 8 * 16, bias=False)
        self.bn0 = nn.BatchNorm1d(WIDTH * 8 * 16)
        self.up1 = UpBlock(WIDTH * 8, WIDTH * 4)
        self.conv2 = nn.ConvTranspose2d(WIDTH * 4, WIDTH * 2, 4, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(WIDTH * 2)
        self.conv3 = nn.ConvTranspose2d(WIDTH * 2, WIDTH, 4, 2, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(WIDTH)
        self.act3 = nn.ReLU(inplace=True)
        self.out = nn.ConvTranspose2d(WIDTH, CHANNELS, 4, 2, 1, bias=False)
        self.latent_dim = NZ

    def forward(self, z):
        h = F.relu(self.bn0(self.fc(z.flatten(1))), inplace=True)
        h = self.up1(h.view(-1, WIDTH * 8, 4, 4))
        h = self.bn2(self.conv2(h)).relu_()
        h = self.act3(self.bn3(self.conv3(h)))
        return torch.tanh(self.out(h))


class FunctionalDiscriminator(nn.Module):
    def __init__(self, slope=0.2):
        super().__init__()
        self.slope = slope
        self.conv1 = nn.Conv2d(CHANNELS, WIDTH, 4, 2, 1, bias=False)
        self.conv2 = nn.Conv2d(WIDTH, WIDTH * 2, 4, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(WIDTH * 2)
        self.conv3 = nn.Conv2d(WIDTH * 2, WIDTH * 4, 4, 2, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(WIDTH * 4)
        self.conv4 = nn.Conv2d(WIDTH * 4, WIDTH * 8, 4, 2, 1, bias=False)
        self.bn4 = nn.BatchNorm2d(WIDTH * 8)
        self.head = nn.Linear(WIDTH * 8 * 16, 1)

    def forward(self, x):
        h = F.leaky_relu(self.conv1(x), 0.2)
        h = F.leaky_relu(self.bn2(self.conv2(h)), self.slope, inplace=True)
        h = F.leaky_relu_(self.bn3(self.conv3(h)), 0.1)
        h = F.leaky_relu(self.bn4(self.conv4(h)), negative_slope=0.3)
        return self.head(h.flatten(1)).squeeze(1)


MODELS = {
    "examples": (ExamplesGenerator, ExamplesDiscriminator, 4, 3),
    "functional": (FunctionalGenerator, FunctionalDiscriminator, 4, 3),
}


def fused_blocks(model):
    return [m for m in model.modules() if isinstance(m, (BatchNorm1dLeakyReLU, BatchNorm2dLeakyReLU))]


def build_pair(kind, init_before_fuse, backend=None):
    """(plain, fused) generator and discriminator, equal in every tensor, each initialised by
    weights_init before or after fusing (the same random draws in the same module order)."""
    make_g, make_d, _, _ = MODELS[kind]
    pairs = []
    for make in (make_g, make_d):
        plain = make()
        uninitialised = copy.deepcopy(plain)
        torch.manual_seed(1234)
        plain.apply(weights_init)
        fused = fastgan.fuse(copy.deepcopy(plain) if init_before_fuse else uninitialised, backend=backend)
        if not init_before_fuse:
            torch.manual_seed(1234)
            fused.apply(weights_init)
        pairs.append((plain, fused))
    return pairs


@pytest.mark.parametrize("init_before_fuse", [True, False], ids=["init-then-fuse", "fuse-then-init"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_dcgan_fused_matches_unfused(kind, init_before_fuse):
    (plain_g, fused_g), (plain_d, fused_d) = build_pair(kind, init_before_fuse)
    _, _, g_blocks, d_blocks = MODELS[kind]
    assert len(fused_blocks(fused_g)) == g_blocks and len(fused_blocks(fused_d)) == d_blocks
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in (*fused_g.modules(), *fused_d.modules()))
    for plain, fused in ((plain_g, fused_g), (plain_d, fused_d)):
        assert type(fused) is type(plain)
        assert fused.state_dict().keys() == plain.state_dict().keys()
        # weights_init reached the fused blocks: N(1, 0.02) weights, zero biases, as the plain ones
        for (name, value), (_, want) in zip(fused.state_dict().items(), plain.state_dict().items()):
            assert torch.equal(value, want), name
        for block in fused_blocks(fused):
            assert (block.weight != 1).all() and (block.weight - 1).abs().max() < 0.2 and (block.bias == 0).all()

    # One training step of the examples' loop (BCE on D(real), D(G(z))), both models, and the
    # unfused models in float64 as the yardstick for the gradients.
    real = torch.rand(6, CHANNELS, 64, 64) * 2 - 1
    z = torch.randn(6, NZ, 1, 1)
    models = {"float64": (copy.deepcopy(plain_g).double(), copy.deepcopy(plain_d).double()),
              "plain": (plain_g, plain_d), "fused": (fused_g, fused_d)}
    outputs, grads = {}, {}
    for label, (g, d) in models.items():
        dtype = torch.float64 if label == "float64" else torch.float32
        fake = g(z.to(dtype))
        logits_real, logits_fake = d(real.to(dtype)), d(fake)
        outputs[label] = (fake, logits_real, logits_fake)
        on_real, on_fake = (logits_real, logits_fake) if kind == "examples" else (logits_real.sigmoid(),
                                                                                 logits_fake.sigmoid())
        loss = (F.binary_cross_entropy(on_real, torch.ones(6, dtype=dtype))
                + F.binary_cross_entropy(on_fake, torch.zeros(6, dtype=dtype)))
        grads[label] = torch.autograd.grad(loss, [*g.parameters(), *d.parameters()])
        with torch.no_grad():
            for parameter, grad in zip([*g.parameters(), *d.parameters()], grads[label]):
                parameter -= 0.1 * grad
    for got, want in zip(outputs["fused"], outputs["plain"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # The gradients, all parameters together, are no further from float64 than the unfused
    # model's float32 ones (twice their error): two float32 computations of a 15-layer gradient
    # differ by rounding, a few float32 ulps of each parameter's gradient either way, so neither
    # a fixed tolerance between them nor one parameter at a time measures accuracy.
    def error(label):
        return math.sqrt(sum((g.double() - exact).norm().item() ** 2 for g, exact in zip(grads[label], grads["float64"])))

    assert error("fused") <= 2 * error("plain"), (error("fused"), error("plain"))
    # After the step: the same parameters and running statistics, and the same eval forward.
    for plain, fused in ((plain_g, fused_g), (plain_d, fused_d)):
        for (name, value), (_, want) in zip(fused.state_dict().items(), plain.state_dict().items()):
            torch.testing.assert_close(value, want, rtol=1e-5, atol=1e-6, msg=name)
        plain.eval(), fused.eval()
    torch.testing.assert_close(fused_d(fused_g(z)), plain_d(plain_g(z)), rtol=1e-5, atol=1e-6)

    # state_dict round trip both ways, onto fresh models of the other kind.
    make_g, make_d, _, _ = MODELS[kind]
    for make, plain, fused in ((make_g, plain_g, fused_g), (make_d, plain_d, fused_d)):
        fresh_plain, fresh_fused = make().eval(), fastgan.fuse(make()).eval()
        fresh_plain.load_state_dict(fused.state_dict())
        fresh_fused.load_state_dict(plain.state_dict())
        probe = z if make is make_g else real
        torch.testing.assert_close(fresh_plain(probe), plain(probe), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fresh_fused(probe), plain(probe), rtol=1e-5, atol=1e-6)


def test_fused_blocks_are_the_batchnorms_they_replace():
    (_, fused_g), (_, fused_d) = build_pair("functional", True)
    block1d, block2d = fused_g.bn0, fused_d.bn2
    assert isinstance(block1d, nn.BatchNorm1d) and "BatchNorm1d" in type(block1d).__name__
    assert isinstance(block2d, nn.BatchNorm2d) and "BatchNorm2d" in type(block2d).__name__
    assert type(block2d).__name__.find("BatchNorm") != -1
    # The synchronised block is a _BatchNorm named like one, but no nn.SyncBatchNorm, which
    # DistributedDataParallel refuses on the CPU (test_distributed trains it there).
    synced = SyncBatchNormLeakyReLU(3)
    assert isinstance(synced, nn.modules.batchnorm._BatchNorm) and "SyncBatchNorm" in type(synced).__name__
    # weight-decay exclusion and freezing written against torch.nn's classes see the same sets
    plain_d = FunctionalDiscriminator()
    for model in (plain_d, fused_d):
        model.no_decay = sorted(name for module_name, m in model.named_modules()
                                if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))
                                for name, _ in m.named_parameters(prefix=module_name))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
                m.requires_grad_(False)
    assert plain_d.no_decay == fused_d.no_decay == ["bn2.bias", "bn2.weight", "bn3.bias", "bn3.weight", "bn4.bias",
                                                    "bn4.weight"]
    frozen = [name for name, p in fused_d.named_parameters() if not p.requires_grad]
    assert frozen == [name for name, p in plain_d.named_parameters() if not p.requires_grad]
    assert not fused_d.bn3.training


def test_fuse_returns_module_and_report():
    model = FunctionalDiscriminator()
    assert fastgan.fuse(model) is model
    model, report = fastgan.fuse(FunctionalDiscriminator(), report=True)
    assert isinstance(model, FunctionalDiscriminator) and isinstance(report, fastgan.FuseReport)
    assert [(p.path, p.fused) for p in report.fused] == [(f"bn{i}", "BatchNorm2dLeakyReLU") for i in (2, 3, 4)]
    assert [model.bn2.negative_slope, model.bn3.negative_slope, model.bn4.negative_slope] == [0.2, 0.1, 0.3]
    assert report.rewritten == ("",) and report.not_fused == ()
    assert "forward() regenerated through torch.fx" in str(report)
    generator, report = fastgan.fuse(FunctionalGenerator(), report=True)
    assert sorted(p.path for p in report.fused) == ["bn0", "bn2", "bn3", "up1.norm"]
    assert set(report.rewritten) == {"", "up1"}
    assert type(generator.bn0) is BatchNorm1dLeakyReLU and generator.bn0.negative_slope == 0.0
    with pytest.raises(TypeError, match="report must be a bool"):
        fastgan.fuse(model, report="yes")


def test_nested_block_called_alone_stays_right():
    block = UpBlock(4, 3)
    model = nn.Module()
    model.block = block
    plain = copy.deepcopy(block)
    fastgan.fuse(model)
    assert isinstance(block.norm, BatchNorm2dLeakyReLU)
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(block(x), plain(x))


def test_copies_keep_the_fused_forward():
    model = fastgan.fuse(FunctionalDiscriminator())
    twin = copy.deepcopy(model)
    assert twin.forward.__self__ is twin
    x = torch.randn(3, CHANNELS, 64, 64)
    torch.testing.assert_close(twin(x), model(x))
    with torch.no_grad():
        twin.head.bias.add_(1.0)  # the copy's own parameters
    torch.testing.assert_close(twin(x), model(x) + 1.0)


# --------------------------------------------------------------------------------------
# What is not fused, and why
# --------------------------------------------------------------------------------------


def not_fused(model, **kwargs):
    fused, report = fastgan.fuse(model, report=True, **kwargs)
    return fused, {n.path: n.reason for n in report.not_fused}, report


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        h = self.bn(x)
        return F.relu(h) + h


class Gelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return F.gelu(self.bn(x))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.seq = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.ReLU())

    def forward(self, x):
        if x.sum() > 0:  # torch.fx cannot trace this
            x = -x
        return self.seq(F.relu(self.bn(x)))


class TrainingBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        h = F.relu(self.bn(x))
        return h * 2 if self.training else h


class OptionalArgument(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x, shift=None):
        h = F.relu(self.bn(x))
        return h if shift is None else h + shift


class ComputedSlope(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return F.leaky_relu(self.bn(x), x.std().item())


class CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return F.relu(self.bn(x)) + F.relu(self.bn(-x))


class InPlaceThenReused(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.bns = nn.ModuleList([nn.BatchNorm2d(3), nn.BatchNorm2d(3)])
        self.last = nn.BatchNorm2d(3)
        self.act = nn.LeakyReLU(0.3)

    def forward(self, x):
        h = self.bn(x)
        F.leaky_relu_(h, 0.2)  # in place: h is the activation's output from here on
        for norm in self.bns:
            h = F.relu(norm(h)) * 2
        return self.act(self.last(h)) + h.mean()


def test_report_says_what_was_not_fused_and_why():
    dropout = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.Dropout(0.5), nn.LeakyReLU(0.2))
    _, reasons, report = not_fused(dropout)
    assert "followed by Dropout" in reasons["1"] and len(report) == 0
    assert "1: BatchNorm2d(3" in str(report) and "not fused (1)" in str(report)
    _, reasons, _ = not_fused(nn.Sequential(nn.BatchNorm1d(3), nn.GELU()))
    assert "only ReLU and LeakyReLU are fused" in reasons["0"]
    _, reasons, _ = not_fused(Residual())
    assert "used 2 times" in reasons["bn"]
    _, reasons, _ = not_fused(Gelu())
    assert "gelu: only ReLU and LeakyReLU are fused" in reasons["bn"]
    _, reasons, _ = not_fused(TrainingBranch())
    assert "depends on self.training" in reasons["bn"]
    _, reasons, _ = not_fused(OptionalArgument())
    assert "None-default argument(s) shift" in reasons["bn"]
    _, reasons, _ = not_fused(ComputedSlope())
    assert "is computed in forward(), not a constant" in reasons["bn"]
    _, reasons, _ = not_fused(CalledTwice())
    assert "called 2 times" in reasons["bn"]


def test_untraceable_forward_falls_back_to_the_sequential_matcher():
    model = DataDependent()
    plain = copy.deepcopy(model)
    _, reasons, report = not_fused(model)
    assert [p.path for p in report.fused] == ["seq.1"] and report.rewritten == ()
    assert "torch.fx cannot trace its forward()" in reasons["bn"] and set(reasons) == {"bn"}
    assert "forward" not in vars(model)  # left as written
    x = torch.randn(2, 3, 4, 4) + 1
    torch.testing.assert_close(model(x), plain(x))


def test_unfusable_forwards_are_left_exactly_as_written():
    for make in (Residual, Gelu, TrainingBranch, OptionalArgument, ComputedSlope, CalledTwice):
        model = make()
        plain = copy.deepcopy(model)
        fastgan.fuse(model)
        assert "forward" not in vars(model) and type(model.bn) is nn.BatchNorm2d
        x = torch.randn(4, 3, 2, 2)
        torch.testing.assert_close(model(x), plain(x))
        assert set(vars(model)) == set(vars(plain))  # nothing left behind by tracing


def test_in_place_activation_with_later_uses_and_module_lists():
    model = InPlaceThenReused()
    plain = copy.deepcopy(model)
    _, reasons, report = not_fused(model)
    assert sorted(p.path for p in report.fused) == ["bn", "bns.0", "bns.1", "last"] and not reasons
    assert [model.bn.negative_slope, model.bns[0].negative_slope, model.last.negative_slope] == [0.2, 0.0, 0.3]
    x = (torch.randn(4, 3, 5, 5) * 3 + 2).requires_grad_()
    got, want = model(x), plain(x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got.square().sum(), x)[0],
                               torch.autograd.grad(want.square().sum(), x)[0])


def test_sync_fuses_functional_pairs_synchronised():
    model, report = fastgan.fuse(FunctionalDiscriminator(), sync=True, report=True)
    assert {p.fused for p in report.fused} == {"SyncBatchNormLeakyReLU"} and len(report) == 3
    assert type(model.bn3) is SyncBatchNormLeakyReLU and model.bn3.negative_slope == 0.1


class _AttributeBlock(nn.Module):
    """BatchNorm held as an attribute, its activation a functional call in forward()."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return F.leaky_relu(self.bn(self.conv(x)), 0.2)


@pytest.mark.parametrize("model", ["dcgan-d", "dcgan-g", "attribute"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_fused_models_compile_once_for_a_dynamic_batch(model, training):
    """A fused model (Sequential pairs, or a forward regenerated by torch.fx) traces with
    fullgraph on the CPU's default backend, matches the unfused model, and a new batch size does
    not recompile."""
    from torch._dynamo.testing import CompileCounter

    from fastgan import models

    torch.manual_seed(0)
    plain, make_input = {
        "dcgan-d": (lambda: models.DCGANDiscriminator(3, 32, 8), lambda n: torch.randn(n, 3, 32, 32)),
        "dcgan-g": (lambda: models.DCGANGenerator(16, 3, 32, 8), lambda n: torch.randn(n, 16)),
        "attribute": (_AttributeBlock, lambda n: torch.randn(n, 3, 6, 6)),
    }[model]
    unfused = plain().train(training)
    fused = fastgan.fuse(copy.deepcopy(unfused))
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(fused, backend=counter, fullgraph=True, dynamic=True)
    for batch in (4, 5, 7):
        x = make_input(batch)
        torch.testing.assert_close(compiled(x), unfused(x), rtol=1e-4, atol=1e-5)
    assert counter.frame_count == 1
