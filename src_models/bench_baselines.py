"""Classical baselines (BM3D / CBM3D, skimage NLM) and their committed score cache.

Why a cache: BM3D costs about 35 us per pixel on a laptop core, hours for the full
test sets, while our models change daily. Baselines are computed once with
``--compute-baselines`` (incrementally: rows already present are skipped, each new
row is appended and flushed, so a killed run resumes) into
``src_models/bench_baselines.csv``, and every other run reads them. Each row keeps
the CRC of the noisy input it was computed on; a row whose CRC no longer matches
the noise the benchmark draws is ignored, so a stale cache cannot slip in.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import closing
from pathlib import Path

import numpy as np

from .bench_quality import ImageScore, Sample, input_crc, load_clean, make_noisy, score

__all__ = [
    "BASELINES",
    "CACHE_FIELDS",
    "DEFAULT_CACHE",
    "append_rows_resumably",
    "baseline_label",
    "cached_scores",
    "compute_baselines",
    "estimated_sigma",
    "read_cache",
    "read_csv_rows",
    "run_baseline",
    "score_values",
]

BASELINES = ("bm3d", "bm3d_est", "nlm")
CACHE_FIELDS = ("dataset", "image", "sigma", "method", "psnr", "ssim", "seconds", "input_crc")
DEFAULT_CACHE = Path(__file__).parent / "bench_baselines.csv"

Key = tuple[str, str, float, str]
_PRIORITY = (25.0, 50.0, 15.0, 5.0, 75.0, 35.0, 90.0, 2.0, 1.0)


def baseline_label(method: str, color: bool) -> str:
    """Display name: "BM3D" / "CBM3D" with the true sigma, "... (est. sigma)", "NLM (skimage)"."""
    bm3d = "CBM3D" if color else "BM3D"
    labels = {"bm3d": bm3d, "bm3d_est": f"{bm3d} (est. sigma)", "nlm": "NLM (skimage)"}
    if method not in labels:
        raise ValueError(f"unknown baseline {method!r}; expected one of {', '.join(BASELINES)}")
    return labels[method]


def estimated_sigma(noisy01: np.ndarray, color: bool) -> float:
    """Noise sigma in [0, 1] units by skimage's wavelet estimator (channel average)."""
    from skimage.restoration import estimate_sigma

    est = estimate_sigma(noisy01, channel_axis=-1 if color else None, average_sigmas=True)
    return max(float(est), 1e-4)  # BM3D and NLM need a positive sigma


def run_baseline(method: str, noisy: np.ndarray, sigma: float, color: bool) -> np.ndarray:
    """Denoise a float [0, 255] image with a baseline; returns float [0, 255].

    Parameters
    ----------
    method : str
        "bm3d" (BM3D / CBM3D given the true sigma), "bm3d_est" (sigma from
        :func:`skimage.restoration.estimate_sigma`) or "nlm" (skimage non-local means,
        fast mode, h = 0.8 sigma_est, patch 5, distance 6).
    noisy : ndarray
        (H, W) gray or (H, W, 3) colour.
    sigma : float
        The true noise sigma on the 8-bit scale (used by "bm3d" only).
    color : bool
    """
    baseline_label(method, color)  # validates the name
    y = np.asarray(noisy, dtype=np.float64) / 255.0
    if method == "nlm":
        from skimage.restoration import denoise_nl_means

        est = estimated_sigma(y, color)
        out = denoise_nl_means(
            y,
            h=0.8 * est,
            sigma=est,
            fast_mode=True,
            patch_size=5,
            patch_distance=6,
            channel_axis=-1 if color else None,
        )
        return np.asarray(out, dtype=np.float64) * 255.0
    import bm3d

    s = max(float(sigma), 1e-3) / 255.0 if method == "bm3d" else estimated_sigma(y, color)
    out = bm3d.bm3d_rgb(y, s) if color else bm3d.bm3d(y, s)
    return np.asarray(out, dtype=np.float64).reshape(y.shape) * 255.0


