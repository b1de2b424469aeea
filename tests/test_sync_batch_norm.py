"""Synchronised fused BatchNorm + LeakyReLU (fastgan.nn.SyncBatchNormLeakyReLU, the op's
``process_group``) in 2 gloo processes spawned by each test, against what nn.SyncBatchNorm +
nn.LeakyReLU computes.

The reference: torch 2.13's nn.SyncBatchNorm refuses CPU tensors in training under an
initialised process group ("SyncBatchNorm expected input tensor to be on GPU ..."), so here it
is what SyncBatchNorm is defined to compute: float64 eager ``F.batch_norm`` + ``leaky_relu`` on
the batch concatenated over the processes (every process builds the whole global batch from a
shared seed). Its input gradient is that of the SUM of the per-process losses; its weight and
bias gradients are each process's own loss's (SyncBatchNorm leaves their reduction to data
parallelism); its running variance is the unbiased one of the global count. Where this torch
does run nn.SyncBatchNorm (CUDA tensors), the workers compare against it as well.
"""

import copy
import functools

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from distributed_harness import run_distributed

import fastgan
from fastgan.nn import BatchNormLeakyReLU1d, BatchNormLeakyReLU2d, SyncBatchNormLeakyReLU
from fastgan.ops.batch_norm import batch_norm_leaky_relu

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="this PyTorch build has no torch.distributed")

WORLD = 2
TIMEOUT_S = 90.0

# (per-process batch sizes, channels, spatial tail, memory format, slope, momentum)
CASES = [
    ((3, 5), 3, (4, 5), "contiguous", 0.2, 0.1),
    ((2, 3), 17, (3, 4), "channels_last", 0.0, None),
    ((4, 7), 1, (), "contiguous", 0.2, None),
    ((3, 3), 17, (5,), "contiguous", 0.0, 0.1),
    ((2, 1), 3, (2, 3, 2), "channels_last_3d", 0.2, 0.1),
    ((1, 4), 3, (), "contiguous", 0.0, 0.1),  # one value per channel on process 0
    ((0, 5), 3, (2, 2), "contiguous", 0.2, None),  # an empty batch on process 0
]
STEPS = 3


def _device(backend):
    """CUDA tensors for the cuda backend on a GPU; CPU tensors otherwise (the emulated cuda build)."""
    return torch.device("cuda" if backend == "cuda" and torch.cuda.is_available() else "cpu")


def _layout(x, memory_format):
    formats = {"channels_last": torch.channels_last, "channels_last_3d": torch.channels_last_3d}
    return x.contiguous(memory_format=formats[memory_format]) if memory_format in formats else x


def _global_batch(seed, sizes, channels, tail):
    """Every process's input and upstream gradient (float64, CPU): large, non-zero-mean, with a
    per-channel and a per-process offset, so the merge's cross term matters."""
    generator = torch.Generator().manual_seed(seed)
    view = (1, channels) + (1,) * len(tail)
    offset = torch.linspace(-1, 1, channels, dtype=torch.float64).view(view)
    xs = [torch.randn((n, channels) + tail, generator=generator, dtype=torch.float64) * 8 + 30 * (1 + offset) + 10 * k
          for k, n in enumerate(sizes)]
    upstream = [torch.randn(x.shape, generator=generator, dtype=torch.float64) for x in xs]
    return xs, upstream


def _mine(xs, rank):
    start = sum(x.shape[0] for x in xs[:rank])
    return slice(start, start + xs[rank].shape[0])


