"""The ``fastgan`` command line (also ``python -m fastgan``).

Subcommands:
  train   train a GAN (default: the tuned MLP GAN on the embedded grid25 mixture) into a run
          directory: config.json, log.jsonl, metrics.json, samples.npy, samples.png,
          training.png, checkpoint.pt
  sample  draw samples from a run's checkpoint
  eval    score samples (a run's, or a .npy file) with the mode-coverage metrics
  info    what fastgan can run here: versions, the CUDA extension's build flags, the device,
          and each backend's availability with the reason when it is not available.

Bad arguments are one line on stderr and exit status 2 (set FASTGAN_DEBUG=1 for tracebacks);
so is a damaged run directory (a truncated checkpoint, a config.json with missing keys) and a
``--resume`` flag that contradicts the saved run. The JSON files are strict JSON (``null``
for an undefined number, never ``NaN``).

Several processes: ``torchrun --nproc_per_node=K -m fastgan train ...`` trains data-parallel
(one GPU per process, NCCL; gloo with ``--device cpu``). ``--batch-size`` stays the global
batch; only rank 0 prints, writes the run directory and evaluates.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from fractions import Fraction


def collect_info() -> dict:
    """Versions, build flags, device and backend availability, as a JSON-able dict."""
    import torch

    import fastgan
    from fastgan import _backend, _native

    triton_module, triton_reason = _backend._triton_status()
    extension, extension_reason = _backend._compiled_extension_status()
    if _backend.emulating():
        emulated, emulated_reason = _backend._emulated_extension_status()
        emulation = f"on: {emulated.__file__}" if emulated is not None else f"on, unavailable: {emulated_reason}"
    else:
        emulation = "off (FASTGAN_CUDA_EMULATE=1 runs the cuda backend's kernels on CPU tensors)"
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        device = f"cuda:{index} {torch.cuda.get_device_name(index)} (sm_{major}{minor})"
    else:
        device = "cpu (no CUDA device visible)"
    return {
        "fastgan": fastgan.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_module.__version__ if triton_module is not None else None,
        "cuda_extension": extension.build_info() if extension is not None else None,
        "cuda_extension_missing": extension_reason or None,
        "cuda_emulation": emulation,
        "cpu_kernels": _native.status(),
        "device": device,
        "environment": {
            name: value
            for name, value in (
                ("FASTGAN_BACKEND", _env("FASTGAN_BACKEND")),
                ("TRITON_INTERPRET", _env("TRITON_INTERPRET")),
                ("FASTGAN_CUDA_EMULATE", _env("FASTGAN_CUDA_EMULATE")),
                (_native.ENV_SWITCH, _env(_native.ENV_SWITCH)),
            )
            if value is not None
        },
        "backends": {
            name: {"available": status.available, "reason": status.reason}
            for name, status in fastgan.backends().items()
        },
        "triton_missing": triton_reason or None,
    }


def _env(name: str):
    import os

    return os.environ.get(name)


def format_info(info: dict) -> str:
    extension = info["cuda_extension"]
    if extension is not None:
        version = extension["cuda_runtime_version"]
        built = f"built (CUDA runtime {version // 1000}.{version % 1000 // 10}, archs {extension['cuda_archs']})"
    else:
        built = f"not built: {info['cuda_extension_missing']}"
    lines = [
        f"fastgan {info['fastgan']}",
        f"  python        {info['python']}",
        f"  torch         {info['torch']}" + (f" (CUDA {info['torch_cuda']})" if info["torch_cuda"] else " (CPU build)"),
        f"  triton        {info['triton'] or 'not installed'}",
        f"  extension     {built}",
        f"  emulation     {info['cuda_emulation']}",
        f"  cpu kernels   {info['cpu_kernels']}",
        f"  device        {info['device']}",
    ]
    for name, value in info["environment"].items():
        lines.append(f"  {name:<13} {value}")
    lines.append("backends:")
    for name, status in info["backends"].items():
        mark = "yes" if status["available"] else "no "
        lines.append(f"  {name:<7} {mark} {status['reason']}".rstrip())
    return "\n".join(lines)


class UsageError(Exception):
    """A bad argument or input: reported as one line, exit status 2.

    ``every_rank``: the error may hold on some processes of a torchrun launch only (their GPU
    count, their filesystem), so each process reports it itself, prefixed with its rank;
    otherwise the processes all fail alike and rank 0 alone reports it."""

    def __init__(self, message: str, *, every_rank: bool = False) -> None:
        super().__init__(message)
        self.every_rank = every_rank


def _cmd_info(args: argparse.Namespace) -> int:
    info = collect_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


# --------------------------------------------------------------------------------------
# Defaults. The toy preset is the tuned recipe (see README: 5-seed results and wall time).
# --------------------------------------------------------------------------------------

TOY_DEFAULTS = dict(
    model="mlp", latent_dim=8, components=None, hidden=128, layers=3, d_hidden=None, d_layers=None, d_loss="bce", g_loss="nonsaturating", alpha=None,
    steps=11000, batch_size=256, lr_g=3e-3, lr_d=9e-3, beta1=0.5, beta2=0.999, lr_decay=0.02, d_steps=1,
    r1_gamma=0.86, r1_every=1, ema_decay=0.999, log_every=500, sample_keep=0.85, mh_steps=20, sir_pool=20,
    d_fourier=0, d_coarse_to_fine=0.0, relocate_every=0, final_hold=0.0,
)
# grid100's own preset: the toy preset with these changes (see README). 100 modes: a batch of 512
# (about five samples of each mode per D step) and more steps. Modes 1/180 of the extent wide:
# a discriminator with Fourier input features of 7 octaves, brought in coarse to fine over the
# first half (a plain MLP D left samples smeared between modes: 38-50 % high-quality), and
# relocation of the components D rates over-covered to the modes it says are empty (models.py,
# relocation.py: without it 15-23 modes stayed empty, duplicates trapped on their neighbours),
# every 30 steps from 30 % to 70 % of the schedule, so the last moved components have 30 % to
# settle. Then the last 4,000 of 24,000 steps hold the final learning rate (the schedules run
# over the first 20,000): the components' samples keep tightening there (seed 0: 97.6 % high
# quality at 20,000 steps, 98.6 % after the hold).
GRID100_OVERRIDES = dict(steps=24000, batch_size=512, d_fourier=7, d_coarse_to_fine=0.5, relocate_every=30,
                         final_hold=1 / 6)
# ring8's own preset: a weaker R1 penalty. Its modes are 5x narrower (σ 0.01) on a 4x smaller
# extent than grid25's, so the same γ smooths the discriminator over the modes' own width and it
# cannot pull in their tails (γ 0.86: 84-99 % high-quality over 5 seeds; 0.2: 98.4-99.8 %).
# Its 8 modes are learnt sooner than grid25's 25: 8,000 steps give 98.8-99.3 % (11,000 gave
# 98.4-99.8 %) in 0.73x the time, a margin under the 60 s budget that survives slow hours.
RING8_OVERRIDES = dict(r1_gamma=0.2, steps=8000)
# grid25's own preset: Adam without momentum and with a second moment over ~100 steps,
# β = (0, 0.99) (StyleGAN2's), for 10,000 steps. With the toy preset's β = (0.5, 0.999) and
# 11,000 steps, a float32 rounding change alone (this CPU's derived backward groups its products
# otherwise than autograd) took seeds 0-4 from 97.5-98.6 % high-quality to 92.3-98.0 %:
# components were still drifting at the end and the EMA averaged the drift. With (0, 0.99)
# the EMA generator is at 92-98 % by step 6,000 and 99.5-100 % at 10,000, on both backwards.
GRID25_OVERRIDES = dict(beta1=0.0, beta2=0.99, steps=10000)
TOY_OVERRIDES = {"grid25": GRID25_OVERRIDES, "grid100": GRID100_OVERRIDES, "ring8": RING8_OVERRIDES}
IMAGE_DEFAULTS = dict(
    model="dcgan", latent_dim=100, components=0, hidden=64, layers=None, d_hidden=None, d_layers=None, d_loss="bce", g_loss="nonsaturating", alpha=None,
    steps=5000, batch_size=128, lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999, lr_decay=1.0, d_steps=1, r1_gamma=0.0,
    r1_every=4, ema_decay=0.999, log_every=100, sample_keep=0.85, mh_steps=5, sir_pool=5,
    d_fourier=0, d_coarse_to_fine=0.0, relocate_every=0, final_hold=0.0,
)
# The embedded shapes set's own preset: the layered generator with a mixture latent of two
# components per mode (24 modes; with one per mode, components that land on the same mode
# leave others empty) and its coordinate mask, 32 units wide (transposed convolutions made
# rounded squares and lumpy circles: 75-88 % valid, against about 90 % with it); a
# normalisation-free discriminator of width 24 with R1, at batch 48; Adam (0, 0.99) at a
# high learning rate and a short EMA. README: measured results and wall times.
SHAPES_DEFAULTS = dict(
    IMAGE_DEFAULTS, model="layered", latent_dim=32, components=48, hidden=32, d_hidden=24, steps=6500,
    batch_size=48, lr_g=2e-3, lr_d=2e-3, beta1=0.0, beta2=0.99, r1_gamma=0.2, r1_every=4, ema_decay=0.99,
)
SAMPLES = 2500  # the PacGAN/VEEGAN protocol
MASK_CHOICES = ("coordinates", "convolutions")  # fastgan.models.LAYERED_MASKS (imported lazily)
BACKWARD_CHOICES = ("auto", "autograd", "derived")  # fastgan.trainer.BACKWARDS (imported lazily)
SAMPLERS_CHOICES = ("none", "jacobian", "rejection", "mh", "sir")  # fastgan.sampling.SAMPLERS (imported lazily)
# The samplers a run reports beside the generator alone (fastgan.sampling).
REPORTED_SAMPLERS = ("jacobian", "rejection", "mh", "sir")
# Rejection sampling gives up after this many candidates per sample (its acceptance rate is
# exp(-max log-ratio); a sharper discriminator makes it slower, not wrong).
REJECTION_PROPOSALS_PER_SAMPLE = 50

# Reference scores on grid25 (modes / high-quality % / reverse KL), printed beside a run's.
GRID25_REFERENCES = (
    ("PacGAN paper, GAN", "17.3", "94.8", "0.70"),
    ("PacGAN paper, PacGAN4", "24.8", "93.6", "0.04"),
    ("the true mixture itself", "25", "98.9", "~0"),  # a narrower generator reads higher
)


def _data_kind(name: str) -> str:
    from fastgan.data import TOY_MIXTURES

    if name in TOY_MIXTURES:
        return "toy"
    if name == "shapes":
        return "shapes"
    return "images"


def _resolve_config(args: argparse.Namespace) -> dict:
    """The run's full configuration: the preset for the data kind, overridden by the flags given."""
    data = args.data or "grid25"
    kind = _data_kind(data)
    config = dict({"toy": TOY_DEFAULTS, "shapes": SHAPES_DEFAULTS}.get(kind, IMAGE_DEFAULTS))
    config.update(TOY_OVERRIDES.get(data, {}))
    for key in list(config) + ["image_size"]:
        value = getattr(args, key, None)
        if value is not None:
            config[key] = value
    config.update(
        data=data, data_kind=kind, precision=args.precision or "fp32", cuda_graphs=args.cuda_graphs or "auto",
        backend=args.backend, device=args.device or ("cuda" if _cuda_available() else "cpu"),
        seed=args.seed if args.seed is not None else 0, fuse=args.fuse, backward=args.backward or "auto",
    )
    if kind == "toy" and config["components"] is None:
        from fastgan.data import toy_mixture

        # The toy preset's mixture latent has one component per mode of the data (see README).
        config["components"] = int(toy_mixture(data).centres.shape[0])
    if kind != "toy":
        config.setdefault("image_size", 32 if kind == "shapes" else 64)
        config["image_size"] = config.get("image_size") or (32 if kind == "shapes" else 64)
        if config["model"] not in ("dcgan", "layered"):
            config["model"] = "dcgan"
        if config["model"] == "dcgan" and args.components is None:
            config["components"] = 0  # the preset's mixture latent belongs to the layered generator
    _check_mask_applies(getattr(args, "mask", None), config["model"])
    if config["model"] == "layered":
        config["mask"] = getattr(args, "mask", None) or "coordinates"
    if not config.get("components") and getattr(args, "relocate_every", None) is None:
        config["relocate_every"] = 0  # the preset's relocation moves mixture components: none to move
    _validate(config)
    return config


