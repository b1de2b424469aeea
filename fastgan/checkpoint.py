"""Checkpoints of a :class:`fastgan.Trainer`: atomic files, and the state a resume needs.

:func:`trainer_state` collects everything a resume needs (step, models, EMA, optimisers and
every process's random streams); :func:`restore_trainer` puts it back, also from another
device type or another number of processes; :func:`save_trainer` writes it atomically
(distributed: rank 0 writes, every process learns whether it worked). The files are plain
``torch.save`` dictionaries read back with ``weights_only=True``.
"""

from __future__ import annotations

import copy
import os
import pickle
import tempfile
import warnings
from typing import Optional

import torch
import torch.distributed as dist

from fastgan.distributed import resumed_stream_seed

__all__ = ["CheckpointError", "load_checkpoint", "restore_trainer", "save_checkpoint", "save_trainer", "trainer_state"]

# What a trainer checkpoint must hold (older ones may lack the per-process random states).
_TRAINER_KEYS = ("step", "generator", "discriminator", "opt_g", "opt_d")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, damaged, not a checkpoint) or that
    does not fit the trainer it is loaded into; the message starts with the file's path."""


def summarise_error(error: BaseException, limit: int = 300) -> str:
    """``Type: first sentence of the message`` on one line (torch's load errors span several
    lines and sentences), at most ``limit`` characters."""
    if isinstance(error, pickle.UnpicklingError):  # torch's message is advice about weights_only, not the cause
        return f"{type(error).__name__}: not a torch checkpoint of tensors and plain data"
    text = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    text = text.split(". ")[0]  # the first sentence says what failed; torch's advice follows it
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[:limit - 1] + "…"


def save_checkpoint(path: str, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same directory, then a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def load_checkpoint(path: str, map_location=None) -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain data only, never code.

    Raises ``FileNotFoundError`` when there is no file, :class:`CheckpointError` (naming the
    file and torch's reason in one line) when it cannot be read as a dictionary checkpoint."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # torch warns about legacy files before failing on them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load fails with many types (RuntimeError, EOFError, UnpicklingError, IndexError)
        raise CheckpointError(f"{path}: not a readable checkpoint, the file is truncated or damaged "
                              f"({summarise_error(error)})") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint (it holds a {type(state).__name__}, not a dictionary)")
    return state


def check_trainer_state(state: dict, path: str) -> None:
    """Raise :class:`CheckpointError` naming ``path`` unless ``state`` holds what
    :func:`restore_trainer` needs."""
    missing = [key for key in _TRAINER_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path}: not a fastgan trainer checkpoint (no {', '.join(missing)})")


def _random_states(trainer) -> dict:
    return {"noise": trainer.noise_generator.get_state(), "data": trainer.data_generator.get_state(),
            "torch": torch.get_rng_state()}


def trainer_state(trainer) -> dict:
    """Everything a resume needs. The models and optimisers are the same on every process;
    the random states are per process: distributed, they are gathered from all (a
    collective: call it on every process) into ``rank_rng``, indexed by rank."""
    own = _random_states(trainer)
    ranks = [own]
    if trainer.distributed:
        ranks = [None] * trainer.world_size
        dist.all_gather_object(ranks, own, group=trainer.process_group)
    return {
        "step": trainer.step,
        "generator": trainer.generator.state_dict(),
        "discriminator": trainer.discriminator.state_dict(),
        "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
        "opt_g": trainer.opt_g.state_dict(),
        "opt_d": trainer.opt_d.state_dict(),
        "world_size": trainer.world_size,
        "noise_rng": ranks[0]["noise"],
        "data_rng": ranks[0]["data"],
        "torch_rng": ranks[0]["torch"],
        "rank_rng": ranks,
    }


def _restore_random_states(trainer, state: dict) -> None:
    """This process's random streams from ``state``: exactly its own when the checkpoint
    was written by as many processes; otherwise re-derived from (seed, rank, step), said once."""
    saved_world = int(state.get("world_size", 1))
    ranks = state.get("rank_rng") or [{"noise": state["noise_rng"], "data": state["data_rng"],
                                        "torch": state["torch_rng"]}]
    if saved_world == trainer.world_size and len(ranks) == trainer.world_size:
        own = ranks[trainer.rank]
        try:
            trainer.noise_generator.set_state(own["noise"].cpu())
            trainer.data_generator.set_state(own["data"].cpu())
            torch.set_rng_state(own["torch"].cpu())
            return
        except (RuntimeError, TypeError):
            trainer._say("the checkpoint's random states are from another device type; noise restarts from the seed")
            return
    trainer.noise_generator.manual_seed(resumed_stream_seed(trainer.seed, trainer.rank, 0, trainer.step))
    trainer.data_generator.manual_seed(resumed_stream_seed(trainer.seed, trainer.rank, 1, trainer.step))
    trainer._say(f"the checkpoint was written by {saved_world} process(es), this run has {trainer.world_size}: "
                 f"models, optimisers and step {trainer.step} are restored exactly; the noise and data streams "
                 "are re-derived from (seed, rank, step), so the random draws differ from an uninterrupted run")


def restore_trainer(trainer, state: dict) -> None:
    """Put a :func:`trainer_state` back into ``trainer``, possibly saved on another device type (the models and
    optimisers load, the random generators restart from the seed) or by another number of
    processes (the random streams are re-derived: see :func:`_restore_random_states`)."""
    trainer.step = int(state["step"])
    trainer.generator.load_state_dict(state["generator"])
    trainer.discriminator.load_state_dict(state["discriminator"])
    if trainer.ema is not None:
        trainer.ema.load_state_dict(state["ema"] if state.get("ema") is not None else state["generator"])
    for optimizer, key in ((trainer.opt_g, "opt_g"), (trainer.opt_d, "opt_d")):
        saved = copy.copy(state[key])
        # Keep this trainer's own implementation flags and lr object (a device tensor when
        # capturing): the checkpoint may come from another device type.
        saved["param_groups"] = [
            dict(group, capturable=own["capturable"], lr=own["lr"], fused=own.get("fused"), foreach=own.get("foreach"))
            for group, own in zip(saved["param_groups"], optimizer.param_groups)
        ]
        optimizer.load_state_dict(saved)
    _restore_random_states(trainer, state)


def save_trainer(trainer, path: str, config: Optional[dict] = None) -> None:
    """Atomic checkpoint of everything a resume needs (and ``config``). Distributed: call on
    every process; rank 0 writes, and all return once the file is in place."""
    state = trainer_state(trainer)
    state["config"] = config or {}
    if not trainer.distributed:
        save_checkpoint(path, state)
        return
    failure = None
    if trainer.rank == 0:
        try:
            save_checkpoint(path, state)
        except OSError as error:  # disk full, permissions: every process must learn of it
            failure = error
    failed = torch.tensor([float(failure is not None)], device=trainer.device)
    trainer._all_reduce(failed)  # doubles as the barrier: the file is in place when this returns
    if failure is not None:
        raise failure
    if failed.item():
        raise OSError(f"rank 0 could not write the checkpoint {path}")
