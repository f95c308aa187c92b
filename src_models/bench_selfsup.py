"""Does noisy-only fine-tuning on one real frame beat the bundled model on that frame?

Why: a microscopist often has one noisy acquisition and nothing clean. The
noisy-only mode of :func:`~src_models.finetune.finetune` trains on that frame
alone, with Recorrupted-to-Recorrupted (``--method r2r``, the default) or
Neighbor2Neighbor (``--method n2n``); this measures what it buys on real pairs
(W2S, FMD), where the averaged clean image is used for scoring only, never for
training. The score is the microscopy section's affine-fitted PSNR on the whole image.
Both models denoise with the black level estimated per plane (``offset="auto"``, as
for camera data), and the fine-tuning subtracts it alike (``black_level="auto"``).

Run ``python -m src_models.bench_selfsup --data ../shared/data --out DIR`` (add
``--method``, ``--lr``, and ``--write-docs`` to rewrite the README block between
``<!-- selfsup:start -->`` and ``<!-- selfsup:end -->``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["SelfsupScore", "selfsup_markdown", "selfsup_score", "main"]

MARKS = ("<!-- selfsup:start -->", "<!-- selfsup:end -->")
DEFAULT_IMAGES = ("W2S:0", "W2S:10", "W2S:20", "FMD:0")


@dataclass
class SelfsupScore:
    """One frame: the bundled model's fitted PSNR before and after fine-tuning on the frame."""

    dataset: str
    image: str
    base: str
    method: str
    steps: int
    psnr_noisy: float
    psnr_base: float
    psnr_tuned: float
    ssim_base: float
    ssim_tuned: float
    seconds: float

    @property
    def gain(self) -> float:
        return self.psnr_tuned - self.psnr_base


def selfsup_score(
    sample,
    base: str,
    steps: int,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    method: str = "r2r",
    learning_rate: float | None = None,
    tuned_weight: float | None = None,
) -> SelfsupScore:
    """Fine-tune ``base`` on the noisy frame of ``sample`` alone and score both on the frame.

    Parameters
    ----------
    sample : MicroSample
        A channel image of a real noisy/clean pair.
    base : str
        Bundled (or user) model name or path to start from.
    steps : int
        Self-supervised training steps.
    seed : int
        Seed of the fine-tuning run.
    log : callable, optional
        Receives a progress line per validation.
    method : {"r2r", "n2n"}
        Recorrupted-to-Recorrupted or Neighbor2Neighbor
        (:attr:`~src_models.finetune.FinetuneSettings.noisy_method`).
    learning_rate : float, optional
        Fine-tuning learning rate (None: the fine-tuning default).
    tuned_weight : float, optional
        Share of the fine-tuned weights in the saved model
        (:attr:`~src_models.finetune.FinetuneSettings.tuned_weight`; None: the default).
    """
    from .bench_micro import load_pair, micro_score, model_runner
    from .finetune import FinetuneSettings, finetune
    from .finetune_data import SourceImage
    from .registry import ENV_MODEL_DIR, clear_cache, list_models, load_model

    # by path: the run below points the user-model folder at a temporary one
    base_path = next((str(m.path) for m in list_models() if m.name == base), str(base))
    noisy, clean = load_pair(sample)
    before = model_runner(load_model(base))(noisy)
    p_noisy = micro_score(clean, noisy, plain=False)[0]
    p_base, _, s_base = micro_score(clean, before, plain=False)
    t0 = time.perf_counter()
    old = os.environ.get(ENV_MODEL_DIR)
    with tempfile.TemporaryDirectory() as tmp:  # the tuned model never lands in the user's folder
        os.environ[ENV_MODEL_DIR] = tmp
        clear_cache()
        try:
            settings = FinetuneSettings(name="selfsup", mode="noisy", base=base_path,
                                        steps=steps, seed=seed, noisy_method=method,
                                        learning_rate=learning_rate, black_level="auto",
                                        tuned_weight=tuned_weight)

            def progress(p) -> None:
                if log is not None and p.val_psnr:
                    log(f"  step {p.step}/{p.total}: held-out score {p.val_psnr}")

            result = finetune(settings, [SourceImage(sample.name, noisy.astype(np.float32))],
                              on_progress=progress)
            after = model_runner(load_model(result.model_path))(noisy)
        finally:
            if old is None:
                os.environ.pop(ENV_MODEL_DIR, None)
            else:
                os.environ[ENV_MODEL_DIR] = old
            clear_cache()
    p_tuned, _, s_tuned = micro_score(clean, after, plain=False)
    return SelfsupScore(sample.dataset, sample.name, base, method, result.steps_done, p_noisy,
                        p_base, p_tuned, s_base, s_tuned, time.perf_counter() - t0)


