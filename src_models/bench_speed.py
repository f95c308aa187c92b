"""Benchmark speed and memory: Mpix/s on fixed shapes, peak memory on an 8192^2 image.

Why a subprocess for memory: a process's peak resident memory only grows, so the
peak of one model on one large image is measured in a fresh Python that loads
that model, denoises the image and reports its own ``ru_maxrss``.

Run as ``python -m src_models.bench_speed SPEC --size 8192`` it is that child: it
prints one JSON line with the timings and peaks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = [
    "QUICK_SHAPES",
    "SPEED_SHAPES",
    "load_denoiser",
    "measure_memory",
    "measure_speed",
    "throughput",
]

# label -> (planes, height, width); Mpix counts every plane
SPEED_SHAPES = {
    "512x512": (1, 512, 512),
    "2048x2048": (1, 2048, 2048),
    "16x512x512": (16, 512, 512),
}
QUICK_SHAPES = {"512x512": (1, 512, 512)}
REFERENCE_PREFIX = "reference:"


def load_denoiser(spec: str):
    """A Denoiser from a spec: ``"reference:<npz file>"`` or a model name or ``.keras`` path."""
    if spec.startswith(REFERENCE_PREFIX):
        from .reference import load_reference

        return load_reference(spec[len(REFERENCE_PREFIX) :])
    from .registry import load_model

    return load_model(spec)


def _test_image(
    planes: int, height: int, width: int, channels: int, seed: int = 0, dtype: str = "uint8"
) -> np.ndarray:
    """An image (planes, H, W[, C]) of smooth structure plus noise; speed ignores content.

    ``dtype`` "uint8" (photos, 0-255) or "uint16" (camera-like: 12-bit counts above a
    black level of 100).

    Built a band of rows at a time: a whole-plane float64 noise draw of an 8192^2
    image would take more memory than the denoising whose peak it is meant to measure.
    """
    rng = np.random.default_rng(seed)
    shape = (planes, height, width) + ((channels,) if channels > 1 else ())
    if dtype not in ("uint8", "uint16"):
        raise ValueError(f"test image dtype must be uint8 or uint16 (got {dtype!r})")
    img = np.empty(shape, dtype=dtype)
    gain, black, top = (1.0, 0.0, 255) if dtype == "uint8" else (16.0, 100.0, 65535)
    xx = np.arange(width, dtype=np.float32)
    band = max(1, (1 << 20) // max(1, width * channels))
    for p in range(planes):
        for y0 in range(0, height, band):
            yy = np.arange(y0, min(height, y0 + band), dtype=np.float32)[:, None]
            base = 128 + 60 * np.sin(xx / 37.0)[None, :] * np.cos(yy / 23.0)
            if channels > 1:
                base = base[..., None]
            noise = rng.normal(0.0, 20.0, size=img[p, y0 : y0 + band].shape).astype(np.float32)
            values = np.clip(base + noise, 0, 255) * gain + black
            img[p, y0 : y0 + band] = np.clip(np.rint(values), 0, top).astype(dtype)
    return img[0] if planes == 1 else img


def throughput(
    denoiser, shape: tuple[int, int, int], repeats: int = 3, budget_s: float = 60.0
) -> tuple[float, float, int]:
    """Median seconds per call and Mpix/s for one uint8 image or stack, after a warm-up call.

    Runs up to ``repeats`` timed calls, fewer when they would exceed ``budget_s``.

    Returns
    -------
    seconds : float
    mpix_per_s : float
    runs : int
        Timed calls.
    """
    planes, h, w = shape
    channels = int(denoiser.channels)
    img = _test_image(planes, h, w, channels)
    axis = -1 if channels > 1 else None
    t0 = time.perf_counter()
    denoiser.denoise(img, channel_axis=axis)  # warm-up: tracing and memory pools
    warm = time.perf_counter() - t0
    times = []
    while len(times) < max(1, repeats):
        if times and sum(times) + warm + times[-1] > budget_s:
            break
        t0 = time.perf_counter()
        denoiser.denoise(img, channel_axis=axis)
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return sec, planes * h * w / 1e6 / sec, len(times)


def measure_speed(
    denoisers,
    shapes: dict[str, tuple[int, int, int]],
    repeats: int = 3,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Throughput of every denoiser on every shape (gray images for gray models, RGB for colour).

    Each figure is the median of up to ``repeats`` calls after a warm-up call.

    Returns
    -------
    list of dict
        Keys: method, shape, channels, seconds, mpix_s, runs.
    """
    out = []
    for den in denoisers:
        for label, shape in shapes.items():
            sec, mpix, runs = throughput(den, shape, repeats=repeats)
            out.append(
                {
                    "method": den.name,
                    "shape": label,
                    "channels": int(den.channels),
                    "seconds": sec,
                    "mpix_s": mpix,
                    "runs": runs,
                }
            )
            if log is not None:
                log(
                    f"[speed] {den.name} {label}: {mpix:.3f} Mpix/s ({sec:.2f} s, median of {runs})"
                )
    return out


