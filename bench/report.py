#!/usr/bin/env python
"""Turn a pytest-benchmark JSON file into fastgan's committed benchmark report.

Usage::

    pytest bench --benchmark-only --benchmark-json=OUT.json
    python bench/report.py OUT.json [--device-name NAME] [--out-dir DIR]

Writes, under ``DIR`` (default: the ``bench/`` folder this script lives in):

``results/<device-slug>.json``
    The device, the run's date (UTC, ISO 8601), the torch / triton / fastgan / Python versions,
    the git commit, and one entry per benchmark: its group (the case), provider, median / IQR /
    min time in µs, rounds, and every field the benchmark recorded in ``extra_info``.
``RESULTS.md``
    One Markdown table per op family (the group's first word): the median µs of each provider,
    the best fastgan provider's speedup over eager PyTorch and over ``torch.compile``, and where
    recorded its GB/s and % of the measured copy bandwidth, kernel launches, host µs per call,
    peak memory and saved activation memory (fastgan / eager), and it/s for training cases.
``results/<device-slug>.png``
    A bar chart (log scale, line at 1×) of the best fastgan provider's speedup over eager per case.

Missing figures are left blank. A missing or unreadable JSON file ends the script with a
one-line message and exit status 2. Only the standard library and Pillow are needed
(torch / triton are imported only when the JSON does not record their versions).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Provider ids in table order: the op benches' (bench/conftest.py) and the training benches'.
KNOWN_PROVIDERS = ("eager", "eager-loop", "compile", "compile-reduce-overhead",
                   "fastgan-torch", "fastgan-triton", "fastgan-cuda", "fastgan", "fastgan-autograd", "fastgan-graphs",
                   "fastgan-drop-in")
# The provider each "vs" column compares against, in order of preference per case.
BASELINES = {"eager": ("eager", "eager-loop"), "compile": ("compile",),
             "reduce-overhead": ("compile-reduce-overhead",)}
FASTGAN_BACKENDS = ("torch", "triton", "cuda")
MIB = 2**20


class ReportError(Exception):
    """A problem with the input that ends the script with a one-line message."""


# --------------------------------------------------------------------------- reading


def load(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file (run `pytest bench --benchmark-only --benchmark-json={path}` first)")
    except OSError as exc:
        raise ReportError(f"{path}: cannot read: {exc.strerror or exc}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})")
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ReportError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    if not data["benchmarks"]:
        raise ReportError(f"{path}: contains no benchmarks (were they all skipped?)")
    return data


def provider_of(bench: dict) -> str:
    """The provider id (``eager``, ``compile``, ``fastgan-<backend>``, ...) of one benchmark."""
    params = bench.get("params") or {}
    value = params.get("provider") if isinstance(params, dict) else None
    if isinstance(value, str) and value:
        return f"fastgan-{value}" if value in FASTGAN_BACKENDS else value
    values = [v for v in params.values() if isinstance(v, str) and v] if isinstance(params, dict) else []
    for v in values:  # a benchmark parametrised by another name (e.g. ``path``) with a provider-like value
        if v in KNOWN_PROVIDERS or v.startswith(("eager", "compile", "fastgan")):
            return v
    param = bench.get("param")
    if not isinstance(param, str):
        match = re.search(r"\[(.*)\]$", str(bench.get("name", "")))
        param = match.group(1) if match else ""
    for known in sorted(KNOWN_PROVIDERS, key=len, reverse=True):
        if param == known or (known != "fastgan" and param.startswith(known + "-")):
            return known
    # Not one of the provider fixture's ids (e.g. a benchmark parametrised by ``path``):
    # take its first parameter's value, else the whole parameter string.
    return values[0] if values else (param or "?")


def is_fastgan(provider: str) -> bool:
    return provider.startswith("fastgan")


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _us(stats: dict, key: str):
    value = _number(stats.get(key))
    return None if value is None else value * 1e6


def cases_of(data: dict) -> list[dict]:
    cases = []
    seen = set()
    for bench in data["benchmarks"]:
        if not isinstance(bench, dict):
            continue
        name = str(bench.get("name", "?"))
        extra = bench.get("extra_info") if isinstance(bench.get("extra_info"), dict) else {}
        group = bench.get("group") or extra.get("group") or name.split("[")[0]
        provider = provider_of(bench)
        key, suffix = (group, provider), 2
        while key in seen:  # two benchmarks of one provider in one group: keep both, distinguishable
            key = (group, f"{provider}#{suffix}")
            suffix += 1
        seen.add(key)
        stats = bench.get("stats") if isinstance(bench.get("stats"), dict) else {}
        case = {
            "group": str(group),
            "provider": key[1],
            "name": name,
            "median_us": _us(stats, "median"),
            "iqr_us": _us(stats, "iqr"),
            "min_us": _us(stats, "min"),
            "rounds": _number(stats.get("rounds")),
        }
        for field, value in extra.items():
            case.setdefault(field, value)
        cases.append(case)
    return cases


# --------------------------------------------------------------------------- run metadata


def _cpu_brand(machine: dict) -> str:
    cpu = machine.get("cpu") if isinstance(machine.get("cpu"), dict) else {}
    return str(cpu.get("brand_raw") or machine.get("processor") or machine.get("machine") or "unknown")


def device_name(data: dict, cases: list[dict], override: str | None) -> str:
    if override:
        return override
    machine = data.get("machine_info") if isinstance(data.get("machine_info"), dict) else {}
    for case in cases:
        device = case.get("device")
        if isinstance(device, str) and device and not device.lower().startswith("cpu"):
            return device
    return f"cpu: {_cpu_brand(machine)}"


def is_cpu(device: str) -> bool:
    return device.lower().startswith("cpu")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def _installed_version(module: str):
    """The version of ``module`` installed here (without importing it where metadata suffices)."""
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        pass
    except Exception:  # broken metadata: fall back to importing
        pass
    try:
        return getattr(__import__(module), "__version__", None)
    except Exception:
        return None


def versions(data: dict, cases: list[dict]) -> dict:
    recorded = {}
    for case in cases:
        if isinstance(case.get("versions"), dict):
            recorded = case["versions"]
            break
    found = {}
    for module in ("torch", "triton", "fastgan"):
        found[module] = recorded.get(module) or _installed_version(module)
    for key in ("cuda", "driver"):  # recorded by bench/conftest.py on a GPU
        found[key] = recorded.get(key)
    machine = data.get("machine_info") if isinstance(data.get("machine_info"), dict) else {}
    found["python"] = machine.get("python_version") or ".".join(map(str, sys.version_info[:3]))
    return found


def allocator(cases: list[dict]):
    """The CPU allocator setting bench/conftest.py recorded with the cases (None if none did)."""
    return next((case["allocator"] for case in cases if isinstance(case.get("allocator"), str)), None)


def commit(data: dict):
    info = data.get("commit_info") if isinstance(data.get("commit_info"), dict) else {}
    sha = info.get("id")
    dirty = info.get("dirty")
    if not sha:
        try:
            sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                 timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            sha = None
    if sha and dirty:
        sha += "-dirty"
    return sha


def run_date(data: dict) -> str:
    stamp = data.get("datetime")
    when = None
    if isinstance(stamp, str):
        try:
            when = _dt.datetime.fromisoformat(stamp)
        except ValueError:
            when = None
    if when is None:
        when = _dt.datetime.now(_dt.timezone.utc)
    elif when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc).replace(microsecond=0).isoformat()


# --------------------------------------------------------------------------- analysis


def natural_key(text: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def provider_order(provider: str):
    base = provider.split("#")[0]
    rank = KNOWN_PROVIDERS.index(base) if base in KNOWN_PROVIDERS else len(KNOWN_PROVIDERS)
    return (rank, natural_key(provider))


def families(cases: list[dict]) -> dict[str, dict[str, dict[str, dict]]]:
    """{family: {group: {provider: case}}}, families and groups in natural order."""
    grouped: dict[str, dict[str, dict[str, dict]]] = {}
    for case in cases:
        family = case["group"].split(" ")[0]
        grouped.setdefault(family, {}).setdefault(case["group"], {})[case["provider"]] = case
    return {
        family: {group: grouped[family][group] for group in sorted(grouped[family], key=natural_key)}
        for family in sorted(grouped, key=natural_key)
    }


def best_fastgan(by_provider: dict[str, dict]):
    timed = [c for p, c in by_provider.items() if is_fastgan(p) and c.get("median_us")]
    return min(timed, key=lambda c: c["median_us"]) if timed else None


def speedup(by_provider: dict[str, dict], baseline: str, best):
    """``baseline``'s median over ``best``'s; ``baseline`` is a key of BASELINES."""
    base = next((by_provider[p] for p in BASELINES[baseline] if p in by_provider), None)
    if best is None or base is None or not base.get("median_us") or not best.get("median_us"):
        return None
    return base["median_us"] / best["median_us"]


def is_training(group_cases: dict[str, dict[str, dict]], family: str) -> bool:
    return family.startswith("train") or any(
        _number(c.get("it_per_s")) is not None or _number(c.get("images_per_s")) is not None
        for by_provider in group_cases.values() for c in by_provider.values())


# --------------------------------------------------------------------------- formatting


def fmt_us(value) -> str:
    value = _number(value)
    if value is None:
        return ""
    if value < 10:
        return f"{value:.2f}"
    if value < 1000:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def fmt(value, spec: str, suffix: str = "") -> str:
    value = _number(value)
    return "" if value is None else f"{value:{spec}}{suffix}"


def fmt_small(value, suffix: str = "") -> str:
    """One decimal from 10 up, two significant digits below (small CPU-sized cases)."""
    value = _number(value)
    if value is None:
        return ""
    text = f"{value:,.1f}" if abs(value) >= 10 or value == 0 else f"{value:.2g}"
    return text + suffix


def fmt_mib(value) -> str:
    value = _number(value)
    if value is None:
        return ""
    mib = value / MIB
    if mib == 0 or mib >= 100:
        return f"{mib:.0f}"
    return f"{mib:.2f}" if mib >= 1 else f"{mib:.2g}"


def pair(best, eager, key: str, formatter) -> str:
    """``fastgan / eager`` for one extra_info field, blanks where missing."""
    left = formatter(best.get(key)) if best else ""
    right = formatter(eager.get(key)) if eager else ""
    if not left and not right:
        return ""
    return f"{left or '–'} / {right or '–'}"


def md_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _eager_of(by_provider: dict[str, dict]):
    return next((by_provider[p] for p in BASELINES["eager"] if p in by_provider), None)


def _it_per_s(case) -> float | None:
    """A training case's recorded it/s, else 1 / its median time."""
    if not case:
        return None
    recorded = _number(case.get("it_per_s"))
    if recorded is not None:
        return recorded
    median = _number(case.get("median_us"))
    return 1e6 / median if median else None