def read_csv_rows(path: str | Path, fields: Sequence[str], what: str) -> list[dict]:
    """The rows of a score cache as dicts of strings; [] if the file is missing.

    Lines starting with ``#`` (the commands that wrote the file) are skipped; a file
    without one of ``fields`` raises, naming ``what`` cache it is. Shared by the
    baseline, microscopy-baseline and reference caches.
    """
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        lines = [ln for ln in f if ln.strip() and not ln.startswith("#")]
    reader = csv.DictReader(lines)
    missing = set(fields) - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"{what} cache {path} lacks columns {sorted(missing)}")
    return list(reader)


def score_values(row: dict) -> dict:
    """The numbers of one cached image score: psnr, ssim, seconds (float), input_crc (int)."""
    return {
        "psnr": float(row["psnr"]),
        "ssim": float(row["ssim"]),
        "seconds": float(row["seconds"]),
        "input_crc": int(row["input_crc"]),
    }


def read_cache(path: str | Path) -> dict[Key, dict]:
    """Rows of the baseline cache by (dataset, image, sigma, method); {} if the file is missing."""
    return {
        (r["dataset"], r["image"], float(r["sigma"]), r["method"]): score_values(r)
        for r in read_csv_rows(path, CACHE_FIELDS, "baseline")
    }


def cached_scores(
    samples: Iterable[Sample],
    sigmas: Sequence[float],
    cache: dict[Key, dict],
    crcs: dict[tuple[str, str, float], int],
    warn: Callable[[str], None] | None = None,
) -> list[ImageScore]:
    """Baseline scores for the given images and sigmas, read from the cache.

    Parameters
    ----------
    samples, sigmas
        The benchmark's subset.
    cache : dict
        From :func:`read_cache`.
    crcs : dict
        ``(dataset, image, sigma) -> input_crc`` of the noisy images of this run;
        cached rows computed on other noise are skipped (and reported via ``warn``).
    """
    out = []
    stale = 0
    for sample in samples:
        for sigma in sigmas:
            crc = crcs.get((sample.dataset, sample.name, float(sigma)))
            for method in BASELINES:
                row = cache.get((sample.dataset, sample.name, float(sigma), method))
                if row is None:
                    continue
                if crc is not None and row["input_crc"] != crc:
                    stale += 1
                    continue
                out.append(
                    ImageScore(
                        sample.dataset,
                        sample.name,
                        float(sigma),
                        baseline_label(method, sample.color),
                        "baseline",
                        row["psnr"],
                        row["ssim"],
                        row["seconds"],
                        row["input_crc"],
                    )
                )
    if stale and warn is not None:
        warn(f"ignored {stale} cached baseline rows computed on different noise (stale cache)")
    return out


def _task(sample: Sample, sigma: float, methods: Sequence[str]) -> list[dict]:
    """Compute the missing baselines of one noisy image (runs in a worker process)."""
    clean = load_clean(sample)
    noisy = make_noisy(clean, sample, sigma)
    crc = input_crc(noisy)
    rows = []
    for method in methods:
        t0 = time.perf_counter()
        est = run_baseline(method, noisy, sigma, sample.color)
        dt = time.perf_counter() - t0
        p, s = score(clean, est, sample.color)
        rows.append(
            {
                "dataset": sample.dataset,
                "image": sample.name,
                "sigma": f"{sigma:g}",
                "method": method,
                "psnr": f"{p:.4f}",
                "ssim": f"{s:.5f}",
                "seconds": f"{dt:.3f}",
                "input_crc": crc,
            }
        )
    return rows


def _worker_init() -> None:
    # one thread per worker process: the pool supplies the parallelism
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