def measure_memory(
    spec: str, size: int = 8192, timeout: float | None = None, planes: int = 1, dtype: str = "uint8"
) -> dict:
    """Peak memory and speed of one model on a ``size`` x ``size`` image, in a subprocess.

    Parameters
    ----------
    spec : str
        As for :func:`load_denoiser`; the child process loads the model itself.
    size : int
        Side of the square image (RGB for colour models).
    timeout : float, optional
        Seconds before the child is killed.
    planes : int
        Planes of a stack (1: one image).
    dtype : str
        "uint8" (photos) or "uint16" (camera counts above a black level).

    Returns
    -------
    dict
        Keys: method, shape, channels, seconds, mpix_s, peak_rss_mb (whole process),
        loaded_rss_mb (after loading the model, before the image), python.
    """
    cmd = [sys.executable, "-m", "src_models.bench_speed", spec, "--size", str(int(size))]
    cmd += ["--planes", str(int(planes)), "--dtype", dtype]
    return _run_json_child(cmd, f"memory run of {spec!r} on {size}x{size}", timeout)


def measure_dask_memory(spec: str, size: int = 8192, workers: int = 0, timeout=None) -> dict:
    """Peak memory and speed of the out-of-core path (zarr -> ``denoise_dask`` -> zarr).

    Runs ``python -m src_models.dask_inference`` in a fresh process, as
    :func:`measure_memory` does for the in-memory path, so both columns compare.
    ``workers`` 0 is dask's threaded scheduler in that process; N a LocalCluster of N
    single-threaded worker processes (peak = client + all workers).
    """
    cmd = [
        sys.executable,
        "-m",
        "src_models.dask_inference",
        spec,
        "--size",
        str(int(size)),
        "--workers",
        str(int(workers)),
    ]
    r = _run_json_child(cmd, f"dask run of {spec!r}", timeout)
    r["method"] = f"{r['method']} (dask, " + (f"{workers} workers)" if workers else "threads)")
    r.setdefault("channels", 1)
    return r


def _run_json_child(cmd: list[str], what: str, timeout: float | None) -> dict:
    """Run ``cmd`` in a fresh Python and return the last JSON line it prints.

    Why: a peak memory is only meaningful for a process that did nothing else, so
    both memory measurements run a child with this checkout first on ``PYTHONPATH``
    (and TensorFlow's C++ logging off, unless set).

    Parameters
    ----------
    cmd : list of str
        The command (``sys.executable -m ...``).
    what : str
        The run, for the error message (e.g. ``"dask run of 'gray'"``).
    timeout : float, optional
        Seconds before the child is killed (``subprocess.TimeoutExpired``).

    Raises
    ------
    RuntimeError
        If the child exits non-zero or prints no line starting with ``{``; the message
        ends with the last five lines of its stderr (or stdout).
    """
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): " + " | ".join(tail))
    return json.loads(lines[-1])


def _maxrss_mb() -> float:
    """Peak resident memory of this process in MiB (2**20 bytes).

    Why VmHWM first: on Linux ``ru_maxrss`` survives ``exec``, so a child started
    from a big parent would report the parent's size; VmHWM belongs to the new
    program's own address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    import resource

    # ru_maxrss: kilobytes on Linux, bytes on macOS
    scale = 1.0 / 1024 if sys.platform != "darwin" else 1.0 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _child(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure one model's peak memory (internal).")
    parser.add_argument("spec", help="model name, .keras path or reference:<npz>")
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--planes", type=int, default=1)
    parser.add_argument("--dtype", default="uint8", choices=("uint8", "uint16"))
    args = parser.parse_args(argv)
    den = load_denoiser(args.spec)
    loaded = _maxrss_mb()
    channels = int(den.channels)
    planes = max(1, args.planes)
    img = _test_image(planes, args.size, args.size, channels, dtype=args.dtype)
    t0 = time.perf_counter()
    den.denoise(img, channel_axis=-1 if channels > 1 else None)
    sec = time.perf_counter() - t0
    shape = f"{args.size}x{args.size}" if planes == 1 else f"{planes}x{args.size}x{args.size}"
    if args.dtype != "uint8":
        shape += f" {args.dtype}"
    print(
        json.dumps(
            {
                "method": den.name,
                "shape": shape,
                "channels": channels,
                "seconds": sec,
                "mpix_s": planes * args.size * args.size / 1e6 / sec,
                "peak_rss_mb": _maxrss_mb(),
                "loaded_rss_mb": loaded,
                "python": sys.version.split()[0],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(_child())
