"""fastgan.relocation and the trainer's coarse-to-fine and relocation schedules: where the
right move is known (two components duplicated on one mode, an analytic log-ratio that says
the other mode is empty), the duplicate moves there, the EMA with it; nothing moves when the
ratio says nothing is missing; the trainer moves components only inside its window, repeats
its moves on resume, and sets a coarse-to-fine discriminator's octave weights every step."""

import functools
import math

import pytest
import torch

from fastgan import Trainer, TrainingDiverged, data, models
from fastgan import trainer as trainer_module
from fastgan.relocation import _sources, forget_optimizer_state, relocate_components, supports_relocation

def duplicated_generator(seed=0):
    """An MLP generator with 3 components, the first two with the same latent mean (both land
    on one spot) and the third elsewhere."""
    torch.manual_seed(seed)
    generator = models.MLPGenerator(4, 2, 32, 2, scale=40.0, components=3)  # outputs spread over a few units
    with torch.no_grad():
        generator.prior.means[1] = generator.prior.means[0]
        generator.prior.log_scales.fill_(math.log(0.01))
    return generator


def _modes():
    """The data's two modes: one where the third component lands (covered), and one the generator
    reaches from a latent none of its components is at (empty), so an inversion can find it."""
    state = torch.random.get_rng_state()
    try:
        with torch.no_grad():
            probe = duplicated_generator()
            return probe.decode(probe.prior.means[2:3])[0], probe.decode(torch.tensor([[1.5, -1.5, 1.0, -0.5]]))[0]
    finally:
        torch.random.set_rng_state(state)  # collecting this module leaves the global RNG alone


COVERED_MODE, EMPTY_MODE = _modes()


def analytic_log_ratio(landing):
    """log p_data/p_g for data on EMPTY_MODE and COVERED_MODE, with the generator's mass on
    ``landing`` (twice) and nothing on EMPTY_MODE: high near the empty mode, low near the duplicate."""

    def log_ratio(x):
        near_empty = (-(x - EMPTY_MODE).square().sum(-1) / 0.5).exp()
        near_duplicate = (-(x - landing).square().sum(-1) / 0.5).exp()
        return 6.0 * near_empty - 2.0 * near_duplicate

    return log_ratio


def real_pool(n=400, seed=1):
    rng = torch.Generator().manual_seed(seed)
    centres = torch.stack([EMPTY_MODE, COVERED_MODE])[torch.randint(0, 2, (n,), generator=rng)]
    return centres + 0.05 * torch.randn(n, 2, generator=rng)


def test_the_duplicate_moves_to_the_empty_mode_with_its_ema():
    generator = duplicated_generator()
    ema = duplicated_generator()
    landing = generator.decode(generator.prior.means[:1]).detach()[0]
    untouched = generator.prior.means[2].detach().clone()
    moves = relocate_components(generator, analytic_log_ratio(landing), real_pool(), ema=ema,
                                generator_rng=torch.Generator().manual_seed(3))
    assert len(moves) == 1
    moved = moves[0]
    assert moved.component in (0, 1)
    assert moved.target_log_ratio > 5 and moved.component_log_ratio < -1.5
    output = generator.decode(generator.prior.means[moved.component][None]).detach()[0]
    assert (output - EMPTY_MODE).norm() < 0.3, output  # on the empty mode (its samples are within 0.15 of it)
    assert moved.miss < 0.1
    assert torch.equal(ema.prior.means[moved.component], generator.prior.means[moved.component])
    assert torch.equal(ema.prior.log_scales[moved.component], generator.prior.log_scales[moved.component])
    # The other copy and the third component stay.
    other = 1 - moved.component
    torch.testing.assert_close(generator.decode(generator.prior.means[other][None]).detach()[0], landing)
    assert torch.equal(generator.prior.means[2], untouched)
    # Its samples now land on the empty mode.
    index = torch.full((200,), moved.component)
    samples = generator(generator.prior.noise_for(index, torch.Generator().manual_seed(4))).detach()
    assert ((samples - EMPTY_MODE).norm(dim=1) < 0.5).float().mean() > 0.95


