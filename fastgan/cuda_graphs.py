"""CUDA-graph capture of a :class:`fastgan.Trainer`'s steps: warm-up, capture, replay.

The trainer decides when graphs are used (its ``cuda_graphs`` setting) and runs the steps;
:class:`StepGraphs` holds what capture needs across steps: the warm-up countdown, the
graphs themselves, the inputs they were captured for, and their static outputs. Capture
records one D step (and one with the lazy R1 penalty when it is on) and one G step, each
with its telemetry accumulation, so a replay repeats the eager step exactly, random draws
included (the trainer's generators are registered with every graph).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["WARMUP_STEPS", "StepGraphs"]

WARMUP_STEPS = 3  # eager steps (counted as training) before the CUDA graphs are captured


class StepGraphs:
    """The CUDA graphs of one trainer's steps, and what they were captured for."""

    def __init__(self) -> None:
        self.graphs: Optional[dict] = None  # {"d": CUDAGraph, "g": CUDAGraph} once captured
        self.key = None  # what the graphs were captured for: (data, batch, noise)
        self.warmup_left = WARMUP_STEPS
        self._outputs: list = []

    @property
    def captured(self) -> bool:
        return self.graphs is not None

    def reset(self, key=None) -> None:
        """Forget the graphs (stale for other inputs, or after a restore); warm up again."""
        self.graphs, self.key, self.warmup_left = None, key, WARMUP_STEPS

    def warmup(self, trainer, data, batch: int, noise: Optional[Tensor] = None) -> None:
        """A real training step run eagerly on a side stream, as CUDA-graph capture requires
        before capturing (kernel autotuning, allocator, optimizer state)."""
        stream = torch.cuda.Stream(trainer.device)
        stream.wait_stream(torch.cuda.current_stream(trainer.device))
        with torch.cuda.stream(stream):
            trainer._eager_step(data, batch, noise)
        torch.cuda.current_stream(trainer.device).wait_stream(stream)
        self.warmup_left -= 1

    def capture(self, trainer, data, batch: int, noise: Optional[Tensor] = None) -> None:
        """Capture one D step and one G step (nothing runs until they are replayed)."""
        graphs = {"d": torch.cuda.CUDAGraph(), "g": torch.cuda.CUDAGraph()}
        if trainer.r1_gamma > 0:
            graphs["d_r1"] = torch.cuda.CUDAGraph()  # the D step with the lazy R1 penalty
        # The trainer's own generators must be registered, or capture refuses to draw from them;
        # each replay then advances them exactly as the eager step does.
        for name, graph in graphs.items():
            for generator in (trainer.noise_generator, trainer.data_generator) if name != "g" else (trainer.noise_generator,):
                graph.register_generator_state(generator)
        # Gradients must live in static memory: zero them rather than setting them to None.
        trainer.opt_d.zero_grad(set_to_none=False)
        trainer.opt_g.zero_grad(set_to_none=False)
        trainer._capturing = True
        try:
            pool, outputs = None, []
            for name in [n for n in ("d", "d_r1") if n in graphs]:
                with torch.cuda.graph(graphs[name], pool=pool):
                    outputs.append(trainer._discriminator_step(data, batch, noise, r1=name == "d_r1"))
                    trainer._record_d(outputs[-1])
                pool = graphs[name].pool()
            with torch.cuda.graph(graphs["g"], pool=pool):
                outputs.append(trainer._generator_step(batch, noise))
                trainer._record_g(outputs[-1])
        finally:
            trainer._capturing = False
        self._outputs = outputs  # keep the static outputs alive
        self.graphs = graphs

    def replay(self, trainer) -> None:
        """One training step: ``d_steps`` D replays (with R1 where due), then the G replay."""
        for index in range(trainer.d_steps):
            self.graphs["d_r1" if trainer._r1_due(index) else "d"].replay()
        self.graphs["g"].replay()