def _assert_close(got, want, what, rtol=1e-4, atol=1e-5):
    scale = max(want.abs().max().item(), 1e-3) if want.numel() else 1.0
    torch.testing.assert_close(got.double().cpu(), want, rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")


def _sync_batch_norm_runs(device):
    """Whether this torch runs nn.SyncBatchNorm in training on ``device`` (a collective: every
    process must ask)."""
    try:
        nn.SyncBatchNorm(1).to(device)(torch.randn(4, 1, device=device))
    except ValueError as error:
        if "expected input tensor to be on GPU" in str(error):
            return False
        raise
    return True


class _Collectives:
    """``with _Collectives() as counter``: counts the torch.distributed collectives called
    inside (the outermost only: one API may call another)."""

    NAMES = ("all_gather_single", "all_gather_into_tensor", "all_gather", "all_reduce", "reduce_scatter_tensor",
             "broadcast", "reduce", "all_to_all_single", "gather", "scatter", "barrier")

    def __init__(self):
        self.calls = []
        self._depth = 0
        self._originals = {name: getattr(dist, name) for name in self.NAMES if hasattr(dist, name)}

    def __enter__(self):
        for name, original in self._originals.items():
            setattr(dist, name, self._counted(name, original))
        return self

    def __exit__(self, *exception):
        for name, original in self._originals.items():
            setattr(dist, name, original)

    def _counted(self, name, original):
        @functools.wraps(original)
        def counted(*args, **kwargs):
            if self._depth == 0:
                self.calls.append(name)
            self._depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                self._depth -= 1

        return counted

    def take(self):
        calls, self.calls = self.calls, []
        return calls


# --------------------------------------------------------------------------------------
# Workers (top-level: the harness loads them by name in each process)
# --------------------------------------------------------------------------------------


def _matches_concatenated_batch(rank, world_size, backend, cases):
    device = _device(backend)
    compare_with_sync_batch_norm = _sync_batch_norm_runs(device)
    for index, (sizes, channels, tail, memory_format, slope, momentum) in enumerate(cases):
        what = (f"case {index} (sizes {sizes}, C={channels}, tail {tail}, {memory_format}, slope {slope}, "
                f"momentum {momentum})")
        torch.manual_seed(index)
        module = SyncBatchNormLeakyReLU(channels, momentum=momentum, negative_slope=slope, backend=backend).to(device)
        with torch.no_grad():
            module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-0.5, 0.5)
        weight64, bias64 = (p.detach().double().cpu().requires_grad_() for p in (module.weight, module.bias))
        running_mean64 = torch.zeros(channels, dtype=torch.float64)
        running_var64 = torch.ones(channels, dtype=torch.float64)
        twin = nn.SyncBatchNorm(channels, momentum=momentum).to(device)
        twin.load_state_dict(module.state_dict())
        for step in range(STEPS):
            xs, upstream = _global_batch(1000 * index + step, sizes, channels, tail)
            mine = _mine(xs, rank)
            x = _layout(xs[rank].to(device, torch.float32), memory_format).requires_grad_()
            y = module(x)
            assert y.shape == x.shape, what
            assert all(a == b for a, b, n in zip(y.stride(), x.stride(), x.shape) if n > 1), f"{what}: layout"
            grads = torch.autograd.grad(y, (x, module.weight, module.bias), upstream[rank].to(device, torch.float32))
            # The reference: one BatchNorm over the concatenated batch, the sum of every process's loss.
            x64 = torch.cat(xs).requires_grad_()
            factor = momentum if momentum is not None else 1.0 / (step + 1)
            y64 = F.leaky_relu(
                F.batch_norm(x64, running_mean64, running_var64, weight64, bias64, True, factor, module.eps), slope)
            (grad_x64,) = torch.autograd.grad(y64, x64, torch.cat(upstream), retain_graph=True)
            own_loss = (y64[mine] * upstream[rank]).sum()
            grad_weight64, grad_bias64 = torch.autograd.grad(own_loss, (weight64, bias64))
            _assert_close(y, y64[mine].detach(), f"{what} step {step}: y")
            for got, want, name in zip(grads, (grad_x64[mine], grad_weight64, grad_bias64), ("x", "weight", "bias")):
                _assert_close(got, want, f"{what} step {step}: grad {name}")
            if compare_with_sync_batch_norm:  # nn.SyncBatchNorm itself, where this torch runs it
                x_twin = x.detach().clone().requires_grad_()
                y_twin = F.leaky_relu(twin(x_twin), slope)
                grads_twin = torch.autograd.grad(y_twin, (x_twin, twin.weight, twin.bias),
                                                 upstream[rank].to(device, torch.float32))
                _assert_close(y, y_twin.detach().double().cpu(), f"{what}: y against nn.SyncBatchNorm")
                for got, want in zip(grads, grads_twin):
                    _assert_close(got, want.double().cpu(), f"{what}: gradients against nn.SyncBatchNorm")
        assert module.num_batches_tracked.item() == STEPS, what
        _assert_close(module.running_mean, running_mean64, f"{what}: running_mean", rtol=1e-5)
        _assert_close(module.running_var, running_var64, f"{what}: running_var", rtol=1e-5)
        # Eval normalises with the running statistics, with no collective.
        module.eval()
        xs, upstream = _global_batch(1000 * index + STEPS, sizes, channels, tail)
        x = _layout(xs[rank].to(device, torch.float32), memory_format).requires_grad_()
        with _Collectives() as counter:
            y = module(x)
            (grad_x,) = torch.autograd.grad(y, x, upstream[rank].to(device, torch.float32))
        x64 = xs[rank].clone().requires_grad_()
        y64 = F.leaky_relu(
            F.batch_norm(x64, running_mean64, running_var64, weight64, bias64, False, 0.0, module.eps), slope)
        (grad_x64,) = torch.autograd.grad(y64, x64, upstream[rank])
        _assert_close(y, y64.detach(), f"{what}: eval y")
        _assert_close(grad_x, grad_x64, f"{what}: eval grad x")
        assert counter.take() == [], f"{what}: eval communicated"


