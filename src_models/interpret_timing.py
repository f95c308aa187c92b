"""How long interpretation takes: ``python -m src_models.interpret_timing --out DIR``.

Why a script, not a timed test: the times depend on the machine and its load,
so they are measured once, written with the command, date, hardware and load
average next to them, and copied into the README by ``--write-docs`` (between
``<!-- interpret-timing:start -->`` and ``<!-- interpret-timing:end -->``),
never typed by hand.

Measured on the camera photo (RGB models: the astronaut) with Gaussian noise of
sigma 25, for one model (default: the one the plugin offers gray images):

* ``pixel_filter``: one click in the Interpret widget; median of warm calls
  at different pixels, and the first call (tracing the backward pass);
* ``filter_maps``: the widget's 'Compute maps' (all four maps) on 512 x 512;
* ``jacobian_spectrum``: the full Jacobian of the largest crop the engine
  takes (64 x 64 gray, 36 x 36 RGB) and its singular values.

Outputs in ``--out``: ``interpret_timing.csv``, ``interpret_timing.json`` (the
run's provenance) and ``interpret_timing.md`` (the README block).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MARK_END", "MARK_START", "main", "measure", "readme_block", "update_readme"]

ROOT = Path(__file__).resolve().parent.parent
MARK_START = "<!-- interpret-timing:start -->"
MARK_END = "<!-- interpret-timing:end -->"
SIGMA = 25.0
FIELDS = ("operation", "model", "input", "details", "seconds", "first_call_seconds", "calls")


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def _load() -> str:
    """The 1-minute load average over the CPU count, e.g. '0.4 on 2 cores' ('' if unknown)."""
    try:
        return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except (OSError, AttributeError):
        return ""


def noisy_photo(channels: int, seed: int = 0) -> np.ndarray:
    """The 512 x 512 camera (1 channel) or astronaut (3), float32 with sigma-25 noise."""
    from skimage import data

    clean = (data.astronaut() if channels == 3 else data.camera()).astype(np.float32)
    rng = np.random.default_rng(seed)
    return clean + rng.normal(0.0, SIGMA, clean.shape).astype(np.float32)


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _every_tenth(what: str) -> Callable[[int, int], None]:
    """A progress callback logging every 10 %."""
    shown = [-1]

    def report(done: int, total: int) -> None:
        tenth = 10 * done // max(total, 1)
        if tenth > shown[0]:
            shown[0] = tenth
            _log(f"  {what}: {10 * tenth} %")

    return report


def measure(model: str, repeats: int = 5, probes: int = 16) -> list[dict]:
    """Time pixel_filter, filter_maps and jacobian_spectrum for one model.

    Parameters
    ----------
    model : str
        Model name or ``.keras`` path.
    repeats : int
        Warm pixel_filter calls (their median is reported).
    probes : int
        Probes of filter_maps.

    Returns
    -------
    list of dict
        One row per operation, keys :data:`FIELDS`.
    """
    from .interpret import (
        MAP_NAMES,
        MAX_JACOBIAN_VALUES,
        filter_maps,
        jacobian_spectrum,
        pixel_filter,
    )
    from .registry import load_model

    if repeats < 1 or probes < 1:
        raise ValueError(f"repeats and probes must be >= 1 (got {repeats} and {probes})")
    den = load_model(model)
    name = getattr(den, "name", None) or den.card.name
    image = noisy_photo(den.channels)
    axis = -1 if image.ndim == 3 else None
    h, w = image.shape[:2]
    size = f"{h}x{w}" + (" RGB" if axis is not None else "")
    rows = []

    _log(f"{name}: pixel_filter")
    pixels = [(h // 2 + 7 * i, w // 3 + 11 * i) for i in range(repeats + 1)]
    first = _timed(lambda: pixel_filter(den, image, pixels[0], channel_axis=axis))
    warm = [_timed(lambda p=p: pixel_filter(den, image, p, channel_axis=axis)) for p in pixels[1:]]
    rows.append(
        {
            "operation": "pixel_filter",
            "model": name,
            "input": size,
            "details": f"one pixel's exact filter (receptive field ±{den.card.receptive_field} px)",
            "seconds": statistics.median(warm),
            "first_call_seconds": first,
            "calls": f"median of {len(warm)} after the first",
        }
    )

    _log(f"{name}: filter_maps, {probes} probes")
    seconds = _timed(
        lambda: filter_maps(
            den, image, MAP_NAMES, probes, channel_axis=axis, progress=_every_tenth("maps")
        )
    )
    rows.append(
        {
            "operation": "filter_maps",
            "model": name,
            "input": size,
            "details": f"all {len(MAP_NAMES)} maps, {probes} probe{'' if probes == 1 else 's'}",
            "seconds": seconds,
            "first_call_seconds": seconds,
            "calls": "one call (tracing included)",
        }
    )

    side = math.isqrt(MAX_JACOBIAN_VALUES // den.channels)
    y0, x0 = (h - side) // 2, (w - side) // 2
    crop = np.ascontiguousarray(image[y0 : y0 + side, x0 : x0 + side])
    n = crop.size
    _log(f"{name}: jacobian_spectrum of a {side}x{side} crop ({n} x {n} Jacobian)")
    seconds = _timed(
        lambda: jacobian_spectrum(
            den, crop, 8, channel_axis=axis, progress=_every_tenth("spectrum")
        )
    )
    rows.append(
        {
            "operation": "jacobian_spectrum",
            "model": name,
            "input": f"{side}x{side} crop" + (" RGB" if axis is not None else ""),
            "details": f"full {n} x {n} Jacobian, all singular values, top 8 vectors",
            "seconds": seconds,
            "first_call_seconds": seconds,
            "calls": "one call (tracing included)",
        }
    )
    return rows


def _seconds(value: float) -> str:
    if value < 0.1:
        return f"{1000 * value:.0f} ms"
    if value >= 100:
        return f"{value:.0f} s ({value / 60:.1f} min)"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def readme_block(rows: Sequence[dict], meta: dict) -> str:
    """The README's timing lines: a table with the command, date, hardware and load."""
    labels = {
        "pixel_filter": "pixel filter (one click)",
        "filter_maps": "filter maps ('Compute maps')",
        "jacobian_spectrum": "Jacobian spectrum",
    }
    out = [
        f"_Generated by `{meta['command']}` on {meta['date']}, {meta['hardware']}; "
        f"load average {meta['load_start']} at the start, {meta['load_end']} at the end "
        "(do not edit by hand)._",
        "",
        "| what | model | input | details | time |",
        "|---|---|---|---|---:|",
    ]
    for r in rows:
        t = _seconds(float(r["seconds"]))
        if r["operation"] == "pixel_filter":
            t += f" (first call {_seconds(float(r['first_call_seconds']))})"
        what = labels.get(r["operation"], r["operation"])
        out.append(f"| {what} | {r['model']} | {r['input']} | {r['details']} | {t} |")
    return "\n".join(out) + "\n"