def test_a_duplicate_moves_before_a_lone_component_rated_lower():
    """The third component, alone on the covered mode, is rated lowest (its samples spread wider
    than the mode, say); moving it would empty that mode. One of the two copies moves instead."""
    generator = duplicated_generator()
    landing = generator.decode(generator.prior.means[:1]).detach()[0]
    alone = generator.decode(generator.prior.means[2:3]).detach()[0]
    duplicate_ratio = analytic_log_ratio(landing)

    def log_ratio(x):
        return duplicate_ratio(x) - 4.0 * (-(x - alone).square().sum(-1) / 0.5).exp()

    moves = relocate_components(generator, log_ratio, real_pool(), generator_rng=torch.Generator().manual_seed(3))
    assert len(moves) == 1 and moves[0].component in (0, 1)
    assert moves[0].component_log_ratio > float(log_ratio(alone[None]))  # not the lowest-rated: the duplicate
    assert (generator.decode(generator.prior.means[moves[0].component][None]).detach()[0] - EMPTY_MODE).norm() < 0.3


def test_a_component_smeared_over_the_copies_is_a_duplicate_too():
    """The third component's samples spread wider than the distance to the copies' spot (smeared
    over it): by its own spread it is a duplicate, and, rated lowest, it moves first. The copies,
    tight, are duplicates of each other only."""
    generator = duplicated_generator()
    landing = generator.decode(generator.prior.means[:1]).detach()[0]
    alone = generator.decode(generator.prior.means[2:3]).detach()[0]
    with torch.no_grad():
        generator.prior.log_scales[2].fill_(math.log(0.5))
    index = torch.full((512,), 2)
    samples = generator(generator.prior.noise_for(index, torch.Generator().manual_seed(5))).detach()
    spread = (samples - samples.mean(0)).square().sum(1).mean().sqrt()
    assert 0.2 < (alone - landing).norm() < 2 * spread  # far from the copies in their spread, near in its own
    duplicate_ratio = analytic_log_ratio(landing)

    def log_ratio(x):
        return duplicate_ratio(x) - 12.0 * torch.sigmoid(4.0 * (1.5 - (x - alone).norm(dim=-1)))  # low around it

    assert float(log_ratio(samples).mean()) < float(duplicate_ratio(landing[None])) - 0.5  # rated lowest
    moves = relocate_components(generator, log_ratio, real_pool(), generator_rng=torch.Generator().manual_seed(3))
    assert len(moves) == 1 and moves[0].component == 2


def test_the_default_gap_is_two():
    generator = duplicated_generator()
    landing = generator.decode(generator.prior.means[:1]).detach()[0]
    moves = relocate_components(generator, analytic_log_ratio(landing), real_pool(),
                                generator_rng=torch.Generator().manual_seed(3))
    gap = moves[0].target_log_ratio - moves[0].component_log_ratio
    shrunk = lambda x: analytic_log_ratio(landing)(x) * (1.5 / gap)  # noqa: E731  (the same choice, a gap of 1.5)
    assert relocate_components(duplicated_generator(), shrunk, real_pool(),
                               generator_rng=torch.Generator().manual_seed(3)) == []
    assert len(relocate_components(duplicated_generator(), shrunk, real_pool(), min_gap=1.0,
                                   generator_rng=torch.Generator().manual_seed(3))) == 1


def test_nothing_moves_when_the_ratio_shows_nothing_missing():
    generator = duplicated_generator()
    before = [p.detach().clone() for p in generator.parameters()]
    flat = lambda x: torch.zeros(x.shape[0])  # noqa: E731  (p_g = p_data everywhere)
    assert relocate_components(generator, flat, real_pool(), generator_rng=torch.Generator().manual_seed(3)) == []
    # A gap below min_gap moves nothing either.
    landing = generator.decode(generator.prior.means[:1]).detach()[0]
    assert relocate_components(generator, analytic_log_ratio(landing), real_pool(), min_gap=100.0,
                               generator_rng=torch.Generator().manual_seed(3)) == []
    assert all(torch.equal(a, b) for a, b in zip(before, generator.parameters()))