def _one_collective_per_pass(rank, world_size, backend):
    device = _device(backend)
    model = nn.Sequential(
        SyncBatchNormLeakyReLU(4, negative_slope=0.2, backend=backend),
        nn.Conv2d(4, 6, 1),
        SyncBatchNormLeakyReLU(6, momentum=None, negative_slope=0.0, backend=backend),
    ).to(device)
    x = torch.randn(2 + rank, 4, 3, 3, device=device, requires_grad=True)
    with _Collectives() as counter:
        y = model(x)
        forward = counter.take()
        y.square().sum().backward()
        backward = counter.take()
        model.eval()
        with torch.no_grad():
            model(x)
        evaluation = counter.take()
    return forward, backward, evaluation


def _double_backward_matches(rank, world_size, backend):
    """An R1-style penalty, Σ over processes of ||∇_x (Σ losses)||², differentiated again: the
    input gradients per process and the parameter gradients summed over processes."""
    device = _device(backend)
    sizes, channels, tail, slope = (3, 2), 3, (2, 3), 0.2
    xs, probes = _global_batch(7, sizes, channels, tail)
    mine = _mine(xs, rank)
    torch.manual_seed(0)
    module = SyncBatchNormLeakyReLU(channels, negative_slope=slope, backend=backend).to(device)
    with torch.no_grad():
        module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-0.5, 0.5)
    x = xs[rank].to(device, torch.float32).requires_grad_()
    (gx,) = torch.autograd.grad((module(x) * probes[rank].to(device, torch.float32)).sum(), x, create_graph=True)
    grads = torch.autograd.grad(gx.square().sum(), (x, module.weight, module.bias))
    parameter_grads = torch.cat([g.detach().double().cpu() for g in grads[1:]])
    dist.all_reduce(parameter_grads)  # what data parallelism does with them (as a sum)

    weight64, bias64 = (p.detach().double().cpu().requires_grad_() for p in (module.weight, module.bias))
    x64 = torch.cat(xs).requires_grad_()
    y64 = F.leaky_relu(F.batch_norm(x64, None, None, weight64, bias64, True, 0.1, module.eps), slope)
    (gx64,) = torch.autograd.grad((y64 * torch.cat(probes)).sum(), x64, create_graph=True)
    grads64 = torch.autograd.grad(gx64.square().sum(), (x64, weight64, bias64))
    _assert_close(gx, gx64[mine].detach(), "first-order grad x")
    _assert_close(grads[0], grads64[0][mine], "second-order grad x")
    _assert_close(parameter_grads, torch.cat(grads64[1:]), "second-order grad weight, bias (summed)")


