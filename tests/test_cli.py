"""The fastgan command line: train / sample / eval / info, run directories, resume, errors."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from fastgan import cli

SMALL = ["--hidden", "32", "--layers", "2", "--batch-size", "64", "--log-every", "10", "--quiet"]


def run(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _refuse_constant(name):
    raise ValueError(f"not strict JSON: {name}")


def strict_json(text: str):
    """json.loads that rejects NaN and ±Infinity (Python's json accepts them by default)."""
    return json.loads(text, parse_constant=_refuse_constant)


def assert_png_figure(path, min_width, min_height):
    """The file is a PNG of at least this size that is not blank (many non-white pixels, several colours)."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[1] >= min_width and pixels.shape[0] >= min_height, pixels.shape
    assert (pixels < 250).any(-1).mean() > 0.02
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20


def test_train_writes_the_run_directory(tmp_path, capsys):
    out = str(tmp_path / "run")
    code, stdout, _ = run(["train", "--steps", "30", "--out", out, *SMALL], capsys)
    assert code == 0
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "config.json", "log.jsonl", "metrics.json", "samples.npy",
                                       "samples.png", "training.png"]
    config = strict_json(open(os.path.join(out, "config.json")).read())
    assert config["data"] == "grid25" and config["steps"] == 30 and config["hidden"] == 32
    log = [strict_json(line) for line in open(os.path.join(out, "log.jsonl"))]
    assert [r["step"] for r in log] == [10, 20, 30]
    assert {"d_loss", "g_loss", "divergence", "d_real", "d_fake", "saturated_fraction", "it_per_s"} <= set(log[0])
    metrics = strict_json(open(os.path.join(out, "metrics.json")).read())
    assert {"modes", "modes_strict", "high_quality", "reverse_kl", "wall_seconds"} <= set(metrics)
    # The generator alone is the headline; every density-ratio sampler and Jacobian truncation
    # is reported beside it, with its acceptance and cost.
    assert config["sample_keep"] == 0.85
    assert set(metrics["samplers"]) == {"jacobian", "rejection", "mh", "sir"}
    for name, report in metrics["samplers"].items():
        assert {"seconds"} <= set(report)
        if "error" not in report:  # rejection may give up on a barely trained D; it says so
            assert {"modes", "modes_strict", "high_quality", "reverse_kl", "acceptance", "proposals"} <= set(report)
    assert metrics["samplers"]["jacobian"]["acceptance"] == 0.85
    assert metrics["samplers"]["mh"]["proposals"] == 2500 * 21 and metrics["samplers"]["sir"]["proposals"] == 2500 * 20
    assert "the generator alone" in stdout and "Jacobian truncation, keep 0.85" in stdout
    assert "rejection (DRS)" in stdout and "Metropolis-Hastings, 20 steps" in stdout and "SIR, pool 20" in stdout
    assert np.load(os.path.join(out, "samples.npy")).shape == (2500, 2)
    assert_png_figure(os.path.join(out, "samples.png"), 400, 400)
    assert_png_figure(os.path.join(out, "training.png"), 400, 400)
    assert "PacGAN paper" in stdout and "true mixture" in stdout and "run directory" in stdout


def test_progress_bar_on_request_and_quiet_off_a_terminal(tmp_path, capsys):
    code, stdout, stderr = run(["train", "--steps", "20", "--out", str(tmp_path / "r"), "--progress", *SMALL[:-1]],
                               capsys)
    assert code == 0
    assert "it/s" in stderr and "d_loss" in stderr and "D(fake)" in stderr and "20/20" in stderr
    assert stdout.startswith("fastgan train: done, 20 steps")
    # Captured stderr is not a terminal: without --progress, no bar (the one-line header stays).
    code, stdout, stderr = run(["train", "--steps", "20", "--out", str(tmp_path / "s"), *SMALL[:-1]], capsys)
    assert code == 0 and stdout.startswith("fastgan train: done, 20 steps")
    assert "it/s" not in stderr and "20/20" not in stderr and len(stderr.strip().splitlines()) == 1


def test_undefined_metrics_are_null_in_strict_json(tmp_path, capsys, monkeypatch):
    # Samples far from every centre: no sample is high-quality, so the reverse KL is undefined (NaN).
    evaluate = cli._evaluate
    monkeypatch.setattr(cli, "_evaluate", lambda config, samples: evaluate(config, samples + 1000.0))
    out = str(tmp_path / "run")
    code, stdout, _ = run(["train", "--steps", "10", "--out", out, *SMALL], capsys)
    assert code == 0
    metrics = strict_json(open(os.path.join(out, "metrics.json")).read())
    assert metrics["high_quality"] == 0 and metrics["reverse_kl"] is None
    assert all(report["reverse_kl"] is None for report in metrics["samplers"].values() if "error" not in report)
    far = np.full((100, 2), 1000.0, np.float32)
    np.save(tmp_path / "far.npy", far)
    code, stdout, _ = run(["eval", str(tmp_path / "far.npy"), "--data", "grid25", "--json"], capsys)
    assert code == 0 and strict_json(stdout)["reverse_kl"] is None


def test_ctrl_c_then_resume_matches_an_uninterrupted_run(tmp_path, capsys, monkeypatch):
    from fastgan.trainer import load_checkpoint

    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    assert run(["train", "--steps", "40", "--out", straight, *SMALL], capsys)[0] == 0
    original = cli.Progress.update

    def interrupt_at_20(self, record):
        original(self, record)
        if record.step == 20:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli.Progress, "update", interrupt_at_20)
    code, _, err = run(["train", "--steps", "40", "--out", split, *SMALL], capsys)
    assert code == 130 and "interrupted at step 20; checkpoint saved" in err and "--resume" in err
    assert load_checkpoint(os.path.join(split, "checkpoint.pt"))["step"] == 20
    monkeypatch.setattr(cli.Progress, "update", original)
    # Flags that repeat the saved run are accepted on --resume.
    code, _, _ = run(["train", "--out", split, "--resume", "--quiet", "--hidden", "32", "--data", "grid25"], capsys)
    assert code == 0
    a = load_checkpoint(os.path.join(straight, "checkpoint.pt"))
    b = load_checkpoint(os.path.join(split, "checkpoint.pt"))
    assert a["step"] == b["step"] == 40
    for part in ("generator", "discriminator", "ema"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)


def test_sample_and_eval(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run(["train", "--steps", "10", "--out", out, *SMALL], capsys)[0] == 0
    code, stdout, _ = run(["sample", out, "-n", "100", "--out", str(tmp_path / "raw.npy")], capsys)
    assert code == 0 and np.load(tmp_path / "raw.npy").shape == (100, 2) and "the generator alone" in stdout
    code, stdout, _ = run(["sample", out, "-n", "100", "--keep", "1", "--out", str(tmp_path / "keep1.npy")], capsys)
    assert code == 0 and np.array_equal(np.load(tmp_path / "keep1.npy"), np.load(tmp_path / "raw.npy"))
    drawn = {}
    for sampler, extra in (("jacobian", []), ("rejection", ["--gamma", "0.5"]), ("mh", ["--mh-steps", "3"]),
                           ("sir", ["--sir-pool", "4"])):
        path = tmp_path / f"{sampler}.npy"
        code, stdout, _ = run(["sample", out, "-n", "100", "--sampler", sampler, *extra, "--out", str(path)], capsys)
        assert code == 0 and f"sampler {sampler}, acceptance" in stdout
        drawn[sampler] = np.load(path)
        assert drawn[sampler].shape == (100, 2) and np.isfinite(drawn[sampler]).all()
        assert not np.array_equal(drawn[sampler], np.load(tmp_path / "raw.npy"))
    assert "400 generator draws" in run(["sample", out, "-n", "100", "--sampler", "sir", "--sir-pool", "4",
                                         "--out", str(tmp_path / "x.npy")], capsys)[1]
    code, stdout, _ = run(["eval", out, "--json"], capsys)
    assert code == 0 and json.loads(stdout)["num_modes"] == 25
    true = torch.load  # noqa: F841 (keep torch imported for the fixture below)
    from fastgan import data

    np.save(tmp_path / "true.npy", data.toy_mixture("ring8").sample(2500, generator=torch.Generator().manual_seed(0)).numpy())
    code, stdout, _ = run(["eval", str(tmp_path / "true.npy"), "--data", "ring8", "--json"], capsys)
    result = json.loads(stdout)
    assert code == 0 and result["modes"] == 8 and result["high_quality"] > 0.97


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--g-loss", "nope"], "unknown generator loss 'nope'"),
        (["train", "--steps", "-5"], "--steps must be a non-negative integer"),
        (["train", "--data", "/no/such/folder"], "no such toy mixture"),
        (["train", "--g-loss", "renyi", "--alpha", "-1"], "--alpha must be a finite real >= 0"),
        (["train", "--g-loss", "renyi"], "needs --alpha"),
        (["train", "--lr-g", "0"], "--lr-g must be > 0"),
        (["train", "--sample-keep", "0"], "--sample-keep must be in (0, 1]"),
        (["train", "--mh-steps", "0"], "--mh-steps must be a positive integer"),
        (["train", "--sir-pool", "-1"], "--sir-pool must be a positive integer"),
        (["train", "--precision", "fp8"], "invalid choice"),
        (["train", "--resume"], "--resume needs --out"),
        (["train", "--d-fourier", "17"], "--d-fourier must be an integer from 0 to 16"),
        (["train", "--data", "shapes", "--d-fourier", "4"], "--d-fourier (Fourier input features) applies to the toy"),
        (["train", "--d-coarse-to-fine", "1.5"], "--d-coarse-to-fine must be a fraction of the schedule in [0, 1]"),
        (["train", "--relocate-every", "-1"], "--relocate-every must be a non-negative integer"),
        (["train", "--final-hold", "1"], "--final-hold must be a fraction of the run in [0, 1)"),
        (["train", "--final-hold", "-0.1"], "--final-hold must be a fraction of the run in [0, 1)"),
        (["train", "--final-hold", "1/0"], "expected a number or a fraction such as 1/6"),
        (["train", "--d-coarse-to-fine", "0.5"], "--d-coarse-to-fine schedules the octaves of --d-fourier"),
        (["train", "--components", "0", "--relocate-every", "10"], "--relocate-every moves mixture-latent components"),
        (["train", "--data", "shapes", "--relocate-every", "10"], "--relocate-every moves mixture-latent components"),
        (["eval", "/no/such.npy", "--data", "grid25"], "no such samples file"),
        (["sample", "/no/such/run"], "no checkpoint.pt"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(argv, message, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 10-step run directory, copied by each test that damages it."""
    out = str(tmp_path_factory.mktemp("finished") / "run")
    assert cli.main(["train", "--steps", "10", "--out", out, *SMALL]) == 0
    return out


@pytest.mark.parametrize("flags,message", [
    (["--sampler", "mh", "--keep", "0.5"], "--keep applies to --sampler jacobian only (got --sampler mh)"),
    (["--sampler", "rejection", "--mh-steps", "3"], "--mh-steps applies to --sampler mh only"),
    (["--sampler", "mh", "--mh-steps", "0"], "--mh-steps must be a positive integer"),
    (["--sampler", "sir", "--sir-pool", "0"], "--sir-pool must be a positive integer"),
    (["--sampler", "rejection", "--gamma", "inf"], "--gamma must be a finite number"),
    (["--sampler", "gibbs"], "invalid choice"),
])
def test_bad_sampler_flags_are_one_line_and_exit_2(finished_run, flags, message, capsys):
    try:
        code = cli.main(["sample", finished_run, "-n", "10", *flags])
    except SystemExit as exit:
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def _damaged_copy(finished_run, tmp_path, damage):
    out = str(tmp_path / "damaged")
    shutil.copytree(finished_run, out)
    damage(out)
    return out


def _truncate_checkpoint(out):
    path = os.path.join(out, "checkpoint.pt")
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[: len(blob) // 2])


def _garbage_checkpoint(out):
    open(os.path.join(out, "checkpoint.pt"), "wb").write(os.urandom(4096))


def _empty_checkpoint(out):
    open(os.path.join(out, "checkpoint.pt"), "wb").close()


def _config_without_keys(out):
    path = os.path.join(out, "config.json")
    config = json.load(open(path))
    del config["hidden"], config["batch_size"]
    json.dump(config, open(path, "w"))


def _config_not_json(out):
    open(os.path.join(out, "config.json"), "w").write('{"data": "grid25", "hidden": ')


def _config_of_another_model(out):
    path = os.path.join(out, "config.json")
    json.dump(dict(json.load(open(path)), hidden=64), open(path, "w"))


def _assert_one_line_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.mark.parametrize("damage,command,needles", [
    (_truncate_checkpoint, "sample", ["checkpoint.pt", "truncated or damaged"]),
    (_truncate_checkpoint, "resume", ["checkpoint.pt", "truncated or damaged"]),
    (_garbage_checkpoint, "sample", ["checkpoint.pt", "truncated or damaged"]),
    (_garbage_checkpoint, "resume", ["checkpoint.pt", "truncated or damaged"]),
    (_empty_checkpoint, "sample", ["checkpoint.pt", "truncated or damaged"]),
    (_empty_checkpoint, "resume", ["checkpoint.pt", "truncated or damaged"]),
    (_config_without_keys, "resume", ["config.json", "missing hidden, batch_size"]),
    (_config_not_json, "resume", ["config.json", "not valid JSON"]),
    (_config_not_json, "eval", ["config.json", "not valid JSON"]),
    (_config_of_another_model, "resume", ["checkpoint.pt", "does not fit", "size mismatch"]),
])
def test_a_damaged_run_directory_is_one_line_and_exit_2(finished_run, tmp_path, capsys, damage, command, needles):
    out = _damaged_copy(finished_run, tmp_path, damage)
    argv = {"sample": ["sample", out, "-n", "10", "--out", str(tmp_path / "s.npy")],
            "resume": ["train", "--out", out, "--resume", "--steps", "12", "--quiet"],
            "eval": ["eval", out]}[command]
    code, _, err = run(argv, capsys)
    _assert_one_line_error(code, err, *needles)


@pytest.mark.parametrize("flags,needles", [
    (["--hidden", "64"], ["--hidden 64 (saved: 32)", "contradicts"]),
    (["--g-loss", "reverse_kl", "--seed", "3"], ["--g-loss reverse_kl (saved: nonsaturating)", "--seed 3 (saved: 0)"]),
    (["--data", "ring8"], ["--data ring8 (saved: grid25)"]),
    (["--fuse"], ["--fuse (saved: False)"]),
])
def test_resume_refuses_flags_that_contradict_the_run(finished_run, tmp_path, capsys, flags, needles):
    out = _damaged_copy(finished_run, tmp_path, lambda out: None)
    before = open(os.path.join(out, "checkpoint.pt"), "rb").read()
    code, _, err = run(["train", "--out", out, "--resume", "--steps", "12", "--quiet", *flags], capsys)
    _assert_one_line_error(code, err, *needles)
    assert open(os.path.join(out, "checkpoint.pt"), "rb").read() == before


def test_resume_applies_the_flags_it_may_change(finished_run, tmp_path, capsys):
    out = _damaged_copy(finished_run, tmp_path, lambda out: None)
    code, _, _ = run(["train", "--out", out, "--resume", "--steps", "14", "--log-every", "2", "--sample-keep", "1",
                      "--quiet"], capsys)
    assert code == 0
    config = strict_json(open(os.path.join(out, "config.json")).read())
    assert config["steps"] == 14 and config["log_every"] == 2 and config["sample_keep"] == 1
    steps = [strict_json(line)["step"] for line in open(os.path.join(out, "log.jsonl"))]
    assert steps == [10, 12, 14]
    assert strict_json(open(os.path.join(out, "metrics.json")).read())["samplers"]["jacobian"]["acceptance"] == 1


def test_backward_flag_chooses_the_gradients_and_a_resume_may_change_it(finished_run, tmp_path, capsys):
    out = _damaged_copy(finished_run, tmp_path, lambda out: None)
    assert strict_json(open(os.path.join(out, "config.json")).read())["backward"] == "auto"
    code, _, err = run(["train", "--out", out, "--resume", "--steps", "14", "--backward", "autograd"], capsys)
    assert code == 0 and "(derived backward)" not in err
    assert strict_json(open(os.path.join(out, "config.json")).read())["backward"] == "autograd"
    code, _, err = run(["train", "--steps", "4", "--out", str(tmp_path / "derived"), "--backward", "derived", *SMALL[:-1]],
                       capsys)
    assert code == 0 and "(derived backward)" in err


@pytest.mark.parametrize("flags,needle", [
    (["--d-loss", "hinge", "--g-loss", "hinge"], "the discriminator loss is 'hinge'"),
    (["--precision", "bf16"], "precision is 'bf16'"),
    (["--d-fourier", "2"], "the discriminator has Fourier input features"),
    (["--data", "shapes"], "the models are not fastgan's MLPGenerator and MLPDiscriminator"),
])
def test_backward_derived_where_it_does_not_apply_is_one_line(tmp_path, capsys, flags, needle):
    code, _, err = run(["train", "--steps", "1", "--out", str(tmp_path / "run"), "--backward", "derived", "--quiet",
                        *flags], capsys)
    _assert_one_line_error(code, err, "--backward derived: " + needle)


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run(["train", "--steps", "5", "--out", out, *SMALL], capsys)[0] == 0
    code, _, err = run(["train", "--steps", "5", "--out", out, *SMALL], capsys)
    assert code == 2 and "already holds a run" in err


def test_shapes_and_image_folder_runs(tmp_path, capsys):
    pytest.importorskip("PIL")
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray((np.random.rand(40, 36, 3) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    tiny = ["--steps", "2", "--batch-size", "4", "--hidden", "4", "--latent-dim", "8", "--log-every", "1", "--quiet"]
    out = str(tmp_path / "img")
    assert run(["train", "--data", str(folder), "--image-size", "32", "--out", out, *tiny], capsys)[0] == 0
    assert_png_figure(os.path.join(out, "samples.png"), 400, 400)
    assert np.load(os.path.join(out, "samples.npy")).shape == (2500, 3, 32, 32)
    out = str(tmp_path / "shapes")
    code, stdout, _ = run(["train", "--data", "shapes", "--out", out, *tiny], capsys)
    assert code == 0 and "modes" in stdout
    (folder / "bad.png").write_bytes(b"not a png")
    code, _, err = run(["train", "--data", str(folder), "--out", str(tmp_path / "bad"), *tiny], capsys)
    assert code == 2 and "bad.png" in err


def test_info_and_help(capsys):
    assert run(["info"], capsys)[0] == 0
    for command in ("train", "sample", "eval", "info"):
        with pytest.raises(SystemExit) as exit:
            cli.main([command, "--help"])
        assert exit.value.code == 0
        assert "usage" in capsys.readouterr().out


@pytest.mark.parametrize("data,components,steps,batch", [("grid25", 25, 10000, 256), ("ring8", 8, 8000, 256),
                                                         ("grid100", 100, 24000, 512)])
def test_toy_presets_have_one_latent_component_per_mode(data, components, steps, batch):
    config = cli._resolve_config(cli.build_parser().parse_args(["train", "--data", data, "--device", "cpu"]))
    assert (config["components"], config["steps"], config["batch_size"]) == (components, steps, batch)
    assert config["r1_gamma"] == (0.2 if data == "ring8" else 0.86)  # ring8's narrow modes: a weaker R1
    # grid25: StyleGAN2's Adam betas, robust to a rounding change (README)
    assert (config["beta1"], config["beta2"]) == ((0.0, 0.99) if data == "grid25" else (0.5, 0.999))
    given = cli._resolve_config(cli.build_parser().parse_args(["train", "--data", data, "--r1-gamma", "3"]))
    assert given["r1_gamma"] == 3.0  # a flag beats the preset
    flags = cli.build_parser().parse_args(["train", "--data", data, "--components", "0", "--steps", "7", "--device", "cpu"])
    assert (cli._resolve_config(flags)["components"], cli._resolve_config(flags)["steps"]) == (0, 7)
    assert cli._resolve_config(flags)["relocate_every"] == 0  # nothing to relocate without the mixture
    _, generator, discriminator = cli._build(config)
    assert generator.latent_dim == 9 and generator.prior.components == components
    # grid100 alone: a coarse-to-fine Fourier D and component relocation (README).
    expected = (7, 0.5, 30) if data == "grid100" else (0, 0.0, 0)
    assert (config["d_fourier"], config["d_coarse_to_fine"], config["relocate_every"]) == expected
    assert (discriminator.fourier_octaves, discriminator.coarse_to_fine) == expected[:2]
    trainer = cli._make_trainer(config, generator, discriminator)
    assert trainer.relocate_every == expected[2]
    assert config["final_hold"] == (pytest.approx(1 / 6) if data == "grid100" else 0.0)
    # grid100's schedules run over its first 20,000 steps; the last 4,000 hold the final learning rate.
    assert trainer.total_steps == (20000 if data == "grid100" else steps)


def test_final_hold_takes_a_fraction():
    config = cli._resolve_config(cli.build_parser().parse_args(["train", "--final-hold", "1/4", "--steps", "400",
                                                                "--device", "cpu"]))
    assert config["final_hold"] == 0.25 and cli._schedule_steps(config) == 300


def test_a_config_saved_before_the_grid100_settings_still_builds_and_resumes():
    """Runs saved before --d-fourier, --d-coarse-to-fine, --relocate-every and --final-hold
    existed trained without them: sampling rebuilds them so, and a resume keeps them off."""
    config = cli._resolve_config(cli.build_parser().parse_args(["train", "--data", "grid100", "--device", "cpu"]))
    for key in ("d_fourier", "d_coarse_to_fine", "relocate_every", "final_hold"):
        del config[key]
    cli._check_saved_config(config, "old config")
    _, generator, discriminator = cli._build(config)
    trainer = cli._make_trainer(config, generator, discriminator)
    assert discriminator.fourier_octaves == 0 and trainer.relocate_every == 0
    assert trainer.total_steps == config["steps"]  # no final hold: the schedules span the run
    resumed = cli._apply_resume_flags(dict(config), cli.build_parser().parse_args(["train", "--resume"]), "old/config.json")
    assert (resumed["d_fourier"], resumed["d_coarse_to_fine"], resumed["relocate_every"], resumed["final_hold"]) == \
        (0, 0.0, 0, 0.0)
    with pytest.raises(cli.UsageError, match=r"--relocate-every 60 \(saved: 0\) contradicts"):
        cli._apply_resume_flags(dict(config), cli.build_parser().parse_args(["train", "--resume", "--relocate-every",
                                                                             "60"]), "old/config.json")


def test_components_are_refused_for_the_dcgan(capsys):
    code = cli.main(["train", "--data", "shapes", "--model", "dcgan", "--components", "4", "--steps", "1"])
    assert code == 2 and "--components (a mixture latent prior) applies to the MLP toy models and --model layered only" \
        in capsys.readouterr().err
    code = cli.main(["train", "--data", "ring8", "--model", "layered", "--steps", "1"])
    assert code == 2 and "--model layered makes images" in capsys.readouterr().err
    code = cli.main(["train", "--data", "shapes", "--beta1", "1", "--steps", "1"])
    assert code == 2 and "--beta1 must be in [0, 1)" in capsys.readouterr().err


def test_shapes_preset_reaches_the_config_models_and_optimisers():
    from fastgan import models

    config = cli._resolve_config(cli.build_parser().parse_args(["train", "--data", "shapes", "--device", "cpu"]))
    expected = dict(model="layered", image_size=32, latent_dim=32, components=48, hidden=32, d_hidden=24, mask="coordinates",
                    steps=6500, batch_size=48, lr_g=2e-3, lr_d=2e-3, beta1=0.0, beta2=0.99, r1_gamma=0.2,
                    r1_every=4, ema_decay=0.99, lr_decay=1.0, d_loss="bce", g_loss="nonsaturating")
    assert {key: config[key] for key in expected} == expected
    _, generator, discriminator = cli._build(config)
    assert isinstance(generator, models.LayeredGenerator) and isinstance(discriminator, models.ConvDiscriminator)
    assert discriminator.net[0].out_channels == 24 and generator.mask.width == 32
    assert generator.latent_dim == 33 and generator.prior.means.shape == (48, 32)
    trainer = cli._make_trainer(config, generator, discriminator)
    assert trainer.opt_d.param_groups[0]["betas"] == (0.0, 0.99) and trainer.r1_gamma == 0.2
    assert trainer.ema_decay == 0.99 and trainer.lr_g == 2e-3
    # Flags override the preset; --model dcgan drops the layered generator's mixture latent.
    flags = ["train", "--data", "shapes", "--device", "cpu", "--components", "24", "--beta1", "0.5", "--steps", "9"]
    config = cli._resolve_config(cli.build_parser().parse_args(flags))
    assert (config["components"], config["beta1"], config["steps"]) == (24, 0.5, 9)
    config = cli._resolve_config(cli.build_parser().parse_args(["train", "--data", "shapes", "--model", "dcgan",
                                                                "--device", "cpu"]))
    assert config["model"] == "dcgan" and config["components"] == 0
    assert isinstance(cli._build(config)[1], models.DCGANGenerator)
    # Other image sets keep the DCGAN preset, and the toy presets their Adam.
    assert cli.IMAGE_DEFAULTS["model"] == "dcgan" and (cli.TOY_DEFAULTS["beta1"], cli.TOY_DEFAULTS["beta2"]) == (0.5, 0.999)


def test_the_layered_mask_is_a_flag_and_runs_saved_before_it_keep_the_convolutions(capsys):
    from fastgan import models

    parse = cli.build_parser().parse_args
    assert cli.MASK_CHOICES == models.LAYERED_MASKS
    config = cli._resolve_config(parse(["train", "--data", "shapes", "--device", "cpu"]))
    assert config["mask"] == "coordinates" and isinstance(cli._build(config)[1].mask, models.CoordinateMask)
    chosen = cli._resolve_config(parse(["train", "--data", "shapes", "--device", "cpu", "--mask", "convolutions"]))
    assert chosen["mask"] == "convolutions" and cli._build(chosen)[1].mask_kind == "convolutions"
    dcgan = cli._resolve_config(parse(["train", "--data", "shapes", "--model", "dcgan", "--device", "cpu"]))
    assert "mask" not in dcgan
    assert "mask" not in cli._apply_resume_flags(dict(dcgan), parse(["train", "--resume"]), "dcgan/config.json")
    with pytest.raises(cli.UsageError, match="--mask chooses --model layered's mask network; it does not apply to "
                                             "--model dcgan"):
        cli._apply_resume_flags(dict(dcgan), parse(["train", "--resume", "--mask", "coordinates"]), "dcgan/config.json")
    for flags, model in ((["--data", "shapes", "--model", "dcgan"], "dcgan"), (["--data", "grid25"], "mlp")):
        assert cli.main(["train", *flags, "--mask", "convolutions", "--steps", "1"]) == 2
        assert f"--mask chooses --model layered's mask network; it does not apply to --model {model}" \
            in capsys.readouterr().err
    # A layered run saved before the flag existed trained the convolutional mask: it rebuilds and resumes so.
    old = dict(config)
    del old["mask"]
    cli._check_saved_config(old, "old config")
    assert cli._build(old)[1].mask_kind == "convolutions"
    assert cli._apply_resume_flags(dict(old), parse(["train", "--resume"]), "old/config.json")["mask"] == "convolutions"
    with pytest.raises(cli.UsageError, match=r"--mask coordinates \(saved: convolutions\) contradicts"):
        cli._apply_resume_flags(dict(old), parse(["train", "--resume", "--mask", "coordinates"]), "old/config.json")
    with pytest.raises(cli.UsageError, match="mask is 'pixels', not one of coordinates, convolutions"):
        cli._check_saved_config(dict(config, mask="pixels"), "run/config.json")


def test_shapes_run_samples_again_from_its_checkpoint(tmp_path, capsys):
    """`fastgan sample` of a shapes run rebuilds the layered generator and its mixture latent from
    the checkpoint: with the run's seed it redraws the run's own samples exactly."""
    out = str(tmp_path / "shapes")
    tiny = ["--steps", "3", "--batch-size", "8", "--hidden", "4", "--log-every", "1", "--quiet"]
    assert run(["train", "--data", "shapes", "--out", out, *tiny], capsys)[0] == 0
    config = strict_json(open(os.path.join(out, "config.json")).read())
    assert (config["model"], config["components"], config["beta1"], config["beta2"]) == ("layered", 48, 0.0, 0.99)
    state = torch.load(os.path.join(out, "checkpoint.pt"), map_location="cpu", weights_only=True)
    assert state["config"]["model"] == "layered"
    means = [value for key, value in state["generator"].items() if key.endswith("prior.means")]
    assert len(means) == 1 and means[0].shape == (48, 32)
    again = str(tmp_path / "again.npy")
    code, stdout, _ = run(["sample", out, "-n", "2500", "--seed", "2", "--out", again], capsys)
    assert code == 0 and "(3, 32, 32)" in stdout
    assert np.array_equal(np.load(again), np.load(os.path.join(out, "samples.npy")))
    code, _, _ = run(["sample", out, "-n", "5", "--sampler", "rejection", "--out", str(tmp_path / "r.npy")], capsys)
    assert code == 0 and np.load(tmp_path / "r.npy").shape == (5, 3, 32, 32)