def test_count_moves_distinct_components_to_distinct_samples():
    generator = duplicated_generator()
    landing = generator.decode(generator.prior.means[:1]).detach()[0]
    moves = relocate_components(generator, analytic_log_ratio(landing), real_pool(), count=5, min_gap=0.0,
                                generator_rng=torch.Generator().manual_seed(3))
    # One copy and the third component; the other copy, the last on its spot, stays.
    assert len(moves) == 2 and len({move.component for move in moves}) == 2
    assert {move.component for move in moves} in ({0, 2}, {1, 2})


def test_a_picked_component_protects_its_duplicates_either_way():
    """A and J are copies (each within the other's spread); B, smeared, has A within its own
    spread but not J. A, rated lowest, moves first; then no duplicate is left, and B, A's
    duplicate by B's spread, must not move in the fallback: a group keeps its last member on
    either side of the asymmetric rule."""
    landing = torch.tensor([[0.0, 0.0], [-0.15, 0.0], [1.9, 0.0], [9.0, 9.0]])  # A, J, B, a lone C
    spread = torch.tensor([0.1, 0.1, 1.0, 0.1])
    ratio = torch.tensor([-3.0, 0.0, -2.0, -1.0])
    assert _sources(landing, spread, ratio, count=4) == [0, 3]  # A, then C (lone, lowest left); B and J stay


def test_a_diverged_discriminator_moves_nothing_and_the_trainer_reports_divergence():
    generator = duplicated_generator()
    before = [p.detach().clone() for p in generator.parameters()]
    nan_ratio = lambda x: torch.full((x.shape[0],), float("nan"))  # noqa: E731
    assert relocate_components(generator, nan_ratio, real_pool(), generator_rng=torch.Generator().manual_seed(3)) == []
    assert all(torch.equal(a, b) for a, b in zip(before, generator.parameters()))
    assert relocate_components(generator, lambda x: x.sum(1), real_pool()[:0]) == []  # an empty pool
    assert relocate_components(generator, lambda x: x.sum(1), real_pool(), count=0) == []
    trainer = relocating_trainer(relocate_every=1, relocate_window=(0.0, 1.0))
    trainer.train(GRID, 1, 32, log_every=1)
    with torch.no_grad():
        trainer.discriminator.net[0].weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged):
        trainer.train(GRID, 3, 32, log_every=1)


def test_relocation_draws_from_any_seed():
    trainer = relocating_trainer(seed=10**14, relocate_every=1, relocate_window=(0.0, 1.0))  # no 64-bit overflow
    trainer.train(GRID, 2, 32, log_every=2)


def test_a_generator_without_a_mixture_is_refused():
    plain = models.MLPGenerator(4, 2, 8, 1)
    assert not supports_relocation(plain) and supports_relocation(duplicated_generator())
    with pytest.raises(TypeError, match="MixtureLatent"):
        relocate_components(plain, lambda x: x.sum(1), real_pool())
    with pytest.raises(ValueError, match="relocate_every needs a generator with a mixture latent"):
        Trainer(plain, models.MLPDiscriminator(2, 8, 1), relocate_every=10)


@pytest.mark.parametrize("window", [(0.5, 0.5), (-0.1, 0.5), (0.2, 1.5), (0.1,), "early", (True, 0.5)])
def test_bad_relocation_window_is_named(window):
    with pytest.raises(ValueError, match="relocate_window"):
        Trainer(duplicated_generator(), models.MLPDiscriminator(2, 8, 1), relocate_every=10, relocate_window=window)


@pytest.mark.parametrize("samples", [0, 2.5, True])
def test_bad_samples_per_component_is_named(samples):
    with pytest.raises(ValueError, match="samples_per_component must be a positive integer"):
        relocate_components(duplicated_generator(), lambda x: x[:, 0], real_pool(), samples_per_component=samples)


@pytest.mark.parametrize("every", [-1, 2.5, True])
def test_bad_relocate_every_is_named(every):
    with pytest.raises(ValueError, match="relocate_every must be a non-negative integer"):
        Trainer(duplicated_generator(), models.MLPDiscriminator(2, 8, 1), relocate_every=every)


GRID = data.toy_mixture("grid25")


def relocating_trainer(**kwargs):
    torch.manual_seed(0)
    generator = models.MLPGenerator(4, 2, 32, 2, scale=4.15, components=25)
    discriminator = models.MLPDiscriminator(2, 32, 2, scale=4.15, fourier_octaves=3, coarse_to_fine=0.5)
    options = dict(lr_g=5e-3, lr_d=5e-3, total_steps=40, relocate_every=5, relocate_window=(0.25, 0.75))
    options.update(kwargs)
    return Trainer(generator, discriminator, **options)