def _check_mask_applies(mask, model) -> None:
    """``--mask`` (given, or None) belongs to ``--model layered``; with another model it is a one-line error."""
    if mask is not None and model != "layered":
        raise UsageError(f"--mask chooses --model layered's mask network; it does not apply to --model {model}")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _validate(config: dict) -> None:
    from fastgan import losses

    for key in ("steps", "batch_size", "latent_dim", "hidden", "layers", "d_hidden", "d_layers", "d_steps", "r1_every",
                "log_every"):
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or value < (0 if key == "steps" else 1)):
            raise UsageError(f"--{key.replace('_', '-')} must be a {'non-negative' if key == 'steps' else 'positive'} integer, got {value}")
    for key in ("lr_g", "lr_d"):
        if not config[key] > 0:
            raise UsageError(f"--{key.replace('_', '-')} must be > 0, got {config[key]}")
    if not config["r1_gamma"] >= 0:
        raise UsageError(f"--r1-gamma must be >= 0, got {config['r1_gamma']}")
    if not 0 < config.get("sample_keep", 1.0) <= 1:
        raise UsageError(f"--sample-keep must be in (0, 1], got {config['sample_keep']}")
    components = config.get("components")
    if components is not None and (not isinstance(components, int) or components < 0):
        raise UsageError(f"--components must be a non-negative integer, got {components}")
    if components and config["data_kind"] != "toy" and config.get("model") != "layered":
        raise UsageError("--components (a mixture latent prior) applies to the MLP toy models and --model layered only")
    fourier = config.get("d_fourier", 0)
    if not isinstance(fourier, int) or not 0 <= fourier <= 16:
        raise UsageError(f"--d-fourier must be an integer from 0 to 16, got {fourier}")
    if fourier and config["data_kind"] != "toy":
        raise UsageError("--d-fourier (Fourier input features) applies to the toy MLP discriminator only")
    coarse_to_fine = config.get("d_coarse_to_fine", 0.0)
    if not 0 <= coarse_to_fine <= 1:
        raise UsageError(f"--d-coarse-to-fine must be a fraction of the schedule in [0, 1], got {coarse_to_fine}")
    if coarse_to_fine and not fourier:
        raise UsageError("--d-coarse-to-fine schedules the octaves of --d-fourier: give --d-fourier too")
    final_hold = config.get("final_hold", 0.0)
    if not (isinstance(final_hold, (int, float)) and not isinstance(final_hold, bool) and 0 <= final_hold < 1):
        raise UsageError(f"--final-hold must be a fraction of the run in [0, 1), got {final_hold}")
    relocate_every = config.get("relocate_every", 0)
    if not isinstance(relocate_every, int) or relocate_every < 0:
        raise UsageError(f"--relocate-every must be a non-negative integer, got {relocate_every}")
    if relocate_every and not (config["data_kind"] == "toy" and components):
        raise UsageError("--relocate-every moves mixture-latent components: it needs the toy MLP generator with "
                         "--components > 0")
    if config.get("model") == "layered" and config["data_kind"] == "toy":
        raise UsageError("--model layered makes images; the toy mixtures take --model mlp")
    for key in ("beta1", "beta2"):
        value = config.get(key, 0.5)
        if not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise UsageError(f"--{key} must be in [0, 1), got {value}")
    for key in ("mh_steps", "sir_pool"):
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UsageError(f"--{key.replace('_', '-')} must be a positive integer, got {value}")
    if not 0 < config["lr_decay"] <= 1:
        raise UsageError(f"--lr-decay must be in (0, 1], got {config['lr_decay']}")
    if config["ema_decay"] is not None and not 0 <= config["ema_decay"] < 1:
        raise UsageError(f"--ema-decay must be in [0, 1), got {config['ema_decay']}")
    available = losses.available()
    if config["d_loss"] not in available["discriminator"]:
        raise UsageError(f"unknown discriminator loss {config['d_loss']!r}; choose from {', '.join(available['discriminator'])}")
    if config["g_loss"] not in available["generator"]:
        raise UsageError(f"unknown generator loss {config['g_loss']!r}; choose from {', '.join(available['generator'])}")
    alpha = config.get("alpha")
    if config["g_loss"] == "renyi":
        if alpha is None:
            raise UsageError("--g-loss renyi needs --alpha (a real >= 0; 1 is reverse KL)")
        if not (alpha >= 0 and alpha < float("inf")):
            raise UsageError(f"--alpha must be a finite real >= 0, got {alpha}")
    elif alpha is not None:
        raise UsageError(f"--alpha applies to --g-loss renyi only (got --g-loss {config['g_loss']})")
    if config["data_kind"] == "images" and not os.path.exists(config["data"]):
        raise UsageError(f"--data {config['data']!r}: no such toy mixture, 'shapes', file or folder")
    if config["device"].startswith("cuda") and not _cuda_available():
        raise UsageError(f"--device {config['device']}: CUDA is not available on this machine")
    if config["cuda_graphs"] == "on" and not config["device"].startswith("cuda"):
        raise UsageError("--cuda-graphs on needs a CUDA device (use auto or off)")