def family_table(family: str, group_cases: dict[str, dict[str, dict]]) -> list[str]:
    """The Markdown table of one op family: one row per case (group)."""
    providers = sorted({p for by_provider in group_cases.values() for p in by_provider}, key=provider_order)
    everything = [c for by_provider in group_cases.values() for c in by_provider.values()]

    def present(key):
        return any(_number(c.get(key)) is not None for c in everything)

    training = is_training(group_cases, family)
    baselines = ["eager", "compile"]
    if any(p in BASELINES["reduce-overhead"] for p in providers):
        baselines.append("reduce-overhead")
    unit = "it/s" if training else "µs"
    headers = ["case"] + [f"{p} {unit}" for p in providers] + ["best fastgan"] + [f"vs {b}" for b in baselines]
    columns = []  # (header, function(by_provider, best) -> str)
    if present("gb_per_s"):
        columns.append(("GB/s", lambda bp, b: fmt_small(b and b.get("gb_per_s"))))
    if present("pct_of_copy"):
        columns.append(("% of copy", lambda bp, b: fmt_small(b and b.get("pct_of_copy"), " %")))
    if present("images_per_s"):
        columns.append(("images/s (fastgan / eager)",
                        lambda bp, b: pair(b, _eager_of(bp), "images_per_s", lambda v: fmt(v, ",.0f"))))
    if present("launches"):
        columns.append(("launches (fastgan / eager)",
                        lambda bp, b: pair(b, _eager_of(bp), "launches", lambda v: fmt(v, ".0f"))))
    if present("host_us"):
        columns.append(("host µs (fastgan / eager)", lambda bp, b: pair(b, _eager_of(bp), "host_us", fmt_us)))
    if present("peak_memory_bytes"):
        columns.append(("peak MiB (fastgan / eager)",
                        lambda bp, b: pair(b, _eager_of(bp), "peak_memory_bytes", fmt_mib)))
    if present("saved_activation_bytes"):
        columns.append(("saved act. MiB (fastgan / eager)",
                        lambda bp, b: pair(b, _eager_of(bp), "saved_activation_bytes", fmt_mib)))
    headers += [h for h, _ in columns]

    lines = [f"### {md_cell(family)}", ""]
    if training:
        lines += ["Training steps per second (the median step time's inverse where no it/s was recorded).", ""]
    lines += ["| " + " | ".join(md_cell(h) for h in headers) + " |",
              "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    for group, by_provider in group_cases.items():
        best = best_fastgan(by_provider)
        row = [group]
        for p in providers:
            case = by_provider.get(p)
            if training:
                row.append(fmt(_it_per_s(case), ",.1f"))
            elif case and case.get("median_us") is not None:
                iqr = fmt_us(case.get("iqr_us"))
                row.append(fmt_us(case["median_us"]) + (f" ± {iqr}" if iqr else ""))
            else:
                row.append("")
        row.append(best["provider"] if best else "")
        for baseline in baselines:
            ratio = speedup(by_provider, baseline, best)
            row.append("n/a" if ratio is None else f"{ratio:.2f}×")
        row += [fn(by_provider, best) for _, fn in columns]
        lines.append("| " + " | ".join(md_cell(cell) for cell in row) + " |")
    lines.append("")
    return lines


def markdown(meta: dict, grouped, chart_name: str, source: str) -> str:
    v = meta["versions"]
    lines = [
        "# fastgan benchmark results",
        "",
        f"- **Device:** {meta['device']}",
        f"- **Date (UTC):** {meta['date']}",
        f"- **Versions:** fastgan {v.get('fastgan') or '?'}, torch {v.get('torch') or '?'}, "
        f"triton {v.get('triton') or 'not installed'}, Python {v.get('python') or '?'}"
        + (f", CUDA {v['cuda']}, driver {v.get('driver') or '?'}" if v.get("cuda") else ""),
        f"- **Commit:** {meta['commit'] or 'unknown'}",
    ]
    if meta.get("allocator"):
        lines.append(f"- **Allocator:** {meta['allocator']}")
    lines += [
        f"- **Source:** `{source}` (regenerate with `python bench/report.py OUT.json`)",
        "",
    ]
    if is_cpu(meta["device"]):
        lines += ["> **CPU results: the GPU figures are still owed.** On a CPU only eager PyTorch, "
                  "torch.compile and fastgan's `torch` backend run, at small sizes; the figures "
                  "measure host overhead, not the kernels the goals are about.", ""]
    lines += [
        "Times are the median ± IQR over rounds, in µs per call (forward + backward unless the "
        "case says otherwise); training cases show steps per second. *vs eager* (the eager "
        "loop for training), *vs compile* and *vs reduce-overhead* are the best (fastest) fastgan "
        "provider's speedup over that provider in the same case, from the median times; n/a "
        "where either is missing. "
        "GB/s and % of copy are the best fastgan provider's, against the compulsory bytes (see "
        "bench/README.md). Pairs are *best fastgan / eager*.",
        "",
        f"![speedup of the best fastgan provider over eager]({chart_name})",
        "",
    ]
    for family, group_cases in grouped.items():
        lines += family_table(family, group_cases)
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- chart


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def chart(path: Path, meta: dict, grouped) -> None:
    from PIL import Image, ImageDraw

    rows = []
    for group_cases in grouped.values():
        for group, by_provider in group_cases.items():
            best = best_fastgan(by_provider)
            ratio = speedup(by_provider, "eager", best)
            if ratio is not None and ratio > 0:
                rows.append((group, ratio, best["provider"]))

    font, small, title_font = _font(14), _font(12), _font(16)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max([probe.textlength(g, font=font) for g, _, _ in rows] + [200])
    pad, row_h, plot_w, value_w = 16, 26, 560, 190
    top, bottom = 64, 48
    width = int(pad + label_w + pad + plot_w + value_w)
    height = top + max(len(rows), 1) * row_h + bottom
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((pad, 10), "fastgan speedup over eager PyTorch (best fastgan provider, median time)",
              fill="black", font=title_font)
    commit = (meta["commit"] or "unknown")[:12]
    draw.text((pad, 34), f"{meta['device']} · {meta['date']} · commit {commit}", fill="#555555", font=small)

    x0 = pad + label_w + pad
    if not rows:
        draw.text((x0, top + 4), "no case has both eager and a fastgan provider timed", fill="#aa0000", font=font)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        return

    ratios = [r for _, r, _ in rows]
    lo = 2 ** math.floor(math.log2(min(ratios + [1.0]) / 1.15))
    hi = 2 ** math.ceil(math.log2(max(ratios + [1.0]) * 1.15))
    if hi / lo < 4:
        lo, hi = lo / 2, hi * 2

    def x_of(ratio: float) -> float:
        return x0 + (math.log2(ratio) - math.log2(lo)) / (math.log2(hi) - math.log2(lo)) * plot_w

    axis_y = top + len(rows) * row_h
    step = max(1, round((math.log2(hi) - math.log2(lo)) / 8))  # at most ~9 ticks
    k = math.log2(lo)
    while k <= math.log2(hi) + 1e-9:
        tick = 2 ** k
        x = x_of(tick)
        draw.line([(x, top - 4), (x, axis_y)], fill="#e4e4e4")
        label = f"{tick:g}x"
        draw.text((x - probe.textlength(label, font=small) / 2, axis_y + 6), label, fill="#333333", font=small)
        k += step
    draw.line([(x0, axis_y), (x0 + plot_w, axis_y)], fill="#333333")
    draw.text((x0 + plot_w / 2 - 70, axis_y + 24), "speedup (log scale)", fill="#333333", font=small)

    one = x_of(1.0)
    for i, (group, ratio, provider) in enumerate(rows):
        y = top + i * row_h
        draw.text((x0 - pad - probe.textlength(group, font=font), y + 5), group, fill="black", font=font)
        end = x_of(ratio)
        colour = "#2e7d32" if ratio >= 1 else "#c62828"
        draw.rectangle([(min(one, end), y + 4), (max(one, end), y + row_h - 4)], fill=colour)
        text = f"{ratio:.2f}x  ({provider})"
        tx = max(one, end) + 6
        if tx + probe.textlength(text, font=small) > width - 4:
            tx = width - 4 - probe.textlength(text, font=small)
        draw.text((tx, y + 6), text, fill="black", font=small)
    draw.line([(one, top - 6), (one, axis_y)], fill="black", width=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/report.py",
        description="Write bench/results/<device>.json, bench/RESULTS.md and bench/results/<device>.png "
                    "from a pytest-benchmark JSON file (pytest bench --benchmark-only --benchmark-json=OUT.json).")
    parser.add_argument("json", type=Path, help="the pytest-benchmark JSON file")
    parser.add_argument("--device-name", help="the device name to report (default: the GPU name the "
                        "benchmarks recorded, else 'cpu: <CPU brand>'); also names the output files")
    parser.add_argument("--out-dir", type=Path, default=HERE,
                        help="where RESULTS.md and results/ go (default: %(default)s)")
    args = parser.parse_args(argv)

    try:
        data = load(args.json)
        cases = cases_of(data)
        if not cases:
            raise ReportError(f"{args.json}: no readable benchmark entries")
    except ReportError as exc:
        print(f"report.py: {exc}", file=sys.stderr)
        return 2

    device = device_name(data, cases, args.device_name)
    meta = {
        "device": device,
        "date": run_date(data),
        "versions": versions(data, cases),
        "commit": commit(data),
        "allocator": allocator(cases),
    }
    name = slug(device)
    out = args.out_dir
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)

    record = {
        "device": device,
        "date": meta["date"],
        "torch": meta["versions"].get("torch"),
        "triton": meta["versions"].get("triton"),
        "fastgan": meta["versions"].get("fastgan"),
        "commit": meta["commit"],
        "python": meta["versions"].get("python"),
        "cuda": meta["versions"].get("cuda"),
        "driver": meta["versions"].get("driver"),
        "allocator": meta["allocator"],
        "cases": cases,
    }
    json_path = results / f"{name}.json"
    json_path.write_text(json.dumps(record, indent=2, default=str) + "\n")

    grouped = families(cases)
    png_path = results / f"{name}.png"
    chart(png_path, meta, grouped)
    md_path = out / "RESULTS.md"
    md_path.write_text(markdown(meta, grouped, f"results/{png_path.name}", args.json.name))

    for written in (json_path, md_path, png_path):
        print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
