"""Helpers shared by the data sources: argument checks and the sampling device."""

from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np
import torch

DeviceLike = Union[str, torch.device, int, None]
PathLike = Union[str, "os.PathLike[str]"]


def _check_count(n, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    return int(n)


def _sample_device(device: DeviceLike, generator: Optional[torch.Generator], default: torch.device) -> torch.device:
    """The device to sample on: ``device``, else the generator's, else ``default``; a
    generator on another kind of device is an error (torch's own message is obscure)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if device is None:
        return torch.device(generator.device) if generator is not None else default
    device = torch.device(device)
    if generator is not None:
        gen = torch.device(generator.device)
        indices_differ = gen.index is not None and device.index is not None and gen.index != device.index
        if gen.type != device.type or indices_differ:
            raise ValueError(
                f"generator is on {gen} but samples were asked for on {device}; use a generator on {device}"
            )
    return device


def _canonical(device: torch.device) -> torch.device:
    """``cuda`` -> ``cuda:<current>``, so that device caches have one key per device."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cuda":
        ia = a.index if a.index is not None else torch.cuda.current_device()
        ib = b.index if b.index is not None else torch.cuda.current_device()
        return ia == ib
    return a.index == b.index or a.index is None or b.index is None



def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    return int(size)