def _groups_and_errors(rank, world_size, backend):
    device = _device(backend)
    x = torch.randn(3, 2, 4, device=device) * 3 + rank
    # A group of one process: no collective, exactly the unsynchronised block.
    own_groups = [dist.new_group([r]) for r in range(world_size)]
    alone = SyncBatchNormLeakyReLU(2, negative_slope=0.2, process_group=own_groups[rank], backend=backend).to(device)
    plain = BatchNormLeakyReLU1d(2, negative_slope=0.2, backend=backend).to(device)
    with _Collectives() as counter:
        assert torch.equal(alone(x), plain(x))
        # Eval normalises with the running statistics: a process_group changes nothing.
        running = (plain.running_mean, plain.running_var)
        synced_eval = batch_norm_leaky_relu(x, plain.weight, plain.bias, *running, False, 0.1, 1e-5, 0.2,
                                            process_group=dist.group.WORLD, backend=backend)
        assert torch.equal(synced_eval, batch_norm_leaky_relu(x, plain.weight, plain.bias, *running, False, 0.1, 1e-5,
                                                              0.2, backend=backend))
    assert torch.equal(alone.running_var, plain.running_var)
    assert counter.take() == []
    # The op: a process outside the group, a wrong type.
    others = own_groups[1 - rank]  # new_group gives the processes outside a group a placeholder
    with pytest.raises(ValueError, match="process_group does not contain this process"):
        batch_norm_leaky_relu(x, None, None, None, None, True, process_group=others, backend=backend)
    with pytest.raises(TypeError, match="process_group must be a torch.distributed.ProcessGroup"):
        batch_norm_leaky_relu(x, None, None, None, None, True, process_group="world", backend=backend)
    # Synchronised, one value per channel here is fine (the global batch has more), no channels is not.
    y = batch_norm_leaky_relu(x[:1, :, :1], None, None, None, None, True, process_group=dist.group.WORLD,
                              backend=backend)
    assert y.shape == (1, 2, 1)
    with pytest.raises(ValueError, match="x has no channels"):
        batch_norm_leaky_relu(x[:, :0], None, None, None, None, True, process_group=dist.group.WORLD, backend=backend)
    return True


def _error_within_twice_eager_float32(rank, world_size, backend, seed):
    """Per (mean, std, slope): this process's errors against float64 of y, grad x, grad weight
    and grad bias, ours synchronised and eager float32's on the concatenated batch."""
    device = _device(backend)
    results = []
    for mean, std in ((40.0, 3.0), (1e3, 1.0)):
        for slope in (0.0, 0.2):
            generator = torch.Generator().manual_seed(seed)
            channels, sizes = 5, (4, 3)
            # Each process's batch a little off the other's, so their pivots and means differ.
            xs = [(torch.randn((n, channels, 5, 7), generator=generator, dtype=torch.float64) * std + mean
                   + 2 * std * k).float() for k, n in enumerate(sizes)]
            upstream = [torch.randn(x.shape, generator=generator) for x in xs]
            weight, bias = torch.randn(channels, generator=generator) + 1, torch.randn(channels, generator=generator)
            mine = _mine(xs, rank)

            def eager(dtype):
                x, w, b = (t.to(dtype).requires_grad_() for t in (torch.cat(xs), weight, bias))
                y = F.leaky_relu(F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5), slope)
                (grad_x,) = torch.autograd.grad(y, x, torch.cat(upstream).to(dtype), retain_graph=True)
                grad_w, grad_b = torch.autograd.grad((y[mine] * upstream[rank].to(dtype)).sum(), (w, b))
                return y[mine].detach(), grad_x[mine], grad_w, grad_b

            x, w, b = (t.to(device).requires_grad_() for t in (xs[rank], weight, bias))
            y = batch_norm_leaky_relu(x, w, b, None, None, True, 0.1, 1e-5, slope, process_group=dist.group.WORLD,
                                      backend=backend)
            ours = (y.detach(), *torch.autograd.grad(y, (x, w, b), upstream[rank].to(device)))
            exact, theirs = eager(torch.float64), eager(torch.float32)
            for name, got, pytorch, reference in zip(("y", "grad x", "grad weight", "grad bias"), ours, theirs,
                                                     exact):
                error = lambda t: ((t.double().cpu() - reference).norm() / reference.norm()).item()
                results.append((mean, std, slope, name, error(got), error(pytorch)))
    return results