def selfsup_markdown(scores: Sequence[SelfsupScore], meta: dict) -> str:
    """The README block: one line per frame, with the command that made it."""
    lines = [
        f"_Generated by `{meta['command']}` on {meta['date']}, {meta['hardware']} "
        "(do not edit by hand)._",
        "",
        "| set | frame | noisy | bundled model | method | fine-tuned on the frame | gain (dB) | "
        "SSIM before → after | steps | time |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for s in scores:
        lines.append(
            f"| {s.dataset} | {s.image} | {s.psnr_noisy:.2f} | {s.psnr_base:.2f} ({s.base}) | "
            f"{s.method} | {s.psnr_tuned:.2f} | {s.gain:+.2f} | "
            f"{s.ssim_base:.3f} → {s.ssim_tuned:.3f} | {s.steps} | {s.seconds:.0f} s |"
        )
    return "\n".join(lines)


def _samples(data: Path, specs: Sequence[str]):
    from .bench_micro import micro_samples

    out = []
    for spec in specs:
        dataset, _, index = spec.partition(":")
        items = micro_samples(data, dataset)
        i = int(index or 0)
        if not 0 <= i < len(items):
            raise ValueError(f"{spec}: {dataset} has {len(items)} channel images")
        out.append(items[i])
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m src_models.bench_selfsup``: noisy-only fine-tuning on real frames."""
    from .bench import hardware_summary
    from .bench_docs import _replace_block
    from .finetune import NOISY_METHODS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data", help="shared data folder (holds eval/)")
    p.add_argument("--out", required=True, help="output folder (selfsup.csv, selfsup.md)")
    p.add_argument("--base", default="microscopy", help="model to fine-tune (default microscopy)")
    p.add_argument("--steps", type=int, default=300, help="self-supervised steps per frame")
    p.add_argument("--method", choices=list(NOISY_METHODS), default="r2r",
                   help="r2r: Recorrupted-to-Recorrupted, n2n: Neighbor2Neighbor (default r2r)")
    p.add_argument("--lr", type=float, default=None,
                   help="fine-tuning learning rate (default: the fine-tuning default, 2e-4)")
    p.add_argument("--tuned-weight", type=float, default=None,
                   help="share of the fine-tuned weights in the saved model (default: the "
                   "fine-tuning default, 0.5 with the base; 1: the fine-tuned model alone)")
    p.add_argument("--images", default=",".join(DEFAULT_IMAGES),
                   help="SET:INDEX channel images (default %(default)s)")
    p.add_argument("--write-docs", action="store_true", help="rewrite the README block")
    p.add_argument("--readme", default=str(Path(__file__).resolve().parent.parent / "README.md"))
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    scores = []
    for sample in _samples(Path(a.data), [s for s in a.images.split(",") if s]):
        print(f"{sample.dataset} {sample.name}: fine-tuning {a.base} for {a.steps} steps "
              f"({a.method})", flush=True)
        s = selfsup_score(sample, a.base, a.steps, log=lambda m: print(m, flush=True),
                          method=a.method, learning_rate=a.lr, tuned_weight=a.tuned_weight)
        print(f"  {s.psnr_base:.2f} -> {s.psnr_tuned:.2f} dB ({s.gain:+.2f})", flush=True)
        scores.append(s)
    with open(out / "selfsup.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(scores[0])) + ["gain"])
        w.writeheader()
        for s in scores:
            w.writerow({**asdict(s), "gain": s.gain})
    argv_shown = " ".join(sys.argv[1:] if argv is None else argv)
    meta = {
        "command": f"python -m src_models.bench_selfsup {argv_shown}".strip(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hardware": hardware_summary(),
    }
    block = selfsup_markdown(scores, meta) + "\n"
    (out / "selfsup.md").write_text(block)
    print(block)
    if a.write_docs:
        readme = Path(a.readme)
        readme.write_text(_replace_block(readme.read_text(), block, MARKS,
                                         "## Noisy-only fine-tuning on a real frame"))
        print(f"wrote {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
