"""Data-parallel training on CPU: 2 gloo processes spawned by the tests themselves.

K processes with DistributedDataParallel must train exactly like one process on the
concatenated batch; a checkpoint written by 2 processes must resume on 1 (and on 2,
exactly); the CLI must run under torchrun with rank-0-only output.
"""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from distributed_harness import run_distributed
from fastgan import Trainer, data, models
from fastgan.distributed import ProcessInfo, process_info, resumed_stream_seed, stream_seed

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="this PyTorch build has no torch.distributed")

GLOBAL_BATCH = 12
LATENT = 4
STEPS = 6


class FixedBatch:
    """A 'dataset' that always returns the same real batch; ``shard`` gives a process its rows
    (the same split the trainer applies to a fixed noise buffer)."""

    def __init__(self, real):
        self.real = real

    def sample(self, n, device=None, generator=None):
        assert n == self.real.shape[0], (n, self.real.shape)
        return self.real.to(device)

    def shard(self, rank, world_size):
        size = self.real.shape[0] // world_size
        return FixedBatch(self.real[rank * size:(rank + 1) * size])


def _toy_trainer(**kwargs):
    torch.manual_seed(0)
    generator = models.MLPGenerator(LATENT, 2, 16, 2, scale=4.15)
    discriminator = models.MLPDiscriminator(2, 16, 2, scale=4.15)
    options = dict(lr_g=3e-3, lr_d=9e-3, lr_decay=0.5, total_steps=STEPS, r1_gamma=0.8, r1_every=1, seed=0)
    options.update(kwargs)
    return Trainer(generator, discriminator, **options)


def _fixed_inputs():
    generator = torch.Generator().manual_seed(7)
    real = data.toy_mixture("grid25").sample(GLOBAL_BATCH, generator=generator)
    noise = torch.randn(GLOBAL_BATCH, LATENT, generator=generator) + 0.3
    return real, noise


def _state(trainer):
    tensors = {f"g.{k}": v for k, v in trainer.generator.state_dict().items()}
    tensors.update({f"d.{k}": v for k, v in trainer.discriminator.state_dict().items()})
    tensors.update({f"ema.{k}": v for k, v in trainer.ema.state_dict().items()})
    return {k: v.detach().clone() for k, v in tensors.items()}


def _train_fixed(rank, world_size, loss):
    real, noise = _fixed_inputs()
    trainer = _toy_trainer(**loss)
    assert trainer.distributed and (trainer.rank, trainer.world_size) == (rank, world_size)
    records = trainer.train(FixedBatch(real), STEPS, GLOBAL_BATCH, log_every=3, noise=noise)
    return _state(trainer), [r.as_dict() for r in records]


# Per-sample losses, and losses that couple the batch through a logsumexp (gathered first).
LOSSES = [
    pytest.param({"g_loss": "nonsaturating"}, id="nonsaturating"),
    pytest.param({"g_loss": "renyi", "g_loss_params": {"alpha": 0.5}}, id="renyi-0.5"),
    pytest.param({"g_loss": "forward_kl"}, id="forward_kl"),
]