# Keys every saved config holds (the others are read with defaults).
_CONFIG_KEYS = ("data", "data_kind", "model", "latent_dim", "hidden", "layers", "d_loss", "g_loss", "steps",
                "batch_size", "lr_g", "lr_d", "lr_decay", "d_steps", "r1_gamma", "r1_every", "ema_decay", "log_every",
                "precision", "cuda_graphs", "backend", "device", "seed", "fuse")
# Settings added after runs were first saved, with the value such runs trained with.
_ADDED_SETTINGS = {"d_fourier": 0, "d_coarse_to_fine": 0.0, "relocate_every": 0, "final_hold": 0.0,
                   "mask": "convolutions", "backward": "auto"}
# Flags a resumed run may change: how far and how it runs, not what it trains.
_RESUME_MAY_CHANGE = ("steps", "log_every", "sample_keep", "mh_steps", "sir_pool", "device", "precision",
                      "cuda_graphs", "backend", "backward")
_SETTING_CHOICES = {"data_kind": ("toy", "shapes", "images"), "model": ("mlp", "dcgan", "layered"), "precision": ("fp32", "bf16"),
                    "cuda_graphs": ("auto", "on", "off"), "backend": (None, "auto", "cuda", "triton", "torch"),
                    "fuse": (True, False), "mask": MASK_CHOICES, "backward": BACKWARD_CHOICES}


def _read_json_object(path: str) -> dict:
    """A JSON object from ``path``; a missing, unreadable or malformed file is a one-line error naming it."""
    try:
        with open(path) as file:
            value = json.load(file)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: cannot read it ({error})") from None
    except ValueError as error:
        raise UsageError(f"{path}: not valid JSON ({error}); the run directory is damaged") from None
    if not isinstance(value, dict):
        raise UsageError(f"{path}: not a JSON object; the run directory is damaged")
    return value


def _check_saved_config(config: dict, source: str) -> None:
    """A run's saved configuration (``source`` names where it came from) holds every key with a
    usable value; else a one-line error naming the source and the keys."""
    missing = [key for key in _CONFIG_KEYS if key not in config]
    if config.get("data_kind") in ("shapes", "images") and "image_size" not in config:
        missing.append("image_size")
    if missing:
        raise UsageError(f"{source}: missing {', '.join(missing)}; the run directory is damaged "
                         "(a config.json written by fastgan train holds them all)")
    for key, choices in _SETTING_CHOICES.items():
        if key in config and config[key] not in choices:  # mask: only layered runs since it exists hold it
            raise UsageError(f"{source}: {key} is {config[key]!r}, not one of "
                             f"{', '.join(map(str, choices))}; the run directory is damaged")
    if not isinstance(config["data"], str) or not isinstance(config["device"], str):
        raise UsageError(f"{source}: data and device must be strings; the run directory is damaged")
    try:
        _validate(dict(config, device="cpu", cuda_graphs="auto"))  # the device is checked where the run continues
    except UsageError as error:
        raise UsageError(f"{source}: {error}") from None
    except TypeError as error:  # e.g. a string where a number belongs
        raise UsageError(f"{source}: a value has the wrong type ({error}); the run directory is damaged") from None


