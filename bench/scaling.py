"""Data-parallel scaling of ``fastgan train``: samples/s on 1 process against K processes.

Weak scaling (the default): every process keeps ``--per-process-batch`` samples, so K
processes train a K-times larger global batch; efficiency = throughput(K) / (K ·
throughput(1)). ``--strong`` keeps the global batch fixed instead (per-process batch
shrinks as K grows). Each point is one ``torchrun --standalone`` launch of the real CLI;
its throughput is the last ``log.jsonl`` record's it/s (after the first record, so start-up
and any CUDA-graph capture are excluded) times the global batch.

    python bench/scaling.py --processes 1 2 4 8                      # GPUs (NCCL), DCGAN on shapes
    python bench/scaling.py --processes 1 2 --device cpu --data grid25 --steps 400   # gloo on CPU

Writes a table to stdout and, with ``--json FILE``, the measurements with the device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def measure(processes: int, args: argparse.Namespace) -> dict:
    batch = args.per_process_batch if args.strong is False else args.global_batch // processes
    global_batch = batch * processes
    with tempfile.TemporaryDirectory(prefix="fastgan-scaling-") as out:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   "-m", "fastgan", "train", "--data", args.data, "--steps", str(args.steps),
                   "--batch-size", str(global_batch), "--log-every", str(args.steps // 2), "--out", out, "--quiet",
                   "--sample-keep", "1"]
        if args.device:
            command += ["--device", args.device]
        if args.precision:
            command += ["--precision", args.precision]
        result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        if result.returncode != 0:
            raise SystemExit(f"{processes} process(es) failed:\n{result.stderr[-3000:]}")
        with open(os.path.join(out, "log.jsonl")) as file:
            records = [json.loads(line) for line in file]
    it_per_s = records[-1]["it_per_s"]
    return {"processes": processes, "global_batch": global_batch, "it_per_s": it_per_s,
            "samples_per_s": it_per_s * global_batch}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts to run (first = baseline)")
    parser.add_argument("--data", default="shapes", help="fastgan train --data (default shapes: DCGAN-32)")
    parser.add_argument("--steps", type=int, default=300, help="steps per launch (the second half is timed)")
    parser.add_argument("--per-process-batch", type=int, default=128, help="weak scaling: samples per process")
    parser.add_argument("--strong", action="store_true", help="strong scaling: keep --global-batch fixed")
    parser.add_argument("--global-batch", type=int, default=512, help="strong scaling: the global batch")
    parser.add_argument("--device", help="cuda (NCCL) or cpu (gloo); default: cuda when available")
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="fastgan train --precision")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()
    if args.steps < 4:
        parser.error("--steps must be at least 4")
    points = [measure(k, args) for k in args.processes]
    base = points[0]
    print(f"{'processes':>9} {'global batch':>12} {'it/s':>9} {'samples/s':>11} {'efficiency':>10}")
    for point in points:
        ideal = base["samples_per_s"] * point["processes"] / base["processes"]
        point["efficiency"] = point["samples_per_s"] / ideal
        print(f"{point['processes']:>9} {point['global_batch']:>12} {point['it_per_s']:>9.1f} "
              f"{point['samples_per_s']:>11.0f} {100 * point['efficiency']:>9.1f}%")
    if args.json:
        import torch

        device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu"
        with open(args.json, "w") as file:
            json.dump({"device": device, "torch": torch.__version__, "weak_scaling": not args.strong,
                       "data": args.data, "points": points}, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