def _mask_uses_the_mean_residual(rank, world_size, backend):
    """This process's errors against float64 of y, grad x, grad weight and grad bias on a
    concatenated batch whose elements sit at its float32-rounded mean (the global residual
    negative: test_batch_norm.at_rounded_mean), split over the processes."""
    from test_batch_norm import at_rounded_mean

    device = _device(backend)
    torch.manual_seed(0)  # the same global batch on every process
    channels, sizes, slope = 3, (2, 3), 0.2
    global_x = at_rounded_mean((sum(sizes), channels, 5, 7), 1e3, 1.0, 3, False, "cpu")
    xs = list(global_x.split(sizes))
    upstream = [torch.randn(x.shape) for x in xs]
    weight, bias = torch.rand(channels) + 0.5, torch.zeros(channels)
    mine = _mine(xs, rank)
    x64, w64, b64 = (t.double().requires_grad_() for t in (global_x, weight, bias))
    y64 = F.leaky_relu(F.batch_norm(x64, None, None, w64, b64, True, 0.1, 1e-5), slope)
    (grad_x64,) = torch.autograd.grad(y64, x64, torch.cat(upstream).double(), retain_graph=True)
    exact = (y64[mine].detach(), grad_x64[mine],
             *torch.autograd.grad((y64[mine] * upstream[rank].double()).sum(), (w64, b64)))
    x, w, b = (t.to(device).requires_grad_() for t in (xs[rank], weight, bias))
    y = batch_norm_leaky_relu(x, w, b, None, None, True, 0.1, 1e-5, slope, process_group=dist.group.WORLD,
                              backend=backend)
    ours = (y.detach(), *torch.autograd.grad(y, (x, w, b), upstream[rank].to(device)))
    return [(name, ((got.double().cpu() - want).norm() / want.norm()).item())
            for name, got, want in zip(("y", "grad x", "grad weight", "grad bias"), ours, exact)]


def _compiled_matches_eager(rank, world_size, backend):
    device = _device(backend)
    torch._dynamo.reset()
    module = SyncBatchNormLeakyReLU(3, momentum=None, negative_slope=0.2, backend=backend).to(device)
    twin = copy.deepcopy(module)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    for step in range(2):
        x = (torch.randn(3 + rank, 3, 5, device=device) * 4 + rank + step).requires_grad_()
        got, want = compiled(x), twin(x)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(torch.autograd.grad(got.square().sum(), x)[0],
                                   torch.autograd.grad(want.square().sum(), x)[0])
    torch.testing.assert_close(module.running_var, twin.running_var)
    assert module.num_batches_tracked.item() == twin.num_batches_tracked.item() == 2
    if backend != "torch":  # the kernel path's registered ops (every process runs the same checks)
        x3 = torch.randn(4, 3, 6, device=device)
        weight, bias = torch.rand(3, device=device) + 0.5, torch.randn(3, device=device)
        running = (torch.zeros(3, device=device), torch.ones(3, device=device), torch.tensor(2, device=device))
        group_name = dist.group.WORLD.group_name
        torch.library.opcheck(torch.ops.fastgan.sync_batch_norm_leaky_relu.default,
                              (x3, weight, bias, *running, 0.1, True, 1e-5, 0.2, backend, group_name),
                              test_utils=("test_schema", "test_faketensor"))
        _, mean, invstd, count = torch.ops.fastgan.sync_batch_norm_leaky_relu(
            x3, weight, bias, None, None, None, 0.1, False, 1e-5, 0.2, backend, group_name)
        torch.library.opcheck(torch.ops.fastgan.sync_batch_norm_leaky_relu_backward.default,
                              (torch.randn_like(x3), x3, weight, bias, mean, invstd, count, 1e-5, 0.2, True, True, True,
                               backend, group_name),
                              test_utils=("test_schema", "test_faketensor"))


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


def test_matches_sync_batch_norm_on_the_concatenated_batch(backend):
    run_distributed(_matches_concatenated_batch, WORLD, backend, CASES, timeout=TIMEOUT_S)


def test_one_collective_per_layer_per_pass(backend):
    for forward, backward, evaluation in run_distributed(_one_collective_per_pass, WORLD, backend, timeout=TIMEOUT_S):
        assert len(forward) == 2 and set(forward) <= {"all_gather_single", "all_gather_into_tensor"}, forward
        assert backward == ["all_reduce", "all_reduce"], backward
        assert evaluation == [], evaluation


def test_double_backward_matches_concatenated_batch(backend):
    run_distributed(_double_backward_matches, WORLD, backend, timeout=TIMEOUT_S)


