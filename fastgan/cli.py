"""The ``fastgan`` command line (also ``python -m fastgan``).

Subcommands:
  info   what fastgan can run here: versions, the CUDA extension's build flags, the device,
         and each backend's availability with the reason when it is not available.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys


def collect_info() -> dict:
    """Versions, build flags, device and backend availability, as a JSON-able dict."""
    import torch

    import fastgan
    from fastgan import _backend

    triton_module, triton_reason = _backend._triton_status()
    extension, extension_reason = _backend._extension_status()
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
        "device": device,
        "environment": {
            name: value
            for name, value in (
                ("FASTGAN_BACKEND", _env("FASTGAN_BACKEND")),
                ("TRITON_INTERPRET", _env("TRITON_INTERPRET")),
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
        f"  device        {info['device']}",
    ]
    for name, value in info["environment"].items():
        lines.append(f"  {name:<13} {value}")
    lines.append("backends:")
    for name, status in info["backends"].items():
        mark = "yes" if status["available"] else "no "
        lines.append(f"  {name:<7} {mark} {status['reason']}".rstrip())
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> int:
    info = collect_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastgan", description="fastgan: custom-kernel accelerated GAN training.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = commands.add_parser("info", help="versions, build flags, device and available backends")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(handler=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
