"""``fastgan.Trainer``: a thin GAN trainer that is fast (CUDA graphs, no host syncs in the
step) and trustworthy (exact resume, atomic checkpoints, divergence telemetry, NaN stops).

One training step is ``d_steps`` discriminator updates followed by one generator update:

    D step: real ~ data, z ~ N(0, I), fake = G(z) (detached); minimise d_loss(D(real), D(fake)).
    G step: z ~ N(0, I), minimise g_loss(D(G(z))) (D frozen); EMA(G) ← lerp(EMA(G), G, 1 − decay).

Losses come from :mod:`fastgan.losses` by name; both optimisers are Adam (β = (0.5, 0.999)
by default) with the learning rate decayed exponentially to ``lr_decay`` × its start over
the run. Noise and toy/image data are drawn on the device from the trainer's own random
generators, whose states are checkpointed, so a resumed run repeats the uninterrupted one.

On a CUDA device with ``cuda_graphs`` ("auto" or True) the D step and the G step (data
sampling, noise, forward, loss, backward, capturable Adam, EMA update, telemetry) are each
captured once after a warm-up and replayed; if capture fails the trainer says why once and
runs eager. Losses and telemetry are summed on the device and read every ``log_every``
steps; a non-finite loss is recorded on the device with its step and stops training at the
next read, leaving the last good checkpoint in place.

The trainer holds the step; CUDA-graph capture and replay live in :mod:`fastgan.cuda_graphs`,
checkpoint files and the state a resume needs in :mod:`fastgan.checkpoint`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fastgan import checkpoint
from fastgan import losses as loss_library
from fastgan.checkpoint import load_checkpoint, save_checkpoint
from fastgan.cuda_graphs import StepGraphs
from fastgan.distributed import process_info, resumed_stream_seed, stream_seed
from fastgan.fusion import fuse as fuse_models
from fastgan.mlp_gan_step import DerivedBackwardUnavailable, MLPGANStep, adam_step, unsupported_reason
from fastgan.nn import SyncBatchNormLeakyReLU
from fastgan.ops.collectives import gather_batch
from fastgan.relocation import Relocation, forget_optimizer_state, relocate_components, supports_relocation
from fastgan.sampling import truncated_latents

__all__ = ["LogRecord", "Trainer", "TrainingDiverged", "load_checkpoint", "save_checkpoint"]

PRECISIONS = ("fp32", "bf16")
BACKWARDS = ("auto", "autograd", "derived")


class TrainingDiverged(RuntimeError):
    """A loss or a parameter became NaN/Inf; the message names the step."""


@dataclass
class LogRecord:
    """Means over the steps since the previous record (read from the device once)."""

    step: int
    d_loss: float
    g_loss: float
    divergence: float
    d_real: float
    d_fake: float
    saturated_fraction: float
    it_per_s: float
    lr_g: float
    lr_d: float
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        record = asdict(self)
        record.update(record.pop("extra"))
        return record


def _upcast(tensor: Tensor) -> Tensor:
    """float32 for half-precision (autocast) values; float32 and float64 stay as they are."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _check_choice(value, name: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _check_number(value, name: str, low: float, high: float = math.inf, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (low_open and value == low) or value > high:
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{name} must be {bound}" + (f" and <= {high}" if high != math.inf else "") + f", got {value}")
    return float(value)