def _flags_given(args: argparse.Namespace) -> dict:
    """The configuration keys set on the command line, with their values."""
    keys = list(TOY_DEFAULTS) + ["mask", "image_size", "data", "precision", "cuda_graphs", "backend", "device", "seed",
                                 "backward"]
    given = {key: getattr(args, key) for key in keys if getattr(args, key, None) is not None}
    if args.fuse:
        given["fuse"] = True
    return given


def _flag_text(key: str, value) -> str:
    flag = "--" + key.replace("_", "-")
    return flag if value is True else f"{flag} {value}"


def _same_setting(key: str, given, saved) -> bool:
    if key == "data" and isinstance(saved, str):
        return os.path.normpath(given) == os.path.normpath(saved)
    return given == saved


def _apply_resume_flags(config: dict, args: argparse.Namespace, config_path: str) -> dict:
    """The saved ``config`` with the flags a resumed run may change applied; a flag that would
    change what the run trains (model, data, losses, optimiser, seed) is refused in one line."""
    given = _flags_given(args)
    _check_mask_applies(given.get("mask"), config.get("model"))
    for key, default in _ADDED_SETTINGS.items():  # runs saved before these settings existed trained without them
        if key != "mask" or config.get("model") == "layered":  # the mask belongs to the layered generator alone
            config.setdefault(key, default)
    conflicts = [(key, value) for key, value in given.items()
                 if key not in _RESUME_MAY_CHANGE and not _same_setting(key, value, config.get(key))]
    if conflicts:
        described = ", ".join(f"{_flag_text(key, value)} (saved: {config.get(key)})" for key, value in conflicts)
        allowed = ", ".join("--" + key.replace("_", "-") for key in _RESUME_MAY_CHANGE)
        raise UsageError(f"--resume: {described} contradicts the run in {config_path}; a resumed run keeps what it "
                         f"trains (only {allowed} may change; start a new --out to train something else)")
    config = dict(config, **{key: value for key, value in given.items() if key in _RESUME_MAY_CHANGE})
    if "device" not in given and config["device"].startswith("cuda") and not _cuda_available():
        raise UsageError(f"--resume: the run in {config_path} trained on {config['device']} but CUDA is not "
                         "available here; pass --device cpu to continue it on the CPU")
    _validate(config)
    return config


def _build(config: dict):
    """(data, generator, discriminator) for a configuration (models initialised from the global seed)."""
    import torch

    from fastgan import data as data_module
    from fastgan import models

    torch.manual_seed(config["seed"])
    kind = config["data_kind"]
    if kind == "toy":
        data = data_module.toy_mixture(config["data"])
        extent = float(data.centres.abs().max()) + 3 * data.std
        generator = models.MLPGenerator(config["latent_dim"], 2, config["hidden"], config["layers"], scale=extent,
                                        components=config.get("components") or 0)
        discriminator = models.MLPDiscriminator(2, config.get("d_hidden") or config["hidden"],
                                                config.get("d_layers") or config["layers"], scale=extent,
                                                fourier_octaves=config.get("d_fourier", 0),
                                                coarse_to_fine=config.get("d_coarse_to_fine", 0.0))
        return data, generator, discriminator
    if kind == "shapes":
        data = data_module.ShapesDataset(size=config["image_size"])
        channels = 3
    else:
        try:
            data = data_module.ImageDataset.from_path(config["data"], size=config["image_size"])
        except (ValueError, FileNotFoundError, OSError) as error:
            raise UsageError(str(error)) from None
        channels = data.shape[0]
    d_width = config.get("d_hidden") or config["hidden"]
    if config["model"] == "layered":
        generator = models.LayeredGenerator(config["latent_dim"], channels, config["image_size"], config["hidden"],
                                            components=config.get("components") or 0,
                                            mask=config.get("mask") or _ADDED_SETTINGS["mask"])
        return data, generator, models.ConvDiscriminator(channels, config["image_size"], d_width)
    generator = models.DCGANGenerator(config["latent_dim"], channels, config["image_size"], config["hidden"])
    discriminator = models.DCGANDiscriminator(channels, config["image_size"], d_width)
    return data, generator, discriminator


def _fraction_argument(text: str) -> float:
    """A number such as 0.25, or a fraction such as 1/6 (argparse type)."""
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction such as 1/6, got {text!r}") from None


def _schedule_steps(config: dict) -> int:
    """The length of a run's schedules: its steps less the ``final_hold`` fraction at the end,
    which holds the final learning rate (at least 1)."""
    return max(1, round(config["steps"] * (1.0 - config.get("final_hold", 0.0))))


def _make_trainer(config: dict, generator, discriminator, device=None):
    from fastgan import Trainer

    graphs = {"auto": "auto", "on": True, "off": False}[config["cuda_graphs"]]
    return Trainer(
        generator, discriminator, d_loss=config["d_loss"], g_loss=config["g_loss"],
        g_loss_params={"alpha": config["alpha"]} if config["g_loss"] == "renyi" else None,
        lr_g=config["lr_g"], lr_d=config["lr_d"], betas=(config.get("beta1", 0.5), config.get("beta2", 0.999)),
        lr_decay=config["lr_decay"], total_steps=_schedule_steps(config),
        d_steps=config["d_steps"], r1_gamma=config["r1_gamma"], r1_every=config["r1_every"], ema_decay=config["ema_decay"],
        relocate_every=config.get("relocate_every", 0), precision=config["precision"],
        device=device or config["device"], seed=config["seed"], fuse=config["fuse"], cuda_graphs=graphs,
        backend=config["backend"], backward=config.get("backward", "auto"),
    )