def test_trainer_relocates_only_inside_its_window_and_resume_repeats_it(tmp_path):
    straight = relocating_trainer()
    straight.train(GRID, 40, 64, log_every=10)
    steps = {step for step, _ in straight.relocations}
    assert steps and steps <= {10, 15, 20, 25}, steps  # every 5 steps, from 25 % to 75 % of 40
    first = relocating_trainer()
    first.train(GRID, 17, 64, log_every=17, checkpoint_path=str(tmp_path / "ckpt.pt"))
    resumed = relocating_trainer()
    resumed.resume(str(tmp_path / "ckpt.pt"))
    resumed.train(GRID, 40, 64, log_every=10)
    assert [(s, m) for s, m in straight.relocations if s > 17] == resumed.relocations
    for a, b in zip(straight.generator.state_dict().values(), resumed.generator.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)


def test_forget_optimizer_state_zeroes_the_moved_rows_alone():
    generator = duplicated_generator()
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        generator(torch.randn(16, generator.latent_dim)).square().sum().backward()
        optimizer.step()
    prior = generator.prior
    before = {id(p): {k: v.clone() for k, v in optimizer.state[p].items()} for p in generator.parameters()}
    forget_optimizer_state(optimizer, generator, [1, 1])
    for parameter in generator.parameters():
        state, old = optimizer.state[parameter], before[id(parameter)]
        assert torch.equal(state["step"], old["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            if parameter is prior.means or parameter is prior.log_scales:
                assert not state[key][1].any() and old[key][1].any()
                assert torch.equal(state[key][[0, 2]], old[key][[0, 2]])
            else:
                assert torch.equal(state[key], old[key])
    forget_optimizer_state(torch.optim.Adam(generator.parameters()), generator, [0])  # no state yet: nothing to do


def test_the_trainer_gives_a_moved_component_fresh_optimizer_state(monkeypatch):
    monkeypatch.setattr(trainer_module, "relocate_components",
                        functools.partial(relocate_components, min_gap=-math.inf))  # a move at every chance
    trainer = relocating_trainer(relocate_every=5, relocate_window=(0.0, 1.0))
    prior, relocate, checked = trainer.generator.prior, trainer._relocate, []

    def checking_relocate(data_source):
        before = len(trainer.relocations)
        old = {name: trainer.opt_g.state[p]["exp_avg_sq"].clone()
               for name, p in (("means", prior.means), ("log_scales", prior.log_scales))}
        relocate(data_source)
        moved = sorted({move.component for _, move in trainer.relocations[before:]})
        kept = [c for c in range(prior.components) if c not in moved]
        for name, parameter in (("means", prior.means), ("log_scales", prior.log_scales)):
            second_moment = trainer.opt_g.state[parameter]["exp_avg_sq"]
            assert not second_moment[moved].any() and not trainer.opt_g.state[parameter]["exp_avg"][moved].any()
            assert torch.equal(second_moment[kept], old[name][kept])
        checked.append(moved)

    trainer._relocate = checking_relocate
    trainer.train(GRID, 12, 64, log_every=12)
    assert len(checked) == 2 and all(checked)  # steps 5 and 10, each with a move


def test_trainer_sets_the_coarse_to_fine_weights_each_step():
    trainer = relocating_trainer(relocate_every=0)
    weights = trainer.discriminator.octave_weights
    address = weights.data_ptr()
    trainer.train(GRID, 1, 32, log_every=1)
    assert weights.tolist() == [0.0, 0.0, 0.0]  # step 0: progress 0, no octave yet
    trainer.train(GRID, 11, 32, log_every=11)  # the last step ran at progress 10/40 = 0.25
    torch.testing.assert_close(weights, torch.tensor(trainer.discriminator.octave_weights_at(10 / 40)))
    assert 0 < weights.sum() < 3
    trainer.train(GRID, 40, 32, log_every=40)
    assert weights.tolist() == [1.0, 1.0, 1.0] and weights.data_ptr() == address  # in place