def test_error_within_twice_eager_float32(backend, _fresh_seed, request):
    """Synchronised, on inputs whose mean dwarfs their spread (and differs between the
    processes): no further off float64 than eager PyTorch's float32 on the concatenated batch
    (at most twice its error)."""
    # Known, not yet fixed; not strict: whether a case loses depends on the inputs.
    reasons = {
        "cuda": "grad x can reach ~2.3x eager's at mean 40/std 3: each device's float32 M2 leaves the merged invstd "
        "up to ~1 ulp off",
    }
    if backend in reasons:
        request.applymarker(pytest.mark.xfail(reason=reasons[backend]))
    for rank_results in run_distributed(_error_within_twice_eager_float32, WORLD, backend, _fresh_seed,
                                        timeout=TIMEOUT_S):
        for mean, std, slope, name, ours, eager in rank_results:
            assert ours <= 2 * eager, (mean, std, slope, name, ours, eager)


def test_backward_mask_uses_the_mean_residual(backend):
    """Synchronised, the backward rebuilds z with the global mean's float32 rounding residual
    (as test_batch_norm.test_backward_mask_uses_the_mean_residual does unsynchronised): elements
    at the rounded mean keep the forward's branch of the activation, so the gradients stay at
    float32 accuracy against float64 (eager float32 itself flips them, so no eager yardstick)."""
    for rank_results in run_distributed(_mask_uses_the_mean_residual, WORLD, backend, timeout=TIMEOUT_S):
        for name, error in rank_results:
            assert error < 1e-5, (name, error)


def test_torch_compile_fullgraph(backend):
    run_distributed(_compiled_matches_eager, WORLD, backend, timeout=TIMEOUT_S)


def test_process_groups_and_errors_under_distributed(backend):
    assert run_distributed(_groups_and_errors, WORLD, backend, timeout=TIMEOUT_S) == [True] * WORLD


# --------------------------------------------------------------------------------------
# Without torch.distributed: the module, conversions, fuse(sync=True)
# --------------------------------------------------------------------------------------


def test_without_distributed_is_the_unsynchronised_block(backend, device):
    assert not dist.is_initialized()
    synced = SyncBatchNormLeakyReLU(5, momentum=None, negative_slope=0.2, backend=backend).to(device)
    plain = BatchNormLeakyReLU2d(5, momentum=None, negative_slope=0.2, backend=backend).to(device)
    for step in range(2):
        x = (torch.randn(3, 5, 4, 4, device=device) * 4 + step).requires_grad_()
        y, y_plain = synced(x), plain(x)
        assert torch.equal(y, y_plain)
        assert torch.equal(torch.autograd.grad(y.sum(), x)[0], torch.autograd.grad(y_plain.sum(), x)[0])
    assert torch.equal(synced.running_var, plain.running_var) and synced.num_batches_tracked.item() == 2
    x5 = torch.randn(2, 5, 2, 3, 2, device=device).to(memory_format=torch.channels_last_3d)
    want = F.leaky_relu(F.batch_norm(x5.double(), None, None, training=True), 0.2)
    torch.testing.assert_close(synced(x5).double(), want, rtol=1e-4, atol=1e-5)


def test_module_matches_sync_batch_norm_interface():
    synced = SyncBatchNormLeakyReLU(4, 1e-3, 0.3, True, True, None, negative_slope=0.2)
    twin = nn.SyncBatchNorm(4, 1e-3, 0.3, True, True, None)
    assert list(synced.state_dict()) == list(twin.state_dict())
    with torch.no_grad():
        twin.weight.uniform_(), twin.running_mean.uniform_()
    twin.num_batches_tracked.fill_(5)
    synced.load_state_dict(twin.state_dict())
    back = nn.BatchNorm2d(4)
    back.load_state_dict(synced.state_dict())
    assert torch.equal(back.weight, twin.weight) and back.num_batches_tracked.item() == 5
    assert synced.eps == 1e-3 and synced.momentum == 0.3 and synced.process_group is None
    assert "negative_slope=0.2" in repr(synced)
    with pytest.raises(ValueError, match="expected at least 2D input"):
        synced(torch.randn(4))
    with pytest.raises(ValueError, match="number of input channels should be non-zero"):
        SyncBatchNormLeakyReLU(0)(torch.randn(2, 0))