class Progress:
    """The progress bar (tqdm, on stderr): steps done, it/s, ETA and the latest losses.

    ``enabled`` False: nothing. Otherwise shown when stderr is a terminal, or anyway with
    ``always`` (e.g. ``--progress`` in a log file)."""

    def __init__(self, total: int, start: int = 0, stream=None, enabled: bool = True, always: bool = False) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=start, file=stream or sys.stderr, dynamic_ncols=True, leave=True,
                        disable=True if not enabled else (False if always else None))

    def update(self, record) -> None:
        self.bar.set_postfix_str(
            f"d_loss {record.d_loss:.4f}, g_loss {record.g_loss:.4f}, divergence {record.divergence:.4f}, "
            f"D(real) {record.d_real:.3f}, D(fake) {record.d_fake:.3f}", refresh=False)
        self.bar.update(record.step - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _strict_json_value(value):
    """``value`` with every non-finite float (NaN, ±inf) replaced by None, so that it is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json_value(item) for item in value]
    return value


def _json_text(value, indent=None) -> str:
    """Strict JSON (``null`` for an undefined number, never ``NaN``)."""
    return json.dumps(_strict_json_value(value), indent=indent, allow_nan=False)


def _write_json(path: str, value) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w") as file:
        file.write(_json_text(value, indent=2) + "\n")
    os.replace(temporary, path)


def _evaluate(config: dict, samples) -> dict:
    from fastgan import metrics

    if config["data_kind"] == "toy":
        return metrics.toy_metrics(samples, config["data"]).as_dict()
    if config["data_kind"] == "shapes":
        return metrics.shapes_metrics(samples).as_dict()
    return {}


def _figure_title(config: dict, result: dict, steps: int) -> str:
    """The run and its metrics in one line, for the samples figure (the generator alone)."""
    parts = [os.path.basename(os.path.normpath(config["data"])), f"{steps} steps", "generator alone"]
    if result:
        parts += [f"modes {result['modes']}/{result['num_modes']}", f"high-quality {100 * result['high_quality']:.1f} %",
                  f"reverse KL {result['reverse_kl']:.3f}"]
    return " · ".join(parts)


def _sampler_options(config: dict, sampler: str, n: int) -> dict:
    """The options of ``sampler`` (fastgan.sampling) for n samples under a run's configuration."""
    if sampler == "jacobian":
        return {"keep": config.get("sample_keep", 0.85)}
    if sampler == "rejection":
        return {"burn_in": 10_000 if config["data_kind"] == "toy" else 1_000,
                "max_proposals": REJECTION_PROPOSALS_PER_SAMPLE * n}
    if sampler == "mh":
        return {"steps": config.get("mh_steps", 20)}
    if sampler == "sir":
        return {"pool": config.get("sir_pool", 20)}
    return {}


def _draw(trainer, config: dict, sampler: str, n: int, seed: int, **options):
    """A :class:`fastgan.sampling.SampleResult` of n samples from a trained run: its EMA
    generator (or G) through ``sampler``, the discriminator's logit as the log-ratio."""
    import torch

    from fastgan.sampling import sample_models

    generator = trainer.ema if trainer.ema is not None else trainer.generator
    options = {**_sampler_options(config, sampler, n), **options}
    return sample_models(generator, trainer.discriminator if sampler not in ("none", "jacobian") else None, n,
                         sampler=sampler, rng=torch.Generator(trainer.device).manual_seed(seed),
                         device=trainer.device, latent_dim=trainer.latent_dim, **options)


def _evaluate_samplers(trainer, config: dict, n: int, seed: int) -> dict:
    """Each of :data:`REPORTED_SAMPLERS`: its metrics, acceptance, generator draws and seconds
    (or the error that stopped it), from the same seed as the generator's own samples."""
    reports = {}
    for sampler in REPORTED_SAMPLERS:
        started = time.perf_counter()
        try:
            result = _draw(trainer, config, sampler, n, seed)
        except RuntimeError as error:  # rejection sampling that gave up
            reports[sampler] = {"error": str(error), "seconds": round(time.perf_counter() - started, 2)}
            continue
        reports[sampler] = {**_evaluate(config, result.samples), "acceptance": round(result.acceptance, 4),
                            "proposals": result.proposals, "seconds": round(time.perf_counter() - started, 2)}
    return reports


def _save_samples(out: str, config: dict, samples, title: str = "") -> None:
    import numpy as np

    from fastgan import data as data_module
    from fastgan import plots

    np.save(os.path.join(out, "samples.npy"), samples.cpu().numpy())
    png = os.path.join(out, "samples.png")
    if config["data_kind"] == "toy":
        plots.scatter_png(png, samples, data_module.toy_mixture(config["data"]).centres, title=title)
    else:
        plots.image_grid_png(png, samples[:64], title=title)


def _save_training_curves(out: str, config: dict, log_path: str) -> None:
    """training.png from the whole log.jsonl (a resumed run's included); a damaged log is said
    in one line and leaves the figure out rather than failing the finished run."""
    from fastgan import plots

    try:
        records = plots.read_log(log_path) if os.path.exists(log_path) else []
    except (OSError, ValueError) as error:
        print(f"fastgan train: training.png not drawn: {error}", file=sys.stderr)
        return
    if records:
        title = (f"{os.path.basename(os.path.normpath(config['data']))} · {config['model']} · "
                 f"D {config['d_loss']} · G {config['g_loss']}")
        plots.training_curves_png(os.path.join(out, "training.png"), records, title=title)


_SAMPLER_NAMES = {"jacobian": "Jacobian truncation, keep {keep:g}", "rejection": "rejection (DRS)",
                  "mh": "Metropolis-Hastings, {mh_steps} steps", "sir": "SIR, pool {sir_pool} x n"}


def _number(value, form: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, form)


def _format_metrics(config: dict, result: dict) -> str:
    """The generator's own metrics, then (a run's) every sampler's beside them, then (grid25)
    the published references."""
    if not result:
        return ""
    line = (
        f"the generator alone: modes {result['modes']}/{result['num_modes']} (>= 20 samples: {result['modes_strict']}), "
        f"high-quality {100 * result['high_quality']:.1f} %, reverse KL {_number(result['reverse_kl'], '.4f')}"
    )
    samplers = result.get("samplers") or {}

    def row(name, scores, extra=""):
        return (f"  {name:<36} {scores['modes']:>5} {scores['modes_strict']:>5} {100 * scores['high_quality']:>7.1f} "
                f"{_number(scores['reverse_kl'], '.3f'):>8}{extra}")

    if samplers or config["data"] == "grid25":
        settings = {"keep": config.get("sample_keep", 0.85), "mh_steps": config.get("mh_steps", 20),
                    "sir_pool": config.get("sir_pool", 20)}
        rows = [row("this run, the generator alone", result)]
        for name, report in samplers.items():
            label = "  + " + _SAMPLER_NAMES.get(name, name).format(**settings)
            if "error" in report:
                rows.append(f"  {label:<36} gave up: {report['error']}")
            else:
                rows.append(row(label, report, f"   acceptance {report['acceptance']:.3f}, {report['seconds']:.1f} s"))
        if config["data"] == "grid25":
            rows += [f"  {name:<36} {m:>5} {'':>5} {hq:>7} {kl:>8}" for name, m, hq, kl in GRID25_REFERENCES]
        line += "\n" + f"  {config['data'] if config['data_kind'] == 'toy' else 'samples':<36} {'modes':>5} {'>=20':>5} {'HQ %':>7} {'rev KL':>8}\n" + "\n".join(rows)
    return line


def _join_process_group(args: argparse.Namespace):
    """Under torchrun: join the group; (ProcessInfo, this process's device). Else (info, None)."""
    from fastgan import distributed

    if not distributed.launched_by_torchrun():
        return distributed.process_info(), None
    if args.device and args.device.startswith("cuda:"):
        raise UsageError(f"--device {args.device}: under torchrun each process takes GPU LOCAL_RANK; pass --device cuda")
    device = args.device
    if device is None and args.resume and args.out:  # a resumed run keeps its device type
        try:
            with open(os.path.join(args.out, "config.json")) as file:
                saved = json.load(file)
            device = saved.get("device") if isinstance(saved, dict) and isinstance(saved.get("device"), str) else None
        except (OSError, ValueError):
            device = None  # the resume checks below report a missing or bad run directory
    try:
        return distributed.init_from_environment(device)
    except RuntimeError as error:
        raise UsageError(str(error), every_rank=True) from None


def _cmd_train(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    started = time.perf_counter()
    info, device = _join_process_group(args)
    try:
        code = _train(args, started, info, device)
        if info.world_size > 1:
            # Rank 0 is still evaluating and writing while the others are done: nobody tears
            # the group down under a peer (gloo aborts a process whose peer vanished).
            dist.barrier()
        return code
    finally:
        if info.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(args: argparse.Namespace, started: float, info, device) -> int:
    import torch
    import torch.distributed as dist

    from fastgan import TrainingDiverged

    out = args.out
    checkpoint = os.path.join(out, "checkpoint.pt") if out else None
    if args.resume:
        if not out:
            raise UsageError("--resume needs --out DIR (the run to continue)")
        config_path = os.path.join(out, "config.json")
        missing = [name for name, path in (("checkpoint.pt", checkpoint), ("config.json", config_path))
                   if not os.path.isfile(path)]
        if missing:
            raise UsageError(f"--resume: {out} holds no {' and no '.join(missing)} to continue from "
                             "(under torchrun on several machines --out must be on a shared filesystem)",
                             every_rank=True)
        config = _read_json_object(config_path)
        _check_saved_config(config, config_path)
        config = _apply_resume_flags(config, args, config_path)
    else:
        config = _resolve_config(args)
        if not out:
            out = os.path.join("runs", f"{os.path.basename(os.path.normpath(config['data']))}-{time.strftime('%Y%m%d-%H%M%S')}")
            if info.world_size > 1:  # the processes started at slightly different times: take rank 0's name
                names = [out]
                dist.broadcast_object_list(names, src=0)
                out = names[0]
            checkpoint = os.path.join(out, "checkpoint.pt")
        if os.path.exists(checkpoint):
            raise UsageError(f"--out {out} already holds a run; pass --resume to continue it or choose another --out")
    if device is not None:
        config["device"] = device.type  # each process's own GPU index comes from LOCAL_RANK
    config["world_size"] = info.world_size
    if config["batch_size"] % info.world_size:
        raise UsageError(f"--batch-size {config['batch_size']} must be divisible by the number of processes "
                         f"({info.world_size})")
    main_process = info.is_main
    if main_process:
        os.makedirs(out, exist_ok=True)
    from fastgan._allocator import keep_freed_memory

    keep_freed_memory()  # activations freed each step stay in the heap instead of going back to the kernel
    # torch's default threads unless --threads: for the toy MLPs too, two are faster than one
    # here, with the same results (paired runs: 0.94x the wall time on grid25, 0.71x on grid100).
    if args.threads:
        torch.set_num_threads(args.threads)
    data, generator, discriminator = _build(config)
    from fastgan.mlp_gan_step import DerivedBackwardUnavailable

    try:
        trainer = _make_trainer(config, generator, discriminator, device)
    except DerivedBackwardUnavailable as error:
        raise UsageError(f"--backward derived: {error.reason}") from None
    if args.resume:
        from fastgan.checkpoint import CheckpointError

        try:
            trainer.resume(checkpoint)
        except CheckpointError as error:
            raise UsageError(f"--resume: {error}") from None
    if main_process:
        _write_json(os.path.join(out, "config.json"), config)
    quiet = args.quiet or not main_process
    if not quiet:
        print(f"fastgan train: {config['data']} · {config['model']} · D {config['d_loss']} · G {config['g_loss']}"
              + (f" (alpha {config['alpha']})" if config.get("alpha") is not None else "")
              + f" · {config['steps']} steps × batch {config['batch_size']} · {config['device']}"
              + (" (derived backward)" if trainer.backward == "derived" else "")
              + (f" × {info.world_size} processes" if info.world_size > 1 else "")
              + (f" · resuming at step {trainer.step}" if args.resume else "") + f" → {out}", file=sys.stderr)
    progress = Progress(config["steps"], trainer.step, enabled=not quiet, always=args.progress)
    log_path = os.path.join(out, "log.jsonl")

    def on_log(record) -> None:
        if main_process:
            with open(log_path, "a") as file:
                file.write(_json_text(record.as_dict()) + "\n")
        progress.update(record)

    try:
        trainer.train(data, config["steps"], config["batch_size"], log_every=config["log_every"], on_log=on_log,
                      checkpoint_path=checkpoint, checkpoint_every=args.checkpoint_every, config=config)
    except KeyboardInterrupt:
        progress.close()
        if main_process:
            again = "the same torchrun command with " if info.world_size > 1 else ""
            print(f"fastgan train: interrupted at step {trainer.step}; checkpoint saved. Continue with: "
                  f"{again}fastgan train --out {out} --resume", file=sys.stderr)
        return 130
    except TrainingDiverged as error:
        progress.close()
        if main_process:
            print(f"fastgan train: {error}", file=sys.stderr)
        return 1
    progress.close()
    if not main_process:  # rank 0 evaluates and writes; the models are the same everywhere
        return 0
    # The generator alone is the headline (samples.npy, metrics.json's top level); every sampler
    # of fastgan.sampling is reported beside it, never instead of it.
    samples = _draw(trainer, config, "none", SAMPLES, config["seed"] + 2).samples
    result = _evaluate(config, samples)
    if result:
        result["samplers"] = _evaluate_samplers(trainer, config, SAMPLES, config["seed"] + 2)
    _save_samples(out, config, samples, _figure_title(config, result, trainer.step))
    _save_training_curves(out, config, log_path)
    seconds = time.perf_counter() - started
    moved = {"relocations": len(trainer.relocations)} if config.get("relocate_every") else {}
    _write_json(os.path.join(out, "metrics.json"),
                {**result, "steps": trainer.step, "wall_seconds": round(seconds, 2), **moved})
    summary = (f"fastgan train: done, {trainer.step} steps in {seconds:.1f} s"
               + (f" ({moved['relocations']} components relocated)" if moved else ""))
    formatted = _format_metrics(config, result)
    print(summary + (f"; {formatted}" if formatted else "") + f"\n  run directory: {out}")
    return 0


def _load_run(run: str):
    """(checkpoint state, its config) of a run directory; a damaged one is a one-line error."""
    from fastgan.checkpoint import CheckpointError, check_trainer_state, load_checkpoint

    checkpoint = os.path.join(run, "checkpoint.pt")
    if not os.path.isfile(checkpoint):
        raise UsageError(f"{run}: no checkpoint.pt (is it a fastgan run directory?)")
    try:
        state = load_checkpoint(checkpoint, map_location="cpu")
        check_trainer_state(state, checkpoint)
    except CheckpointError as error:
        raise UsageError(str(error)) from None
    config = state.get("config") or {}
    if not isinstance(config, dict) or not config:
        raise UsageError(f"{checkpoint}: the checkpoint holds no config")
    _check_saved_config(config, f"{checkpoint} (its saved config)")
    return state, config


def _cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    if args.n < 1:
        raise UsageError(f"-n must be a positive integer, got {args.n}")
    state, config = _load_run(args.run)
    config = dict(config, device=args.device or "cpu")
    _, generator, discriminator = _build(config)
    trainer = _make_trainer(dict(config, cuda_graphs="off"), generator, discriminator)
    try:
        trainer.load_state_dict(state)
    except (KeyError, RuntimeError, TypeError, ValueError) as error:
        from fastgan.checkpoint import summarise_error

        raise UsageError(f"{os.path.join(args.run, 'checkpoint.pt')}: its weights do not fit its saved config "
                         f"({summarise_error(error)})") from None
    sampler = args.sampler or ("jacobian" if args.keep is not None else "none")
    options = {}
    if args.keep is not None:
        if sampler != "jacobian":
            raise UsageError(f"--keep applies to --sampler jacobian only (got --sampler {sampler})")
        if not 0 < args.keep <= 1:
            raise UsageError(f"--keep must be in (0, 1], got {args.keep}")
        options["keep"] = args.keep
    for flag, key, name in (("mh_steps", "steps", "mh"), ("sir_pool", "pool", "sir"), ("gamma", "gamma", "rejection")):
        value = getattr(args, flag)
        if value is None:
            continue
        if sampler != name:
            raise UsageError(f"--{flag.replace('_', '-')} applies to --sampler {name} only (got --sampler {sampler})")
        if flag != "gamma" and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
        if flag == "gamma" and not math.isfinite(value):
            raise UsageError(f"--gamma must be a finite number, got {value}")
        options[key] = value
    try:
        result = _draw(trainer, config, sampler, args.n, args.seed, **options)
    except RuntimeError as error:
        raise UsageError(f"--sampler {sampler}: {error}") from None
    samples = result.samples
    out = args.out or os.path.join(args.run, "samples-extra.npy")
    np.save(out, samples.cpu().numpy())
    described = "the generator alone" if sampler == "none" else (
        f"sampler {sampler}, acceptance {result.acceptance:.3f}, {result.proposals} generator draws")
    print(f"fastgan sample: {args.n} samples of shape {tuple(samples.shape[1:])} ({described}) → {out}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    if os.path.isdir(args.target):
        config_path = os.path.join(args.target, "config.json")
        config = _read_json_object(config_path)
        missing = [key for key in ("data", "data_kind") if key not in config]
        if missing:
            raise UsageError(f"{config_path}: missing {', '.join(missing)}; the run directory is damaged")
        path = os.path.join(args.target, "samples.npy")
    else:
        if not args.data:
            raise UsageError("eval of a .npy file needs --data (grid25, ring8, grid100 or shapes)")
        path, config = args.target, {"data": args.data, "data_kind": _data_kind(args.data)}
        if config["data_kind"] == "images":
            raise UsageError(f"--data {args.data!r}: metrics exist for the toy mixtures and shapes only")
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such samples file")
    try:
        samples = torch.from_numpy(np.load(path))
    except (ValueError, OSError) as error:
        raise UsageError(f"{path}: cannot read samples ({error})") from None
    result = _evaluate(config, samples)
    print(_json_text(result, indent=2) if args.json else _format_metrics(config, result))
    return 0


def _preset_text(preset: dict) -> str:
    return ", ".join(f"--{key.replace('_', '-')} {value}" for key, value in preset.items() if value is not None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastgan", description="fastgan: custom-kernel accelerated GAN training.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a GAN into a run directory",
        description="Train a GAN. With no arguments: the tuned MLP GAN on the embedded grid25 mixture (CPU, about a minute). "
        "Unset flags take the preset of the data kind. Toy mixtures: "
        + _preset_text(TOY_DEFAULTS) + " ("
        + "; ".join(f"{data}: {_preset_text(overrides)}" for data, overrides in TOY_OVERRIDES.items()) + "). shapes: "
        + _preset_text({key: value for key, value in SHAPES_DEFAULTS.items() if IMAGE_DEFAULTS.get(key) != value})
        + " (else as images). Images (DCGAN): " + _preset_text(IMAGE_DEFAULTS) + ".",
    )
    train.add_argument("--data",
                       help="grid25 | ring8 | grid100 | shapes (embedded) | a folder of PNG/JPEG | a .npy/.npz array (default grid25)")
    train.add_argument("--model", choices=("mlp", "dcgan", "layered"),
                       help="mlp for toy data; dcgan or layered (LR-GAN-like: a mask, colours and a placement) for "
                            "images (default: mlp for toy data, layered for shapes, dcgan for your images)")
    train.add_argument("--mask", choices=MASK_CHOICES,
                       help="--model layered's mask network: coordinates (a ReLU MLP of the pixel coordinates, sharp "
                            "polygon corners; the default) or convolutions (transposed convolutions: the earlier recipe "
                            "with --hidden 16)")
    train.add_argument("--image-size", type=int, choices=(32, 64), help="image resolution (default 32 for shapes, 64 for your images)")
    train.add_argument("--latent-dim", type=int, help="latent dimension of z")
    train.add_argument("--components", type=int,
                       help="learnable Gaussian-mixture latent prior with this many components (toy MLPs and "
                            "--model layered; 0: plain N(0, I); default: one per mode of the toy mixture, 48 for shapes)")
    train.add_argument("--hidden", type=int, help="MLP hidden width, or the image models' base width (for --model "
                                                   "layered: its mask network's)")
    train.add_argument("--layers", type=int, help="MLP hidden layers")
    train.add_argument("--d-hidden", type=int, help="the discriminator's width, when it differs from --hidden")
    train.add_argument("--d-layers", type=int, help="the discriminator's MLP hidden layers, when they differ from --layers")
    train.add_argument("--d-loss", help="discriminator loss (see fastgan.losses.available())")
    train.add_argument("--g-loss", help="generator loss, e.g. nonsaturating, reverse_kl, forward_kl, renyi")
    train.add_argument("--alpha", type=float, help="Rényi alpha (with --g-loss renyi), a real >= 0")
    train.add_argument("--steps", type=int, help="total training steps (with --resume: continue up to this many)")
    train.add_argument("--batch-size", type=int, help="samples per D and G step")
    train.add_argument("--lr-g", type=float, help="generator learning rate")
    train.add_argument("--lr-d", type=float, help="discriminator learning rate")
    train.add_argument("--beta1", type=float, help="Adam's beta1 (default 0.5; 0 for shapes)")
    train.add_argument("--beta2", type=float, help="Adam's beta2 (default 0.999; 0.99 for shapes)")
    train.add_argument("--lr-decay", type=float, help="final learning rate as a fraction of the initial one (exponential decay)")
    train.add_argument("--d-steps", type=int, help="discriminator steps per generator step")
    train.add_argument("--ema-decay", type=float, help="EMA decay of the generator's weights")
    train.add_argument("--r1-gamma", type=float, help="R1 gradient penalty weight γ (0: off)")
    train.add_argument("--r1-every", type=int, help="apply R1 lazily every this many D steps")
    train.add_argument("--d-fourier", type=int,
                       help="toy D: feed it sin/cos of its input at this many octaves of frequency (0: off; "
                            "grid100: 7), so it can resolve narrow modes")
    train.add_argument("--d-coarse-to-fine", type=float,
                       help="toy D with --d-fourier: bring the octaves in one by one over this fraction of the schedule "
                            "(0: all from the start; grid100: 0.5)")
    train.add_argument("--final-hold", type=_fraction_argument,
                       help="hold the final learning rate over this last fraction of the run; the schedules "
                            "(--lr-decay, --d-coarse-to-fine, relocation) run over the rest (0: none; "
                            "grid100: 1/6, the last 4,000 of 24,000 steps)")
    train.add_argument("--relocate-every", type=int,
                       help="every this many steps (between 30 and 70 %% of the schedule) move a mixture component, a "
                            "duplicate first, the one D rates lowest, to where D says data is missing (0: never; "
                            "grid100: 30; see fastgan.relocation)")
    train.add_argument("--precision", choices=("fp32", "bf16"), help="autocast precision (default fp32)")
    train.add_argument("--cuda-graphs", choices=("auto", "on", "off"), help="capture the steps in CUDA graphs (default auto: on CUDA)")
    train.add_argument("--backend", choices=("auto", "cuda", "triton", "torch"), help="fastgan op backend (default auto)")
    train.add_argument("--fuse", action="store_true", help="run fastgan.fuse on the models first")
    train.add_argument("--backward", choices=BACKWARD_CHOICES,
                       help="how the steps' gradients are computed: autograd, or derived, the MLP GAN's backward derived "
                            "by hand (fastgan.mlp_gan_step; the toy models with the bce and nonsaturating losses, fp32); "
                            "default auto: derived where it applies on the CPU")
    train.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    train.add_argument("--seed", type=int, help="random seed (default 0)")
    train.add_argument("--out", help="run directory (default runs/<data>-<time>)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its checkpoint; it keeps its saved settings, and of the "
                            "flags only " + ", ".join("--" + key.replace("_", "-") for key in _RESUME_MAY_CHANGE)
                            + " may change them (any other flag that differs is refused)")
    train.add_argument("--sample-keep", type=float,
                       help="the Jacobian-truncation sampler reported beside the generator: keep this fraction of "
                            "latents, dropping those where G stretches space most (see fastgan.sampling)")
    train.add_argument("--mh-steps", type=int, help="steps of the reported Metropolis-Hastings sampler")
    train.add_argument("--sir-pool", type=int, help="proposals per sample of the reported SIR sampler")
    train.add_argument("--log-every", type=int, help="steps between log records (the only host synchronisations)")
    train.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: at the end and on Ctrl-C)")
    train.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own)")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.add_argument("--progress", action="store_true",
                       help="show the progress bar even when stderr is not a terminal (default: only on a terminal)")
    train.set_defaults(handler=_cmd_train)

    sample = commands.add_parser("sample", help="draw samples from a run's checkpoint")
    sample.add_argument("run", help="a run directory")
    sample.add_argument("-n", type=int, default=SAMPLES, help=f"number of samples (default {SAMPLES})")
    sample.add_argument("--out", help="output .npy (default RUN/samples-extra.npy)")
    sample.add_argument("--seed", type=int, default=0, help="noise seed")
    sample.add_argument("--device", help="device to sample on (default cpu)")
    sample.add_argument("--sampler", choices=SAMPLERS_CHOICES,
                        help="none: the generator alone (default); jacobian: Jacobian truncation; rejection: "
                             "discriminator rejection sampling; mh: Metropolis-Hastings over generator proposals; "
                             "sir: sampling-importance-resampling (see fastgan.sampling)")
    sample.add_argument("--keep", type=float,
                        help="Jacobian-truncation fraction (implies --sampler jacobian; default the run's --sample-keep)")
    sample.add_argument("--mh-steps", type=int, help="Metropolis-Hastings steps per sample (default the run's)")
    sample.add_argument("--sir-pool", type=int, help="SIR proposals per sample (default the run's)")
    sample.add_argument("--gamma", type=float, help="rejection sampling's shift γ (0: exact; > 0: rejects more)")
    sample.set_defaults(handler=_cmd_sample)

    evaluate = commands.add_parser("eval", help="mode-coverage metrics of a run's samples or a .npy file")
    evaluate.add_argument("target", help="a run directory, or a samples .npy file (then --data)")
    evaluate.add_argument("--data", help="grid25, ring8, grid100 or shapes (for a .npy file)")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.set_defaults(handler=_cmd_eval)

    info = commands.add_parser("info", help="versions, build flags, device and available backends")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(handler=_cmd_info)
    for sub in (train, sample, evaluate, info):
        sub.error = _one_line_error(sub)
    parser.error = _one_line_error(parser)
    return parser


def _one_line_error(parser: argparse.ArgumentParser):
    def error(message: str):
        print(f"{parser.prog}: error: {message} (see {parser.prog} --help)", file=sys.stderr)
        sys.exit(2)

    return error


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except UsageError as error:
        _print_once(f"fastgan {args.command}: error: {error}", every_rank=error.every_rank)
        return 2
    except (ValueError, TypeError, FileNotFoundError) as error:
        if os.environ.get("FASTGAN_DEBUG"):
            raise
        _print_once(f"fastgan {args.command}: error: {error}")
        return 2


def _print_once(message: str, every_rank: bool = False) -> None:
    """stderr: from rank 0 only when several processes run the same command and fail alike;
    from every process, prefixed with its rank, when the failure may be theirs alone."""
    rank = os.environ.get("RANK", "0")
    if every_rank and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print(f"[rank {rank}] {message}", file=sys.stderr)
    elif rank == "0":
        print(message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