def compute_baselines(
    samples: Sequence[Sample],
    sigmas: Sequence[float],
    path: str | Path = DEFAULT_CACHE,
    workers: int = 1,
    log: Callable[[str], None] | None = None,
    methods: Sequence[str] = BASELINES,
    provenance: str | None = None,
) -> int:
    """Compute the baseline rows missing from the cache and append them as they finish.

    Safe to kill and rerun: each finished image is appended and flushed, and rows
    already present are skipped. Sigmas 25, 50 and 15 (the published comparison
    points) go first.

    Parameters
    ----------
    samples, sigmas
        Images and noise levels to cover.
    path : str or Path
        The cache CSV (created with a header if missing).
    workers : int
        Worker processes (1: in this process).
    log : callable, optional
        Receives one line per finished image and sigma.
    methods : sequence of str
        Which of :data:`BASELINES` to compute (e.g. only ``bm3d_est`` at sigma 90).
    provenance : str, optional
        The command, written as a ``#`` comment line before the rows it adds.

    Returns
    -------
    int
        Rows added.
    """
    unknown = sorted(set(methods) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; expected some of {', '.join(BASELINES)}")
    cache = read_cache(path)
    tasks = []
    for sample in samples:
        for sigma in sigmas:
            todo = [
                m for m in methods if (sample.dataset, sample.name, float(sigma), m) not in cache
            ]
            if todo:
                tasks.append((sample, float(sigma), todo))
    # the published comparison points first, so a partial cache is useful early
    tasks.sort(key=lambda t: _PRIORITY.index(t[1]) if t[1] in _PRIORITY else len(_PRIORITY))

    def logged(rows: list[dict], done: int, total: int) -> None:
        r = rows[0]
        txt = ", ".join(f"{x['method']} {float(x['psnr']):.2f}" for x in rows)
        log(f"[baselines {done}/{total}] {r['dataset']} {r['image']} sigma {r['sigma']}: {txt}")

    on_rows = None if log is None else logged
    return append_rows_resumably(
        path, CACHE_FIELDS, _task, tasks, workers, on_rows, provenance=provenance
    )


def append_rows_resumably(
    path: str | Path,
    fields: Sequence[str],
    task: Callable[..., list[dict]],
    tasks: Sequence[tuple],
    workers: int = 1,
    on_rows: Callable[[list[dict], int, int], None] | None = None,
    provenance: str | None = None,
) -> int:
    """Run ``task(*args)`` for each ``args`` in ``tasks``, appending its rows to a CSV cache.

    Why: baseline caches take hours to fill, so each task's rows are written and
    flushed as soon as it finishes; a killed run keeps them, and a rerun (whose
    caller leaves out the rows already present) resumes where it stopped. Shared by
    :func:`compute_baselines` and :func:`src_models.bench_micro.compute_micro_baselines`.

    Parameters
    ----------
    path : str or Path
        The CSV; created (with its header) if missing or empty, untouched if ``tasks``
        is empty.
    fields : sequence of str
        Its columns.
    task : callable
        Returns the rows (dicts keyed by ``fields``) of one task; module-level, since
        it is sent to spawned worker processes.
    tasks : sequence of tuple
        The arguments of each call, in the order to start them.
    workers : int
        Worker processes, one thread each (1: in this process).
    on_rows : callable, optional
        Called as ``on_rows(rows, tasks_done, tasks_total)`` after each task's rows
        are flushed.
    provenance : str, optional
        The command, written first as a ``# made by: <command> (<date>)`` comment
        line (``resumed by`` when the file already had rows).

    Returns
    -------
    int
        Rows added.
    """
    if not tasks:
        return 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not path.is_file() or path.stat().st_size == 0
    added = 0
    with open(path, "a", newline="") as f:
        if provenance is not None:
            date = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
            f.write(f"# {'made' if new_file else 'resumed'} by: {provenance} ({date})\n")
        writer = csv.DictWriter(f, fieldnames=fields)
        if new_file:
            writer.writeheader()
        f.flush()
        # closing: on an error here the pool is shut down now, not when collected
        with closing(_run_tasks(task, tasks, workers)) as results:
            for done, rows in enumerate(results, start=1):
                writer.writerows(rows)
                f.flush()
                added += len(rows)
                if on_rows is not None:
                    on_rows(rows, done, len(tasks))
    return added


def _run_tasks(
    task: Callable[..., list[dict]], tasks: Sequence[tuple], workers: int
) -> Iterator[list[dict]]:
    """Yield the result of each ``task(*args)`` as it finishes (in order when serial).

    Why a generator: the caller writes each result the moment it exists, whether it
    came from this process or from a pool of spawned single-threaded workers.
    """
    if workers <= 1:
        for args in tasks:
            yield task(*args)
        return
    import multiprocessing as mp

    with ProcessPoolExecutor(
        max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init
    ) as pool:
        pending = {pool.submit(task, *args) for args in tasks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()