def _check_integer(value, name: str, low: int) -> int:
    """``value`` as an int of at least ``low`` (0 or 1); else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be a {'positive' if low == 1 else 'non-negative'} integer, got {value!r}")
    return value


class Trainer:
    """Trains ``generator`` against ``discriminator`` with losses chosen by name.

    Args:
        generator: maps z (N, latent_dim) to samples; needs a ``latent_dim`` attribute or
            the ``latent_dim`` argument.
        discriminator: maps samples to logits (N,) (or (N, 1)).
        d_loss, g_loss: names in :func:`fastgan.losses.available` (``g_loss_params``, e.g.
            ``{"alpha": 0.5}``, go to the generator loss).
        lr_g, lr_d, betas: Adam settings (DCGAN's β = (0.5, 0.999) by default).
        lr_decay: the learning rates decay exponentially to ``lr_decay`` × their start value
            at ``total_steps`` (1.0: constant), and hold that value at later steps.
        total_steps: the length of the schedules (the learning-rate decay, the coarse-to-fine
            progress of a Fourier-feature D, the relocation window); :meth:`train` may run
            past it, holding every schedule at its end (``fastgan train --final-hold``).
        d_steps: discriminator updates per generator update.
        r1_gamma, r1_every: the R1 gradient penalty γ/2·E_data[‖∇_x D(x)‖²] (Mescheder et
            al., 2018), applied lazily every ``r1_every`` D steps with weight γ·r1_every
            (StyleGAN2's lazy regularisation); 0 turns it off.
        ema_decay: keep an exponential moving average of G with this decay (None: no EMA).
        relocate_every, relocate_window: every ``relocate_every`` steps (0: never) while the
            step is within ``relocate_window`` (fractions of ``total_steps``), move one mixture
            component (a duplicate first, the one the discriminator rates lowest) to a real
            sample drawn ∝ exp(its rating), when the two ratings differ by at least 2
            (:mod:`fastgan.relocation`; the generator needs a mixture latent), and clear G's
            optimizer state for its rows. The window ends at 70 % so that the last moved
            components have the rest of the run to settle. Moves made by this trainer object are in
            :attr:`relocations` as (step, :class:`~fastgan.relocation.Relocation`).
        precision: ``"fp32"`` or ``"bf16"`` (autocast of the forward passes).
        device, seed: where to train; ``seed`` seeds the trainer's noise and data generators.
        fuse: run :func:`fastgan.fuse` on both models first.
        cuda_graphs: ``"auto"`` (on CUDA devices, single-process), True (CUDA only; an error
            elsewhere) or False.
        backend: pin the fastgan op backend for the losses and fused blocks.
        backward: how a step's gradients are computed. ``"autograd"``; ``"derived"``: the
            backward derived by hand in :mod:`fastgan.mlp_gan_step`, for an MLPGenerator
            against an MLPDiscriminator (no Fourier features) with the ``bce`` and
            ``nonsaturating`` losses, fp32, single-process, without ``fuse`` or CUDA graphs
            (an error otherwise, with the reason); ``"auto"``: ``"derived"`` where it applies on
            the CPU (a toy preset's step in about three quarters of the time), else autograd.
            Which one runs is :attr:`backward`; the two agree to float32 rounding.
        distributed, process_group: data-parallel training over a ``torch.distributed``
            process group (see below). ``"auto"``: when a group is initialised and has more than
            one process; True: always (an error without an initialised group); False: never.

    Data-parallel training (``torchrun``, one process per GPU, see :mod:`fastgan.distributed`):
    G and D are wrapped in ``DistributedDataParallel``, so every update averages the
    gradients of all processes. ``batch_size`` stays the *global* batch: each of the K
    processes draws ``batch_size / K`` real samples (from its shard of an image set, via the
    data's ``shard(rank, K)``) and noise from its own streams, so K processes train exactly
    like one process on the concatenated batch. The D step runs D through its wrapper and G
    bare under ``no_grad``; the G step runs G through its wrapper and D bare with its
    parameters frozen: each wrapper sees one backward per forward-use, every parameter gets
    a gradient, and ``find_unused_parameters`` is not needed. BatchNorm layers are made
    synchronous: fused blocks (and, with ``fuse``, BatchNorm → (Leaky)ReLU pairs) become
    :class:`fastgan.nn.SyncBatchNormLeakyReLU`, other BatchNorms ``nn.SyncBatchNorm`` (which
    PyTorch runs on GPUs only). Logging, telemetry and the NaN check all-reduce
    the device accumulators every ``log_every`` steps (the only collectives outside DDP's);
    Ctrl-C is agreed on at those points too, so every process stops after the same step.
    Call :meth:`save` / :meth:`state_dict` on every process: they gather each process's
    random states; only rank 0 writes. With ``cuda_graphs="auto"`` a distributed run is
    eager (capture of DDP's NCCL all-reduces is not verified); True tries it.
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        *,
        d_loss: str = "bce",
        g_loss: str = "nonsaturating",
        g_loss_params: Optional[dict] = None,
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        lr_decay: float = 1.0,
        total_steps: int = 1,
        d_steps: int = 1,
        r1_gamma: float = 0.0,
        r1_every: int = 4,
        ema_decay: Optional[float] = 0.999,
        relocate_every: int = 0,
        relocate_window: tuple[float, float] = (0.3, 0.7),
        precision: str = "fp32",
        device="cpu",
        seed: int = 0,
        fuse: bool = False,
        cuda_graphs="auto",
        backend: Optional[str] = None,
        latent_dim: Optional[int] = None,
        distributed="auto",
        backward: str = "auto",
        process_group=None,
    ) -> None:
        for model, name in ((generator, "generator"), (discriminator, "discriminator")):
            if not isinstance(model, nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
        _check_choice(precision, "precision", PRECISIONS)
        _check_choice(cuda_graphs, "cuda_graphs", ("auto", True, False))
        _check_choice(distributed, "distributed", ("auto", True, False))
        _check_choice(backward, "backward", BACKWARDS)
        group_ready = dist.is_available() and dist.is_initialized()
        if distributed is True and not group_ready:
            raise ValueError("distributed=True needs an initialised torch.distributed process group (launch with "
                             "torchrun and call torch.distributed.init_process_group or "
                             "fastgan.distributed.init_from_environment first)")
        if process_group is not None and not group_ready:
            raise ValueError("process_group was given but torch.distributed is not initialised")
        info = process_info(process_group)
        self.distributed = group_ready and (distributed is True or (distributed == "auto" and info.world_size > 1))
        self.rank, self.world_size = (info.rank, info.world_size) if self.distributed else (0, 1)
        self.process_group = process_group
        for value, name in ((lr_g, "lr_g"), (lr_d, "lr_d")):
            _check_number(value, name, 0.0, low_open=True)
        _check_number(lr_decay, "lr_decay", 0.0, 1.0, low_open=True)
        if ema_decay is not None:
            _check_number(ema_decay, "ema_decay", 0.0, 1.0)
        _check_number(r1_gamma, "r1_gamma", 0.0)
        _check_integer(r1_every, "r1_every", 1)
        _check_integer(relocate_every, "relocate_every", 0)
        if relocate_every and not supports_relocation(generator):
            raise ValueError("relocate_every needs a generator with a mixture latent (a MixtureLatent `prior` and a "
                             "`decode` method, e.g. MLPGenerator(components=K))")
        if not (isinstance(relocate_window, (tuple, list)) and len(relocate_window) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in relocate_window)
                and 0.0 <= relocate_window[0] < relocate_window[1] <= 1.0):
            raise ValueError(f"relocate_window must be (start, end) fractions of the run with 0 <= start < end <= 1, "
                             f"got {relocate_window!r}")
        _check_integer(d_steps, "d_steps", 1)
        _check_integer(total_steps, "total_steps", 1)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was requested but CUDA is not available")
        if self.distributed and self.device.type == "cuda":
            # One GPU per process: NCCL's collectives (DDP, all_gather_object) use the current one.
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
        if cuda_graphs is True and self.device.type != "cuda":
            raise ValueError("cuda_graphs=True needs a CUDA device; use 'auto' or False on the CPU")
        self.d_loss = loss_library.get(d_loss, role="discriminator", backend=backend)
        self.g_loss = loss_library.get(g_loss, role="generator", backend=backend, **(g_loss_params or {}))
        self.latent_dim = latent_dim if latent_dim is not None else getattr(generator, "latent_dim", None)
        if not isinstance(self.latent_dim, int) or self.latent_dim < 1:
            raise ValueError("latent_dim: pass it, or give the generator a positive int `latent_dim` attribute")
        self.fuse_report = None
        if fuse:
            sync = {"sync": True, "process_group": process_group} if self.distributed else {}
            self.fuse_report = tuple(fuse_models(model, backend=backend, report=True, **sync)[1]
                                     for model in (generator, discriminator))
        if self.distributed:
            # Fused blocks become synchronised fused blocks, plain BatchNorms nn.SyncBatchNorm
            # (torch's own converter would strip the fused blocks' activations).
            generator = SyncBatchNormLeakyReLU.convert_sync_batchnorm(generator, process_group)
            discriminator = SyncBatchNormLeakyReLU.convert_sync_batchnorm(discriminator, process_group)
        self.generator = generator.to(self.device)
        self.discriminator = discriminator.to(self.device)
        # The modules the steps differentiate through: DDP wrappers when distributed (their
        # construction broadcasts rank 0's parameters and buffers, before the EMA copy).
        self._generator_train, self._discriminator_train = self.generator, self.discriminator
        if self.distributed:
            self._generator_train = _data_parallel(self.generator, self.device, process_group)
            self._discriminator_train = _data_parallel(self.discriminator, self.device, process_group)
        self.ema = None
        if ema_decay is not None:
            # Synchronised BatchNorm layers hold the process group, which cannot be copied: share it.
            memo = {id(process_group): process_group} if process_group is not None else {}
            self.ema = copy.deepcopy(self.generator, memo).requires_grad_(False).eval()
        self.ema_decay = ema_decay
        self.relocate_every, self.relocate_window = relocate_every, (float(relocate_window[0]), float(relocate_window[1]))
        self.relocations: list[tuple[int, Relocation]] = []
        # Modules whose behaviour follows the run's progress (a coarse-to-fine discriminator).
        self._progress_modules = [m for model in (self.generator, self.discriminator) for m in model.modules()
                                  if callable(getattr(m, "set_training_progress", None))]
        self.precision = precision
        self.d_steps = d_steps
        self.r1_gamma, self.r1_every = float(r1_gamma), r1_every
        self.total_steps = total_steps
        self.lr_g, self.lr_d, self.lr_decay = float(lr_g), float(lr_d), float(lr_decay)
        self._cuda_graphs = cuda_graphs
        capturable = self._use_graphs()
        # The learning rate is a device tensor when capturing, so replays see its updates.
        lr = (lambda v: torch.tensor(v, device=self.device)) if capturable else float
        # On the CPU the fused Adam (one kernel per step; ~9 % faster toy MLP steps than the
        # foreach one); on CUDA the foreach one, capturable in a graph.
        implementation = {"fused": True} if self.device.type == "cpu" else {"foreach": True}
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr(lr_g), betas=betas, capturable=capturable,
                                      **implementation)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr(lr_d), betas=betas, capturable=capturable,
                                      **implementation)
        self.seed = int(seed)
        self.noise_generator = torch.Generator(self.device).manual_seed(stream_seed(self.seed, self.rank, 0))
        self.data_generator = torch.Generator(self.device).manual_seed(stream_seed(self.seed, self.rank, 1))
        self.step = 0
        # Sums since the last log read: per D update (d_loss, divergence, D(real), D(fake)) and
        # per step (g_loss, saturated fraction).
        self._d_accumulated = torch.zeros(4, device=self.device, dtype=torch.float64)
        self._g_accumulated = torch.zeros(2, device=self.device, dtype=torch.float64)
        self._first_bad_step = torch.full((), -1, device=self.device, dtype=torch.int64)
        self._step_tensor = torch.zeros((), device=self.device, dtype=torch.int64)
        self._step_graphs = StepGraphs()
        self._derived_step = None
        self.backward = self._choose_backward(backward, fuse)
        self._in_step = False
        self._capturing = False
        self.messages: list[str] = []
        if self.distributed and self.device.type == "cuda" and cuda_graphs == "auto":
            self._say("CUDA graphs are off under DistributedDataParallel (pass cuda_graphs=True to try capture)")

    def _choose_backward(self, requested: str, fuse: bool) -> str:
        if requested == "autograd":
            return "autograd"
        reason = unsupported_reason(self.generator, self.discriminator, self.d_loss, self.g_loss)
        if reason is None:
            if self.precision != "fp32":
                reason = f"precision is {self.precision!r}"
            elif self.distributed:
                reason = "the run is distributed"
            elif fuse:
                reason = "fuse=True"
            elif self._use_graphs():
                reason = "the steps are CUDA graphs"
            elif requested == "auto" and self.device.type != "cpu":
                reason = "auto chooses it on the CPU only"
        if reason is not None:
            if requested == "derived":
                raise DerivedBackwardUnavailable(reason)
            return "autograd"
        self._derived_step = MLPGANStep(self.generator, self.discriminator)
        return "derived"

    # ----------------------------------------------------------------------------------
    # The step
    # ----------------------------------------------------------------------------------

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _noise(self, batch: int, noise: Optional[Tensor]) -> Tensor:
        if noise is not None:
            return noise
        return torch.randn(batch, self.latent_dim, device=self.device, generator=self.noise_generator)

    def _discriminator_step(self, data, batch: int, noise: Optional[Tensor] = None, r1: bool = False):
        real = data.sample(batch, device=self.device, generator=self.data_generator)
        if r1:
            real = real.detach().requires_grad_(True)
        with torch.no_grad(), self._autocast():
            fake = self.generator(self._noise(batch, noise))
        with self._autocast():
            real_logits = self._discriminator_train(real)
            out = self.d_loss(real_logits, self._discriminator_train(fake))
        loss = _upcast(out.loss)
        if r1:
            (grad,) = torch.autograd.grad(_upcast(real_logits).sum(), real, create_graph=True)
            penalty = _upcast(grad).square().flatten(1).sum(1).mean()
            loss = loss + self._r1_weight * penalty
        self.opt_d.zero_grad(set_to_none=not self._capturing)
        loss.backward()
        self.opt_d.step()
        return out

    @property
    def _r1_weight(self) -> float:
        """The lazy R1 penalty's weight on mean ‖∇_x D‖² in the D updates that carry it."""
        return 0.5 * self.r1_gamma * self.r1_every

    def _r1_due(self, d_index: int) -> bool:
        """Whether the ``d_index``-th D update of this step carries the lazy R1 penalty."""
        return self.r1_gamma > 0 and (self.step * self.d_steps + d_index) % self.r1_every == 0

    def _generator_step(self, batch: int, noise: Optional[Tensor] = None):
        trainable = [p.requires_grad for p in self.discriminator.parameters()]
        self.discriminator.requires_grad_(False)
        try:
            with self._autocast():
                logits = self.discriminator(self._generator_train(self._noise(batch, noise)))
                if self.distributed and self.g_loss.couples_batch:  # the loss of the global batch
                    logits = gather_batch(logits, self.process_group)
                out = self.g_loss(logits)
            self.opt_g.zero_grad(set_to_none=not self._capturing)
            _upcast(out.loss).backward()
            self.opt_g.step()
        finally:  # D's own frozen parameters stay frozen
            for parameter, flag in zip(self.discriminator.parameters(), trainable):
                parameter.requires_grad_(flag)
        self._update_ema()
        return out

    def _update_ema(self) -> None:
        if self.ema is not None:
            with torch.no_grad():
                ema_params = list(self.ema.parameters())
                torch._foreach_lerp_(ema_params, list(self.generator.parameters()), 1.0 - self.ema_decay)
                for ema_buffer, buffer in zip(self.ema.buffers(), self.generator.buffers()):
                    ema_buffer.copy_(buffer)


    def _flag_if_bad(self, values: Tensor, step: Tensor) -> None:
        bad = ~torch.isfinite(values).all()
        self._first_bad_step.copy_(torch.where(bad & (self._first_bad_step < 0), step, self._first_bad_step))

    def _record_d(self, d_out) -> None:
        """Add one D update's loss and telemetry to the device accumulators (no sync)."""
        tel = d_out.telemetry
        self._accumulate_d(torch.stack([d_out.loss.detach().double(), tel.divergence.double(), tel.d_real.double(),
                                        tel.d_fake.double()]))

    def _accumulate_d(self, values: Tensor) -> None:
        """values (4,): the D update's loss, divergence estimate, mean D(real), mean D(fake)."""
        with torch.no_grad():
            self._d_accumulated.add_(values)
            self._flag_if_bad(values[:1], self._step_tensor + 1)

    def _record_g(self, g_out) -> None:
        """Add the G update's loss and telemetry, and count the step (no sync)."""
        self._accumulate_g(torch.stack([g_out.loss.detach().double(), g_out.telemetry.saturated_fraction.double()]))

    def _accumulate_g(self, values: Tensor) -> None:
        """values (2,): the G update's loss and saturated fraction."""
        with torch.no_grad():
            self._g_accumulated.add_(values)
            self._step_tensor.add_(1)
            self._flag_if_bad(values[:1], self._step_tensor)

    def _eager_step(self, data, batch: int, noise=None) -> None:
        if self._derived_step is not None:
            self._derived_eager_step(data, batch, noise)
            return
        for index in range(self.d_steps):
            self._record_d(self._discriminator_step(data, batch, noise, self._r1_due(index)))
        self._record_g(self._generator_step(batch, noise))

    def _derived_eager_step(self, data, batch: int, noise=None) -> None:
        """The eager step with :mod:`fastgan.mlp_gan_step`'s gradients: the same draws, in
        the same order, and the same optimiser, EMA and accumulator updates as autograd's."""
        derived = self._derived_step
        for index in range(self.d_steps):
            real = data.sample(batch, device=self.device, generator=self.data_generator)
            fake = derived.generate(self._noise(batch, noise))
            r1_weight = self._r1_weight if self._r1_due(index) else 0.0
            grads, stats = derived.discriminator_gradients(real, fake, r1_weight)
            for parameter, grad in zip(derived.d_parameters, grads):
                parameter.grad = grad
            adam_step(self.opt_d)
            self._accumulate_d(stats.double())
        grads, stats = derived.generator_gradients(self._noise(batch, noise), loss_library.SATURATION_THRESHOLD)
        for parameter, grad in zip(derived.g_parameters, grads):
            parameter.grad = grad
        adam_step(self.opt_g)
        self._update_ema()
        self._accumulate_g(stats.double())

    def _set_learning_rates(self) -> None:
        fraction = self.lr_decay ** min(1.0, self.step / self.total_steps)
        for optimizer, start in ((self.opt_g, self.lr_g), (self.opt_d, self.lr_d)):
            for group in optimizer.param_groups:
                if isinstance(group["lr"], Tensor):
                    group["lr"].fill_(start * fraction)
                else:
                    group["lr"] = start * fraction

    def _relocation_due(self) -> bool:
        if not self.relocate_every or self.step == 0 or self.step % self.relocate_every:
            return False
        start, end = self.relocate_window
        return start <= self.step / self.total_steps < end

    # Real samples a relocation chooses its target from.
    RELOCATION_POOL = 4096

    def _relocate(self, data) -> None:
        """One relocation (:mod:`fastgan.relocation`), between steps. Its draws come from a
        generator seeded by the run's seed and the step, so a resumed run repeats it, and the
        trainer's own streams are untouched. Distributed, rank 0 moves and broadcasts the
        mixture's rows (in G and its EMA) and its list of moves."""
        moves = []
        if self.rank == 0:
            rng = torch.Generator(self.device).manual_seed(resumed_stream_seed(self.seed, 0, 2, self.step))
            generator, discriminator = self.generator, self.discriminator
            was_training = generator.training, discriminator.training
            generator.eval(), discriminator.eval()
            try:
                real = data.sample(self.RELOCATION_POOL, device=self.device, generator=rng)
                moves = relocate_components(generator, discriminator, real, ema=self.ema, generator_rng=rng)
            finally:
                generator.train(was_training[0]), discriminator.train(was_training[1])
        if self.distributed:
            source = dist.get_global_rank(self.process_group, 0) if self.process_group is not None else 0
            with torch.no_grad():
                for model in (self.generator, self.ema):
                    if model is not None:
                        for tensor in (model.prior.means, model.prior.log_scales):
                            dist.broadcast(tensor.data, src=source, group=self.process_group)
            shared = [moves]
            dist.broadcast_object_list(shared, src=source, group=self.process_group)
            moves = shared[0]
        # Every rank: each holds its own (identical) optimizer state.
        forget_optimizer_state(self.opt_g, self.generator, (move.component for move in moves))
        self.relocations.extend((self.step, move) for move in moves)

    # ----------------------------------------------------------------------------------
    # CUDA graphs
    # ----------------------------------------------------------------------------------

    def _use_graphs(self) -> bool:
        if self.distributed and self._cuda_graphs == "auto":
            return False
        return self._cuda_graphs in ("auto", True) and self.device.type == "cuda"

    def _say(self, message: str) -> None:
        self.messages.append(message)
        if self.rank == 0:
            print(f"fastgan: {message}", file=sys.stderr)

    # ----------------------------------------------------------------------------------
    # Training loop
    # ----------------------------------------------------------------------------------

    def train(
        self,
        data,
        steps: int,
        batch_size: int,
        *,
        log_every: int = 100,
        on_log: Optional[Callable[[LogRecord], None]] = None,
        checkpoint_path: Optional[str] = None,
        checkpoint_every: Optional[int] = None,
        config: Optional[dict] = None,
        noise: Optional[Tensor] = None,
    ) -> list[LogRecord]:
        """Run until ``self.step == steps``.

        Args:
            data: has ``sample(n, device=..., generator=...) -> Tensor`` (the toy mixtures and
                image sets of :mod:`fastgan.data`).
            steps: the total step count (a resumed trainer continues to it).
            batch_size: samples per D and G step (the global batch: distributed, each of the K
                processes takes ``batch_size / K``, which must be whole).
            log_every: read the device accumulators and call ``on_log`` this often.
            checkpoint_path, checkpoint_every: save there (atomically) this often and at the end,
                and on Ctrl-C before re-raising ``KeyboardInterrupt``.
            config: stored in the checkpoint (plain data).
            noise: a fixed (batch_size, latent_dim) noise buffer used for every step instead of
                fresh draws (for testing graph and eager equivalence; distributed, process k
                uses its rows ``k·batch_size/K`` up to ``(k+1)·batch_size/K``).
        Returns:
            The log records.
        Raises:
            TrainingDiverged: a loss or parameter became non-finite (the last good checkpoint stays).
        """
        _check_integer(steps, "steps", 0)
        _check_integer(batch_size, "batch_size", 1)
        _check_integer(log_every, "log_every", 1)
        if not hasattr(data, "sample"):
            raise TypeError("data must have a sample(n, device=..., generator=...) method")
        if batch_size % self.world_size:
            raise ValueError(f"batch_size ({batch_size}) must be divisible by the number of processes ({self.world_size})")
        if noise is not None and (noise.dim() != 2 or noise.shape[0] != batch_size):
            raise ValueError(f"noise must have shape (batch_size={batch_size}, latent_dim), got {tuple(noise.shape)}")
        global_batch, batch_size = batch_size, batch_size // self.world_size
        if self.distributed:
            if noise is not None:
                noise = noise[self.rank * batch_size:(self.rank + 1) * batch_size]
            if hasattr(data, "shard"):
                data = self._shard(data)
        records: list[LogRecord] = []
        self.generator.train(), self.discriminator.train()
        self._d_accumulated.zero_()
        self._g_accumulated.zero_()
        key = (id(data), global_batch, None if noise is None else noise.data_ptr())
        if key != self._step_graphs.key:  # graphs captured for other inputs are stale
            self._step_graphs.reset(key)
        last_time, last_step = time.perf_counter(), self.step
        stop = _StopOnInterrupt()
        agreed_stop = False  # distributed: every process stops after this same step
        device_scope = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
        try:
            with device_scope:
                while self.step < steps:
                    if not self.distributed:  # distributed: agreed on at the log reads below
                        stop.check()
                    self._set_learning_rates()
                    for module in self._progress_modules:
                        module.set_training_progress(min(1.0, self.step / self.total_steps))
                    self._in_step = True  # a relocation, too, is left whole or not saved
                    if self._relocation_due():
                        self._relocate(data)
                    self._one_step(data, batch_size, noise)
                    self._in_step = False
                    self.step += 1
                    if self.step % log_every == 0 or self.step == steps:
                        now = time.perf_counter()
                        record, stop_everywhere = self._read_log(now - last_time, self.step - last_step,
                                                                 stop.requested)
                        last_time, last_step = now, self.step
                        records.append(record)
                        if on_log is not None:
                            on_log(record)
                        if stop_everywhere and self.step < steps:  # at the last step: just finish
                            agreed_stop = True
                            raise KeyboardInterrupt
                    if checkpoint_path and checkpoint_every and self.step % checkpoint_every == 0 and self.step < steps:
                        self._raise_if_diverged()
                        self.save(checkpoint_path, config)
        except KeyboardInterrupt:
            if self._in_step:  # a second Ctrl-C inside a step: its state is half-updated, do not save it
                self._say(f"interrupted inside step {self.step + 1}; the previous checkpoint is kept")
            elif self.distributed and not agreed_stop:
                # A second Ctrl-C on this process alone: saving would start collectives the
                # others are not in (a hang), so leave at once and keep the previous checkpoint.
                self._say(f"interrupted again after step {self.step}; the previous checkpoint is kept")
            elif checkpoint_path:
                self._raise_if_diverged()
                self.save(checkpoint_path, config)
            raise
        finally:
            self._in_step = False
            stop.restore()
        if checkpoint_path:
            self._raise_if_diverged()
            self.save(checkpoint_path, config)
        return records

    def _one_step(self, data, batch_size: int, noise) -> None:
        """One training step: eager, a warm-up step before capture, or a graph replay."""
        graphs = self._step_graphs
        if graphs.captured:
            graphs.replay(self)
            return
        if not self._use_graphs():
            self._eager_step(data, batch_size, noise)
            return
        if graphs.warmup_left > 0:
            graphs.warmup(self, data, batch_size, noise)
            return
        try:
            graphs.capture(self, data, batch_size, noise)
        except Exception as error:  # anything that prevents capture: eager from now on, said once
            graphs.graphs = None
            torch.cuda.synchronize(self.device)
            if self._cuda_graphs is True:
                raise RuntimeError(f"cuda_graphs=True but capture failed: {type(error).__name__}: {error}") from error
            self._cuda_graphs = False
            self._say(f"CUDA graphs off, running eager: capture failed ({type(error).__name__}: {error})")
            self._eager_step(data, batch_size, noise)
            return
        self._say("CUDA graphs: the D and G steps are captured and replayed")
        graphs.replay(self)

    def _shard(self, data):
        """This process's share of ``data``, cached so repeated ``train`` calls reuse one object."""
        cached = getattr(self, "_sharded", None)
        if cached is None or cached[0] is not data:
            self._sharded = (data, data.shard(self.rank, self.world_size))
        return self._sharded[1]

    def _all_reduce(self, tensor: Tensor, op=None) -> Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM, group=self.process_group)
        return tensor

    def _raise_if_diverged(self) -> None:
        """Host-synchronising check for NaN/Inf losses (with their first step) and parameters
        (distributed: the same verdict on every process)."""
        first_bad = int(self._all_reduce(self._first_bad_step.clone(), dist.ReduceOp.MAX).item())
        if first_bad >= 0:
            raise TrainingDiverged(
                f"a loss became NaN/Inf at step {first_bad}; training stopped (the last good checkpoint is kept)"
            )
        self._check_finite()

    def _read_log(self, seconds: float, steps: int, stop_requested: bool = False) -> tuple[LogRecord, bool]:
        """The one host synchronisation: means of the accumulators since the last read (over
        all processes), and whether any process asked to stop (Ctrl-C)."""
        self._raise_if_diverged()
        sums = torch.cat([self._d_accumulated, self._g_accumulated,
                          torch.tensor([float(stop_requested)], dtype=torch.float64, device=self.device)])
        sums = (self._all_reduce(sums) / self.world_size).tolist()
        d_loss, divergence, d_real, d_fake = (value / max(steps * self.d_steps, 1) for value in sums[:4])
        g_loss, saturated = (value / max(steps, 1) for value in sums[4:6])
        stop_everywhere = sums[6] > 0
        self._d_accumulated.zero_()
        self._g_accumulated.zero_()
        totals = [d_loss, g_loss, divergence, d_real, d_fake, saturated]
        lrs = [group["lr"] for group in (self.opt_g.param_groups[0], self.opt_d.param_groups[0])]
        lrs = [float(lr) for lr in lrs]
        record = LogRecord(self.step, *totals, it_per_s=steps / seconds if seconds > 0 else float("inf"),
                           lr_g=lrs[0], lr_d=lrs[1])
        return record, stop_everywhere

    def _check_finite(self) -> None:
        for name, model in (("generator", self.generator), ("discriminator", self.discriminator)):
            tensors = [p.detach() for p in model.parameters()]
            if tensors and not torch.isfinite(torch.stack(torch._foreach_norm(tensors))).all():
                raise TrainingDiverged(
                    f"the {name}'s parameters became NaN/Inf by step {self.step}; training stopped "
                    "(the last good checkpoint is kept)"
                )

    # ----------------------------------------------------------------------------------
    # Sampling and checkpoints
    # ----------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, *, use_ema: bool = True, generator: Optional[torch.Generator] = None,
               batch: int = 4096, keep: float = 1.0) -> Tensor:
        """n samples (n, ...) from the generator (its EMA when kept), on the trainer's device.

        ``keep`` < 1 is Jacobian truncation (:mod:`fastgan.sampling`): n / keep latents are
        drawn and the fraction 1 − keep where G stretches space most (between modes) dropped.
        """
        model = self.ema if (use_ema and self.ema is not None) else self.generator
        was_training = model.training
        model.eval()
        try:
            with self._autocast():  # the latents are ranked on the forward that makes the samples
                z = truncated_latents(model, n, self.latent_dim, keep, device=self.device, rng=generator, batch=batch)
            chunks = []
            for chunk in z.split(batch):
                with self._autocast():
                    chunks.append(model(chunk).float())
            return torch.cat(chunks) if chunks else torch.empty(0, device=self.device)
        finally:
            model.train(was_training)

    def state_dict(self) -> dict:
        """Everything a resume needs (:func:`fastgan.checkpoint.trainer_state`; distributed, a
        collective: call it on every process)."""
        return checkpoint.trainer_state(self)

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (:func:`fastgan.checkpoint.restore_trainer`), possibly
        saved on another device type or by another number of processes."""
        checkpoint.restore_trainer(self, state)
        self._step_graphs.reset()
        self._step_tensor.fill_(self.step)
        self._first_bad_step.fill_(-1)
        self._d_accumulated.zero_()
        self._g_accumulated.zero_()

    def save(self, path: str, config: Optional[dict] = None) -> None:
        """Atomic checkpoint of everything a resume needs (and ``config``). Distributed: call on
        every process; rank 0 writes, and all return once the file is in place."""
        checkpoint.save_trainer(self, path, config)

    def resume(self, path: str) -> dict:
        """Load a checkpoint written by :meth:`save`; returns its config. Raises
        :class:`fastgan.checkpoint.CheckpointError` naming ``path`` when the file is damaged or
        its models and optimisers do not fit this trainer's."""
        state = load_checkpoint(path, map_location=self.device)
        checkpoint.check_trainer_state(state, path)
        try:
            self.load_state_dict(state)
        except (KeyError, RuntimeError, TypeError, ValueError) as error:
            raise checkpoint.CheckpointError(f"{path}: does not fit this trainer ({checkpoint.summarise_error(error)})") from error
        return state.get("config", {})


def _data_parallel(module: nn.Module, device: torch.device, process_group) -> nn.Module:
    """``DistributedDataParallel(module)`` without per-forward buffer broadcasts (BatchNorm is
    synchronised instead; other buffers never change), on ``device``."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    options: dict = {"process_group": process_group}
    if device.type == "cuda":
        options["device_ids"] = [device.index if device.index is not None else torch.cuda.current_device()]
    # torch >= 2.13 renames broadcast_buffers (deprecated) to forward_sync_buffers.
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        options["forward_sync_buffers"] = False
    else:
        options["broadcast_buffers"] = False
    return DistributedDataParallel(module, **options)


class _StopOnInterrupt:
    """Ctrl-C between steps, not inside one: the first SIGINT sets a flag that the loop checks
    before each step (so a checkpoint never holds a half-done step); a second one interrupts
    at once. Only in the main thread, where Python delivers signals."""

    def __init__(self) -> None:
        self.requested = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None