def update_readme(readme: Path, block: str) -> None:
    """Replace the text between :data:`MARK_START` and :data:`MARK_END` in ``readme``."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(MARK_START), text.find(MARK_END)
    if start == -1 or end == -1 or end < start:
        raise ValueError(f"{readme} must hold {MARK_START} followed by {MARK_END}")
    new = text[: start + len(MARK_START)] + "\n" + block + text[end:]
    readme.write_text(new, encoding="utf-8")


def _write(out: Path, rows: Sequence[dict], meta: dict) -> str:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "interpret_timing.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{float(r[k]):.4f}" if "seconds" in k else r[k]) for k in FIELDS})
    (out / "interpret_timing.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    block = readme_block(rows, meta)
    (out / "interpret_timing.md").write_text(block, encoding="utf-8")
    return block


def _read(out: Path) -> tuple[list[dict], dict]:
    with open(out / "interpret_timing.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    meta = json.loads((out / "interpret_timing.json").read_text(encoding="utf-8"))
    return rows, meta


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src_models.interpret_timing",
        description="Time pixel filters, filter maps and the Jacobian spectrum of a model.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default=None, help="model name or path (default: the gray default)")
    p.add_argument("--repeats", type=int, default=5, help="warm pixel_filter calls (default 5)")
    p.add_argument("--probes", type=int, default=16, help="filter_maps probes (default 16)")
    p.add_argument(
        "--write-docs",
        nargs="?",
        const=str(ROOT / "README.md"),
        default=None,
        metavar="README",
        help="also rewrite the README's interpret-timing block (default: the repository's)",
    )
    p.add_argument(
        "--docs-only",
        action="store_true",
        help="measure nothing: rewrite the README block from the results already in --out",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the timings (or only rewrite the docs) and return the exit code."""
    args = _parser().parse_args(argv)
    out = Path(args.out)
    if args.docs_only:
        rows, meta = _read(out)
        block = _write(out, rows, meta)
    else:
        from .bench import hardware_summary
        from .registry import default_model

        model = args.model or default_model(1, rgb=False)
        given = sys.argv[1:] if argv is None else list(argv)
        words = ["python", "-m", "src_models.interpret_timing", *given]
        meta = {
            "command": " ".join(shlex.quote(a) for a in words),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "hardware": hardware_summary(),
            "load_start": _load(),
        }
        rows = measure(model, repeats=args.repeats, probes=args.probes)
        meta["load_end"] = _load()
        block = _write(out, rows, meta)
    print(block)
    if args.write_docs:
        update_readme(Path(args.write_docs), block)
        _log(f"wrote the timing block into {args.write_docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