def test_process_group_without_distributed_is_an_error():
    x = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="process_group was given but torch.distributed is not initialised"):
        batch_norm_leaky_relu(x, None, None, None, None, True, process_group=object(), backend="torch")


def test_convert_sync_batchnorm_keeps_the_activation():
    model = nn.Sequential(nn.Linear(3, 4), BatchNormLeakyReLU1d(4, negative_slope=0.2), nn.BatchNorm1d(4),
                          nn.Sequential(nn.Conv2d(1, 2, 1), BatchNormLeakyReLU2d(2, momentum=None, negative_slope=0.0)))
    model[1].eval()
    weight = model[1].weight
    converted = SyncBatchNormLeakyReLU.convert_sync_batchnorm(model)
    assert converted is model
    assert type(model[1]) is SyncBatchNormLeakyReLU and model[1].negative_slope == 0.2 and not model[1].training
    assert model[1].weight is weight
    assert type(model[2]) is nn.SyncBatchNorm
    assert type(model[3][1]) is SyncBatchNormLeakyReLU and model[3][1].momentum is None
    block = BatchNormLeakyReLU2d(3, negative_slope=0.1, backend="torch")
    root = SyncBatchNormLeakyReLU.convert_sync_batchnorm(block, process_group=None)
    assert type(root) is SyncBatchNormLeakyReLU and root.backend == "torch" and root.running_mean is block.running_mean


def test_fuse_sync(backend):
    generator = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(),
                              nn.Unflatten(1, (2, 2, 2, 1)), nn.BatchNorm3d(2), nn.LeakyReLU(0.1))
    discriminator = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormLeakyReLU2d(4, negative_slope=0.2),
                                  nn.Conv2d(4, 4, 3), nn.SyncBatchNorm(4), nn.LeakyReLU(0.2))
    plain_g, plain_d = copy.deepcopy(generator), copy.deepcopy(discriminator)
    parameters = list(generator.parameters())
    report_g = fastgan.fuse(generator, backend=backend, sync=True, report=True)[1]
    report_d = fastgan.fuse(discriminator, backend=backend, sync=True, report=True)[1]
    assert [p.path for p in report_g.fused] == ["1", "4"]
    assert {p.fused for p in report_g.fused + report_d.fused} == {"SyncBatchNormLeakyReLU"}
    assert [(p.path, bool(p.activation)) for p in report_d.fused] == [("3", True), ("1", False)]
    assert list(generator.parameters()) == parameters
    assert generator[1].negative_slope == 0.0 and generator[4].negative_slope == 0.1
    assert isinstance(generator[2], nn.Identity) and discriminator[1].negative_slope == 0.2
    text = str(report_d)
    assert "fused 1 BatchNorm + activation pair(s), synchronised 1 fused block(s)" in text
    assert "synchronised across the process group" in text and "SyncBatchNormLeakyReLU" in text
    # Without torch.distributed the synchronised blocks compute what the unfused models do.
    z = torch.randn(5, 4)
    want = F.leaky_relu(plain_g[4](plain_g[3](F.relu(plain_g[1](plain_g[0](z))))), 0.1)
    torch.testing.assert_close(generator(z), want, rtol=1e-4, atol=1e-5)
    images = torch.randn(4, 3, 7, 7)
    want = F.leaky_relu(F.batch_norm(plain_d[2](plain_d[1](plain_d[0](images))), None, None,
                                     plain_d[3].weight, plain_d[3].bias, True), 0.2)
    torch.testing.assert_close(discriminator(images), want, rtol=1e-4, atol=1e-5)
    assert "nothing to fuse" in str(fastgan.fuse(discriminator, sync=True, report=True)[1])
    # Unsynchronised fusing keeps an nn.SyncBatchNorm pair synchronised.
    model = nn.Sequential(nn.SyncBatchNorm(3), nn.ReLU())
    report = fastgan.fuse(model, report=True)[1]
    assert type(model[0]) is SyncBatchNormLeakyReLU and len(report) == 1
    with pytest.raises(ValueError, match="process_group is only used with sync=True"):
        fastgan.fuse(model, process_group=object())
    with pytest.raises(ValueError, match="itself a fused block"):
        fastgan.fuse(BatchNormLeakyReLU2d(3), sync=True)