@pytest.mark.parametrize("loss", LOSSES)
def test_ddp_equals_one_process_on_the_concatenated_batch(loss):
    real, noise = _fixed_inputs()
    single = _toy_trainer(**loss)
    assert not single.distributed
    single_records = single.train(FixedBatch(real), STEPS, GLOBAL_BATCH, log_every=3, noise=noise)
    expected = _state(single)
    (rank0, records0), (rank1, records1) = run_distributed(_train_fixed, 2, loss)
    for name, value in expected.items():
        # Both processes hold identical models (DDP keeps them in step) ...
        assert torch.equal(rank0[name], rank1[name]), name
        # ... equal to the single process's up to the all-reduce's summation order.
        torch.testing.assert_close(rank0[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(rank0[name], _state(_toy_trainer())[name]) for name in expected), "nothing trained"
    # The logged losses are global means: the same on both processes and as in one process.
    for mine, other, one in zip(records0, records1, single_records):
        for key in ("d_loss", "g_loss", "divergence", "d_real", "d_fake"):
            assert mine[key] == other[key]
            assert mine[key] == pytest.approx(getattr(one, key), rel=1e-5, abs=1e-6), key


def _dcgan_trainer(**kwargs):
    torch.manual_seed(1)
    generator = models.DCGANGenerator(latent_dim=LATENT, channels=3, image_size=32, width=2)
    discriminator = models.DCGANDiscriminator(channels=3, image_size=32, width=2)
    return Trainer(generator, discriminator, lr_g=2e-3, lr_d=2e-3, total_steps=3, seed=0, backend="torch", **kwargs)


def _dcgan_inputs():
    generator = torch.Generator().manual_seed(11)
    return torch.rand(8, 3, 32, 32, generator=generator) * 2 - 1, torch.randn(8, LATENT, generator=generator)


def _train_dcgan(rank, world_size):
    real, noise = _dcgan_inputs()
    trainer = _dcgan_trainer(process_group=dist.group.WORLD)  # an explicit group (the EMA copy shares it)
    blocks = [type(m).__name__ for m in trainer.generator.modules() if "BatchNorm" in type(m).__name__]
    trainer.train(FixedBatch(real), 3, 8, log_every=3, noise=noise)
    return _state(trainer), blocks


def test_ddp_with_synchronised_fused_batch_norm_equals_one_process():
    real, noise = _dcgan_inputs()
    single = _dcgan_trainer()
    single.train(FixedBatch(real), 3, 8, log_every=3, noise=noise)
    expected = _state(single)
    (rank0, blocks), (rank1, _) = run_distributed(_train_dcgan, 2)
    # The DCGAN's fused blocks became synchronised ones, activations kept.
    assert blocks and set(blocks) == {"SyncBatchNormLeakyReLU"}
    for name, value in expected.items():
        assert torch.equal(rank0[name], rank1[name]), name
        # Batch statistics over the global batch: the same parameters and running stats.
        torch.testing.assert_close(rank0[name], value, rtol=1e-4, atol=1e-5, msg=name)


def _train_streams(rank, world_size, directory, steps, resume_from):
    trainer = _toy_trainer(total_steps=10)
    if resume_from:
        trainer.resume(os.path.join(directory, resume_from))
    trainer.train(data.toy_mixture("grid25"), steps, GLOBAL_BATCH, log_every=2,
                  checkpoint_path=os.path.join(directory, f"ckpt-{steps}-{resume_from or 'fresh'}.pt"))
    return _state(trainer), trainer.messages


def test_two_process_checkpoint_resumes_exactly_on_two_and_loads_on_one(tmp_path):
    directory = str(tmp_path)
    straight, _ = run_distributed(_train_streams, 2, directory, 10, None)[0]
    run_distributed(_train_streams, 2, directory, 4, None)
    checkpoint = torch.load(os.path.join(directory, "ckpt-4-fresh.pt"), weights_only=True)
    assert checkpoint["world_size"] == 2 and len(checkpoint["rank_rng"]) == 2
    assert not torch.equal(checkpoint["rank_rng"][0]["noise"], checkpoint["rank_rng"][1]["noise"])
    # Same world size: bit-identical to the uninterrupted run.
    resumed, _ = run_distributed(_train_streams, 2, directory, 10, "ckpt-4-fresh.pt")[0]
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name
    # One process: the models and optimisers load exactly; the streams are re-derived, said once.
    single = _toy_trainer(total_steps=10)
    single.resume(os.path.join(directory, "ckpt-4-fresh.pt"))
    assert single.step == 4 and not single.distributed
    for key in ("generator", "discriminator"):
        for name, value in getattr(single, key).state_dict().items():
            assert torch.equal(value, checkpoint[key][name]), name
    assert torch.equal(single.opt_d.state_dict()["state"][0]["exp_avg"], checkpoint["opt_d"]["state"][0]["exp_avg"])
    assert len([m for m in single.messages if "written by 2 process(es), this run has 1" in m]) == 1
    single.train(data.toy_mixture("grid25"), 10, GLOBAL_BATCH, log_every=2)
    assert single.step == 10 and all(torch.isfinite(v).all() for v in _state(single).values())


class RankShiftedGrid:
    """grid25 whose shards differ by rank (a small shift): a process relocating from its own
    shard would choose other targets, so only the broadcast keeps the components in step."""

    def __init__(self, shift=0.0):
        self.mixture, self.shift = data.toy_mixture("grid25"), shift

    def sample(self, n, device=None, generator=None):
        return self.mixture.sample(n, device, generator) + self.shift

    def shard(self, rank, world_size):
        return RankShiftedGrid(0.05 * rank)


def _train_relocating(rank, world_size):
    import functools

    import fastgan.trainer as trainer_module
    from fastgan.relocation import relocate_components

    # Move on every call, whatever the ratio says, so that moves happen in a few steps.
    trainer_module.relocate_components = functools.partial(relocate_components, min_gap=-float("inf"))
    torch.manual_seed(0)
    trainer = Trainer(models.MLPGenerator(LATENT, 2, 16, 2, scale=4.15, components=25),
                      models.MLPDiscriminator(2, 16, 2, scale=4.15), lr_g=3e-3, lr_d=9e-3, total_steps=STEPS,
                      relocate_every=2, relocate_window=(0.0, 1.0), seed=0)
    trainer.train(RankShiftedGrid(), STEPS, GLOBAL_BATCH, log_every=3)
    return _state(trainer), [move for _, move in trainer.relocations]


def test_relocation_keeps_the_processes_in_step():
    (state0, moves0), (state1, moves1) = run_distributed(_train_relocating, 2)
    assert len(moves0) == 2 and moves0 == moves1  # steps 2 and 4: rank 0's moves, on both
    for name in state0:  # rank 0 chose from its shard alone, and its rows reached both processes
        assert torch.equal(state0[name], state1[name]), name


def _streams_and_bad_batch(rank, world_size):
    trainer = _toy_trainer()
    with pytest.raises(ValueError, match=r"batch_size \(7\) must be divisible by the number of processes \(2\)"):
        trainer.train(data.toy_mixture("grid25"), 1, 7)
    return (trainer.noise_generator.initial_seed(), torch.randn(5, generator=trainer.noise_generator),
            torch.randn(5, generator=trainer.data_generator))


def test_per_process_streams_draw_differently_and_batch_must_divide():
    (seed0, noise0, data0), (seed1, noise1, data1) = run_distributed(_streams_and_bad_batch, 2)
    assert seed0 == 0  # rank 0 keeps the single-process stream
    assert torch.equal(noise0, torch.randn(5, generator=torch.Generator().manual_seed(0)))
    # The draws themselves differ (the CPU generator reads only a seed's low 32 bits).
    assert not torch.equal(noise0, noise1) and not torch.equal(data0, data1) and not torch.equal(noise1, data1)


def test_stream_seeds_differ_in_their_low_32_bits():
    seeds = {stream_seed(seed, rank, stream) % 2**32 for seed in (0, 1, 7) for rank in range(8) for stream in (0, 1)}
    resumed = {resumed_stream_seed(seed, rank, stream, step) % 2**32
               for seed in (0, 1) for rank in range(4) for stream in (0, 1) for step in (0, 10)}
    assert len(seeds) == 3 * 8 * 2 - 1  # only rank 0 collides: seed 0 stream 1 == seed 1 stream 0
    assert len(resumed) == 2 * 4 * 2 * 2 and not resumed & seeds


def test_single_process_defaults_are_unchanged():
    assert process_info() == ProcessInfo(0, 1, int(os.environ.get("LOCAL_RANK", "0")))
    assert stream_seed(5, 0, 0) == 5 and stream_seed(5, 0, 1) == 6
    with pytest.raises(ValueError, match="distributed=True needs an initialised"):
        _toy_trainer(distributed=True)
    with pytest.raises(ValueError, match="distributed must be one of"):
        _toy_trainer(distributed="yes")


def test_image_dataset_shards_are_disjoint_and_cover_it():
    images = torch.arange(7, dtype=torch.float32).view(7, 1, 1, 1).expand(7, 3, 2, 2)
    dataset = data.ImageDataset(images)
    shards = [dataset.shard(rank, 3) for rank in range(3)]
    seen = sorted(int(v) for shard in shards for v in shard.images[:, 0, 0, 0])
    assert seen == list(range(7)) and [len(s) for s in shards] == [3, 2, 2]
    with pytest.raises(ValueError, match="rank must be in"):
        dataset.shard(3, 3)
    with pytest.raises(ValueError, match="cannot shard 7 images over world_size=8"):
        dataset.shard(0, 8)


def test_cli_under_torchrun_writes_once_from_rank_zero(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "fastgan", "train", "--steps", "40", "--batch-size", "64", "--out", str(out),
               "--log-every", "20", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # Its own session, so a hang kills torchrun's workers too, not only torchrun.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail("torchrun did not finish within 240 s:\n" + stderr[-4000:])
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and config["batch_size"] == 64
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [20, 40]  # one writer: no duplicated lines
    assert (out / "checkpoint.pt").is_file() and (out / "metrics.json").is_file()
    assert result.stdout.count("fastgan train: done") == 1
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["world_size"] == 2 and checkpoint["step"] == 40
