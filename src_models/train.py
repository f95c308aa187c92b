"""Train or fine-tune a bias-free denoiser from a recipe; resumable, interruptible.

One function, :func:`train`, serves the command line (``python -m src_models.train``),
the bundled-model recipes and the napari training widget: it reports through
``on_progress`` and stops cleanly when ``should_stop()`` turns true. Everything
needed to continue (weights, optimizer state, step, best score) is written
atomically to the output folder, so ``--resume`` continues at the exact step,
batch and learning rate, and a killed run always leaves a loadable checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as _dt
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from . import losses as _losses  # noqa: F401  (registers HingeMAE for resume)
from .config import ConfigError, ModelCard, RecipeConfig, TrainingConfig, load_recipe

__all__ = ["BatchSource", "TrainProgress", "TrainResult", "freeze_norm_statistics", "train", "main"]

CHECKPOINT = "checkpoint.keras"
STATE = "state.json"
LOG = "log.csv"


class BatchSource(Protocol):
    """Anything that yields training batches: ``batch(step) -> (inputs, targets)``."""

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class TrainProgress:
    """One report from the training loop (what the widget plots and the CLI prints)."""

    step: int
    total: int
    loss: float
    learning_rate: float
    elapsed_s: float
    eta_s: float
    val_psnr: dict[str, float] | None = None


@dataclass
class TrainResult:
    """Where the run left its files and how far it got."""

    out_dir: Path
    model_path: Path
    steps_done: int
    best_val_psnr: float
    val_psnr_initial: dict[str, float] = field(default_factory=dict)
    val_psnr_best: dict[str, float] = field(default_factory=dict)
    stopped: bool = False


def hardware_description() -> str:
    """A short, honest description of what ran the training (for the model card)."""
    import keras

    backend = keras.backend.backend()
    device = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})"
    if backend == "jax":
        import jax

        d = jax.devices()[0]
        if d.platform != "cpu":
            device = f"{d.device_kind} ({d.platform})"
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            device = f"{len(gpus)} GPU(s)"
    return f"{device}; keras {keras.__version__} on {backend}"


def make_loss(kind: str, margin_8bit: float = 0.0):
    """The training loss (images in [0, 1] units); a Keras name or a serialisable loss object."""
    if kind == "mse":
        return "mean_squared_error"
    if kind == "mae":
        return "mean_absolute_error"
    from .losses import HingeMAE

    return HingeMAE(margin=float(margin_8bit) / 255.0)


def _optimizer(recipe: RecipeConfig, timed: bool = False):
    import keras

    t = recipe.training
    if timed:  # the rate is set before every step by time_schedule_lr
        return keras.optimizers.Adam(learning_rate=0.0, global_clipnorm=t.clip_norm)
    # a warm-up as long as the run would never reach the rate, let alone decay from it
    warmup = t.warmup_steps if t.warmup_steps < t.steps else t.steps // 10
    decay_steps = max(1, t.steps - warmup)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else t.learning_rate,
        decay_steps=decay_steps,
        alpha=t.min_learning_rate / t.learning_rate,
        warmup_target=t.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    return keras.optimizers.Adam(learning_rate=schedule, global_clipnorm=t.clip_norm)


def _scheduled_by_time(model) -> bool:
    """Whether a compiled model's optimizer takes its rate from time_schedule_lr (a plain value)."""
    import keras

    # Keras 3 keeps the schedule object (or the rate variable) in ``_learning_rate``
    rate = getattr(model.optimizer, "_learning_rate", None)
    return not isinstance(rate, keras.optimizers.schedules.LearningRateSchedule)


def time_schedule_lr(step: int, fraction: float, training: TrainingConfig) -> float:
    """Learning rate of a run scheduled over wall time rather than steps.

    Why: a lent accelerator comes for a fixed number of minutes and its speed is not
    known in advance, so the cosine decay must end when the time does. Linear warm-up
    over ``training.warmup_steps`` steps, then cosine from ``learning_rate`` down to
    ``min_learning_rate`` as ``fraction`` (elapsed / budget) goes from 0 to 1.
    """
    lo, hi = training.min_learning_rate, training.learning_rate
    if step < training.warmup_steps:
        return hi * (step + 1) / training.warmup_steps
    f = min(1.0, max(0.0, fraction))
    return lo + (hi - lo) * 0.5 * (1.0 + math.cos(math.pi * f))


def _current_lr(model) -> float:
    opt = model.optimizer
    lr = opt.learning_rate
    return float(np.asarray(lr(opt.iterations) if callable(lr) else lr))


def _predict_padded(model, image: np.ndarray, multiple: int) -> np.ndarray:
    """Run the model on one (H, W, C) image, padding to its size multiple."""
    h, w = image.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    x = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect") if (ph or pw) else image
    y = np.asarray(model(x[None].astype("float32"), training=False))[0]
    return y[:h, :w]


def evaluate(model, val_set, multiple: int) -> dict[str, float]:
    """Mean PSNR (dB, [0,1] images) per label (a sigma, or ``"<photons>ph"``) on fixed pairs."""
    from .data import SCORE_MAX_DB, psnr

    scores: dict[str, list[float]] = {}
    for noisy, clean, label in val_set:
        est = _predict_padded(model, noisy, multiple)
        scores.setdefault(label, []).append(psnr(clean, est, max_db=SCORE_MAX_DB))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _load_images(paths: Sequence[str], color: bool) -> list[np.ndarray]:
    from .data import list_images, load_image

    return [load_image(p, color=color) for p in list_images(paths)]


def _guided_from_gray(arch, base) -> bool:
    """True when a guided or opponent colour U-Net starts from a one-channel U-Net of its shape."""
    if getattr(arch, "channel_mode", "joint") not in ("guided", "opponent") or base.channels != 1:
        return False
    base_arch = base.card.recipe.architecture if base.card.recipe is not None else None
    if base_arch is None or base_arch.kind != "unet":
        raise ConfigError(
            f"a {arch.channel_mode} colour U-Net starts from a one-channel U-Net with a recipe; "
            f"{base.name!r} "
            f"is {base.card.kind or 'of unknown kind'}"
        )
    shape = (
        "scales", "width", "max_width", "convs", "unshuffle", "kernel_size", "activation", "norm",
        "residual",
    )
    diff = [k for k in shape if getattr(arch, k) != getattr(base_arch, k)]
    if diff:
        raise ConfigError(
            f"init_from={base.name!r} differs from the recipe's U-Net in {', '.join(diff)}; "
            f"a {arch.channel_mode} colour U-Net copies the gray weights, so they must match"
        )
    return True


def _adds_noise_bias(arch, base) -> bool:
    """True when the recipe is the base's U-Net with noise biases added (it starts as the base)."""
    base_arch = base.card.recipe.architecture if base.card.recipe is not None else None
    if base_arch is None or base_arch.kind != "unet" or arch.kind != "unet":
        return False
    # the base has none (the comparison checks it), the recipe some
    return bool(arch.noise_bias_window) and (
        arch.model_copy(update={"noise_bias_window": 0}) == base_arch
    )


# what a resumed run may change: its length and bookkeeping, names, and where files are
# (another machine's data folder, a moved base); everything else would continue another run
_RESUME_FREE = {
    ("name",), ("description",), ("init_from",), ("data", "train"), ("data", "val"),
    ("training", "steps"), ("training", "val_every"), ("training", "checkpoint_every"),
    ("training", "log_every"),
    ("training", "warmup_steps"),  # the checkpoint's optimiser keeps its own schedule
}


def _check_resumed_recipe(recipe: RecipeConfig, saved_path: Path) -> None:
    """Refuse to resume a run with another architecture, noise, data settings or optimiser.

    Why: the checkpoint's weights, optimiser state and best score belong to the recipe
    it started with; ``recipe.yaml`` would keep claiming that one.
    """
    import yaml

    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
    now = recipe.model_dump(mode="json")
    changed = []
    for section, values in now.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if (section, key) not in _RESUME_FREE and saved.get(section, {}).get(key) != value:
                changed.append(f"{section}.{key}")
    if changed:
        raise ConfigError(
            f"cannot resume the run in {saved_path.parent} with a changed recipe "
            f"({', '.join(changed)}); restore those values or train into a new folder"
        )


def _check_same_architecture(recipe: RecipeConfig, base) -> None:
    """Refuse a recipe whose architecture is not the base's: the base is cloned as it is.

    Why: the card (and every later stage and rebuild) would describe the recipe's
    architecture while the weights are the base's.
    """
    base_recipe = base.card.recipe
    if base_recipe is None:  # a model without a recipe: nothing to compare
        return
    ours, theirs = recipe.architecture.model_dump(), base_recipe.architecture.model_dump()
    diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if diff:
        raise ConfigError(
            f"init_from={recipe.init_from!r} is a {theirs.get('kind')} whose architecture "
            f"differs from the recipe's in {', '.join(diff)}; a fine-tune continues the base "
            "as it is: copy its architecture into the recipe"
        )


def _build_or_load(recipe: RecipeConfig, ckpt: Path, resume: bool):
    """The model to train: the checkpoint (resume), a base model (fine-tune) or a fresh build."""
    import keras

    from .architectures import build_model
    from .modelfile import load_keras_model

    if resume and ckpt.is_file():
        model, card = load_keras_model(ckpt, compile=True)
        return model, card, True
    if recipe.init_from:
        from .registry import load_model

        base = load_model(recipe.init_from)
        if _guided_from_gray(recipe.architecture, base):
            from .architectures import init_guided_from_gray

            model = build_model(recipe.architecture, name=recipe.name)
            init_guided_from_gray(model, base.model, recipe.architecture.unshuffle)
            return model, base.card, False
        if base.channels != recipe.architecture.channels:
            raise ConfigError(
                f"init_from={recipe.init_from!r} has {base.channels} channel(s) but the recipe "
                f"trains {recipe.architecture.channels}"
            )
        if _adds_noise_bias(recipe.architecture, base):
            from .architectures import init_from_without_noise_bias

            model = build_model(recipe.architecture, name=recipe.name)
            init_from_without_noise_bias(model, base.model)
            return model, base.card, False
        _check_same_architecture(recipe, base)
        model = keras.models.clone_model(base.model)
        model.set_weights(base.model.get_weights())
        return model, base.card, False
    keras.utils.set_random_seed(recipe.training.seed)
    return build_model(recipe.architecture, name=recipe.name), None, False


def freeze_norm_statistics(model) -> int:
    """Freeze the running std of every :class:`~src_models.layers.ScaleNorm`; returns their count.

    Why: fine-tuning a trained model on a few small batches of new data must not
    overwrite the normalisation statistics learnt on the original data set (see
    ``ScaleNorm``); the scale ``gamma`` and all convolutions still train.
    """
    from .layers import ScaleNorm

    count, stack = 0, list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        if isinstance(layer, ScaleNorm):
            layer.frozen_std = True
            count += 1
        stack.extend(getattr(layer, "layers", []))
    return count


def train(
    recipe: RecipeConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    images: Sequence[np.ndarray] | None = None,
    val_images: Sequence[np.ndarray] | None = None,
    on_progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_seconds: float | None = None,
    extra_card: dict | None = None,
    sampler: BatchSource | None = None,
    evaluator: Callable[[Any], dict[str, float]] | None = None,
    keep_initial: bool = False,
    workers: int = 0,
    time_budget_s: float | None = None,
) -> TrainResult:
    """Train (or fine-tune, or resume) a model described by ``recipe``.

    Fine-tuning (``recipe.init_from``) keeps the base model's normalisation statistics
    (:func:`freeze_norm_statistics`), also after a resume.

    Parameters
    ----------
    recipe : RecipeConfig
        Architecture, corruptions, data and optimisation settings.
    out_dir : str or Path
        Folder for ``checkpoint.keras`` (with optimizer), ``<name>.keras`` (the best model,
        with its card), ``log.csv``, ``state.json`` and ``recipe.yaml``.
    resume : bool
        Continue from ``out_dir``'s checkpoint at its exact step.
    images, val_images : sequence of (H, W, C) float arrays in [0, 1], optional
        In-memory training / validation images (e.g. napari layers); default: the recipe's folders.
    on_progress : callable, optional
        Called with a :class:`TrainProgress` every ``log_every`` steps and after validations.
    should_stop : callable, optional
        Polled every step; when it returns True the run checkpoints and returns.
    max_seconds : float, optional
        Wall-clock budget for this call (train in chunks across sessions or GPU leases).
    extra_card : dict, optional
        Extra ModelCard fields (e.g. ``training_data`` for layers).
    sampler : object with ``batch(step) -> (inputs, targets)``, optional
        Replaces the clean-image :class:`~src_models.data.PatchSampler` (paired data,
        self-supervised Neighbor2Neighbor batches). Batches must be pure functions of
        ``step`` (and of the model) for exact resumes. If it has ``bind(model)``, that is
        called with the model being trained before the first batch.
    evaluator : callable, optional
        ``evaluator(model) -> {key: score}`` (higher is better, e.g. PSNR in dB) replaces the
        Gaussian-noise validation on clean images; the mean score picks the best model.
    keep_initial : bool
        Count the starting model as a candidate for the best one, so fine-tuning never
        saves a model that validates worse than its base (default: the first validation wins).
    workers : int
        Processes that compute batches ahead (for GPUs, where numpy patches are the
        bottleneck); the sampler must then be picklable. 0: batches on demand, here.

    Returns
    -------
    TrainResult
    """
    import yaml

    from .architectures import parameter_count, receptive_field, size_multiple
    from .data import PatchSampler, photon_validation_set, split_train_val, validation_set
    from .modelfile import copy_with_card, read_card, save_model
    from .prefetch import prefetched_batches

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt, state_path, log_path = out / CHECKPOINT, out / STATE, out / LOG
    final_path = out / f"{recipe.name}.keras"
    t_cfg, color = recipe.training, recipe.data.color
    timed = time_budget_s is not None
    if timed and time_budget_s <= 0:
        raise ConfigError(f"time budget must be positive (got {time_budget_s} s)")

    needs_images = sampler is None or (evaluator is None and val_images is None)
    if images is None and needs_images:
        if not recipe.data.train:
            raise ConfigError("data.train is empty and no images were given")
        images = _load_images(recipe.data.train, color)
    images = list(images) if images is not None else []
    val_set: list = []
    if evaluator is None:
        if val_images is None:
            if recipe.data.val:
                val_images = _load_images(recipe.data.val, color)
            else:
                images, val_images = split_train_val(
                    images,
                    recipe.data.val_fraction,
                    recipe.data.max_val_images,
                    recipe.data.split_seed,
                )
        if not len(val_images):
            # one image (a single napari layer, say): score on the training image, not on nothing
            val_images = images
        val_images = list(val_images)
        gaussian = validation_set(val_images, t_cfg.val_sigmas, seed=t_cfg.seed, crop=256)
        val_set = [(n, c, f"{s:g}") for n, c, s in gaussian]  # labelled as photon pairs are
        val_set += photon_validation_set(
            val_images,
            t_cfg.val_photons,
            seed=t_cfg.seed,
            crop=256,
            fluorescence=recipe.data.fluorescence,
        )

    if resume and ckpt.is_file():
        _check_resumed_recipe(recipe, out / "recipe.yaml")
    elif resume:
        warnings.warn(f"nothing to resume in {out} (no {CHECKPOINT}): step 0", stacklevel=2)
    model, base_card, resumed = _build_or_load(recipe, ckpt, resume)
    if recipe.init_from:  # fine-tuning (or resuming a fine-tuning run): keep the base's statistics
        freeze_norm_statistics(model)
    state = json.loads(state_path.read_text()) if resumed and state_path.is_file() else {}
    if resumed and base_card is not None and int(state.get("step", -1)) != base_card.steps_done:
        # the checkpoint (model and optimizer) is written before the state file: a stop between
        # the two leaves the state behind; the checkpoint's own card says where it really is
        warnings.warn(
            f"{state_path.name} in {out} says step {state.get('step')}, its checkpoint step "
            f"{base_card.steps_done}: continuing from the checkpoint's",
            stacklevel=2,
        )
        state = {**state, "step": base_card.steps_done, "elapsed_s": base_card.training_time_s}
    if not resumed:
        loss = make_loss(t_cfg.loss, t_cfg.hinge_margin)
        model.compile(optimizer=_optimizer(recipe, timed), loss=loss)
    elif _scheduled_by_time(model) != timed:
        how = "over wall time (--time-budget)" if not timed else "by steps (no --time-budget)"
        raise ConfigError(
            f"the checkpoint in {out} was scheduled {how}; resume it the same way, or its "
            "learning rate would stay where it stopped"
        )
    multiple = size_multiple(recipe.architecture) if base_card is None else base_card.size_multiple
    if sampler is None and recipe.data.patch_size % multiple:
        raise ConfigError(  # else the first step dies inside Keras on a reshape or a skip
            f"data.patch_size={recipe.data.patch_size} must be a multiple of {multiple}, "
            f"the size multiple of this {recipe.architecture.kind} architecture"
        )
    rf = receptive_field(model, multiple)

    def validate() -> dict[str, float]:
        if evaluator is not None:
            return {str(k): float(v) for k, v in evaluator(model).items()}
        return evaluate(model, val_set, multiple)

    step = int(state.get("step", 0))
    elapsed_before = float(state.get("elapsed_s", 0.0))
    best = float(state.get("best", -math.inf))
    val_initial = state.get("val_initial") or validate()
    val_best = state.get("val_best") or dict(val_initial)
    if keep_initial and "best" not in state:
        best = float(np.mean(list(val_initial.values())))
    if not resumed:
        _atomic_write_text(out / "recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json")))

    if sampler is None:
        sampler = PatchSampler(
            images,
            recipe.data.patch_size,
            t_cfg.batch_size,
            recipe.corruption,
            seed=t_cfg.seed,
            augment=recipe.data.augment,
            fluorescence=recipe.data.fluorescence,
        )
    if hasattr(sampler, "bind"):
        if workers:  # a worker process would pickle the model as it is now and never see it learn
            raise ConfigError(
                "a sampler that reads the model being trained (bind) needs workers=0; "
                f"got workers={workers}"
            )
        sampler.bind(model)

    def weights(noisy: np.ndarray, clean: np.ndarray) -> np.ndarray | None:
        if t_cfg.loss_weighting == "none":
            return None
        floor = (t_cfg.weighting_floor / 255.0) ** 2
        w = 1.0 / (np.mean(np.square(noisy - clean), axis=(1, 2, 3)) + floor)
        return (w / w.mean()).astype("float32")[:, None, None]  # broadcast over (H, W)

    def card(val: dict[str, float]) -> ModelCard:
        done = recipe
        if timed:  # the steps this run has actually done: its step-scheduled equivalent
            done = recipe.model_copy(deep=True)
            done.training.steps = max(1, step)
        fields = dict(
            name=recipe.name,
            description=recipe.description,
            channels=recipe.architecture.channels,
            kind=recipe.architecture.kind,
            parameters=parameter_count(model),
            receptive_field=rf,
            size_multiple=multiple,
            sigma_range=recipe.corruption.sigma_range,
            recipe=done,
            base_model=recipe.init_from,
            steps_done=step,
            training_time_s=round(elapsed_before + time.time() - t0, 1),
            hardware=hardware_description(),
            val_psnr={k: round(v, 3) for k, v in val.items()},
            training_data=[str(p) for p in recipe.data.train],
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
        fields.update(extra_card or {})
        return ModelCard(**fields)

    def validate_and_keep_best() -> dict[str, float]:
        """Score the model; save it as the best model when its mean score beats the best."""
        nonlocal best, val_best
        val = validate()
        score = float(np.mean(list(val.values())))
        if score > best:
            best, val_best = score, val
            save_model(model, final_path, card(val_best))
        return val

    def checkpoint() -> None:
        save_model(model, ckpt, card(val_best), include_optimizer=True)
        _atomic_write_text(
            state_path,
            json.dumps(
                {
                    "step": step,
                    "elapsed_s": elapsed_before + time.time() - t0,
                    "best": best,
                    "val_initial": val_initial,
                    "val_best": val_best,
                },
                indent=1,
            ),
        )

    t0 = time.time()
    if not final_path.exists():
        save_model(model, final_path, card(val_initial))
    new_log = not log_path.exists()
    val_keys = list(val_initial)
    stopped = False
    with open(log_path, "a", newline="") as log_file:
        log = csv.writer(log_file)
        if new_log:
            log.writerow(["step", "loss", "lr", "elapsed_s", *[f"psnr_{k}" for k in val_keys]])
        losses: list[float] = []
        # closed on any exit: an exception in a step must not leave prefetch workers running
        # in a long-lived process (napari)
        with contextlib.closing(prefetched_batches(sampler, step, t_cfg.steps, workers)) as batches:
            while step < t_cfg.steps:
                if (should_stop and should_stop()) or (
                    max_seconds is not None and time.time() - t0 > max_seconds
                ):
                    stopped = True
                    break
                if timed:
                    fraction = (elapsed_before + time.time() - t0) / time_budget_s
                    if fraction >= 1.0:
                        break
                    model.optimizer.learning_rate = time_schedule_lr(step, fraction, t_cfg)
                noisy, clean = next(batches)
                loss = model.train_on_batch(noisy, clean, sample_weight=weights(noisy, clean))
                losses.append(float(np.asarray(loss if np.ndim(loss) == 0 else loss[0])))
                step += 1
                val = None
                if step % t_cfg.val_every == 0 or step == t_cfg.steps:
                    val = validate_and_keep_best()
                if step % t_cfg.log_every == 0 or val is not None:
                    elapsed = time.time() - t0
                    rate = elapsed / max(1, step - int(state.get("step", 0)))
                    left = t_cfg.steps - step
                    if timed:
                        left = int(max(0.0, time_budget_s - elapsed_before - elapsed) / rate)
                    prog = TrainProgress(
                        step=step,
                        total=step + left if timed else t_cfg.steps,
                        loss=float(np.mean(losses)),
                        learning_rate=_current_lr(model),
                        elapsed_s=elapsed_before + elapsed,
                        eta_s=rate * left,
                        val_psnr=val,
                    )
                    log.writerow(
                        [step, f"{prog.loss:.6g}", f"{prog.learning_rate:.3g}"]
                        + [f"{prog.elapsed_s:.1f}"]
                        + [f"{val[k]:.3f}" if val and k in val else "" for k in val_keys]
                    )
                    log_file.flush()
                    losses = []
                    if on_progress:
                        on_progress(prog)
                if step % t_cfg.checkpoint_every == 0:
                    checkpoint()
    if timed and not stopped and step % t_cfg.val_every:  # the annealed end is validated too
        validate_and_keep_best()
    if timed and not stopped:  # the run's length is known only now: record it everywhere
        recipe = recipe.model_copy(deep=True)
        recipe.training.steps = max(1, step)
        _atomic_write_text(out / "recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json")))
        best_card = read_card(final_path)
        best_card.recipe = recipe.model_copy(deep=True)
        copy_with_card(final_path, final_path, best_card)
    checkpoint()
    return TrainResult(
        out_dir=out,
        model_path=final_path,
        steps_done=step,
        best_val_psnr=best,
        val_psnr_initial=val_initial,
        val_psnr_best=val_best,
        stopped=stopped,
    )


def _print_progress(p: TrainProgress) -> None:
    val = ""
    if p.val_psnr:
        val = "  val PSNR " + " ".join(f"σ{k}:{v:.2f}" for k, v in p.val_psnr.items())
    eta = _dt.timedelta(seconds=int(p.eta_s))
    print(
        f"step {p.step}/{p.total}  loss {p.loss:.3e}  lr {p.learning_rate:.2e}  ETA {eta}{val}",
        flush=True,
    )


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the train command (shared by ``python -m src_models.train`` and the CLI)."""
    p = parser or argparse.ArgumentParser(
        prog="python -m src_models.train", description="Train a bias-free denoiser from a recipe."
    )
    p.add_argument("--config", required=True, help="recipe YAML (src_models/recipes/*.yaml)")
    p.add_argument("--out", required=True, help="output folder (checkpoints, log, final model)")
    p.add_argument("--resume", action="store_true", help="continue from the folder's checkpoint")
    p.add_argument("--steps", type=int, help="override training.steps")
    p.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this long")
    p.add_argument(
        "--time-budget",
        type=float,
        metavar="MIN",
        help="schedule the learning rate over MIN minutes of wall time and finish then "
        "(a lent GPU's minutes; training.steps becomes an upper bound)",
    )
    p.add_argument("--data", help="replace the recipe's data root '../shared/data' by this folder")
    p.add_argument(
        "--workers", type=int, default=0, help="processes preparing batches ahead (GPU training)"
    )
    return p


def run_from_args(args: argparse.Namespace) -> int:
    """Execute the train command; returns the exit code."""
    try:
        recipe = load_recipe(args.config)
        if args.steps is not None:
            if args.steps < 1:
                raise ConfigError(f"--steps must be a positive integer (got {args.steps})")
            recipe.training.steps = args.steps
        if args.data:
            root = Path(args.data).resolve()
            recipe.data.train = [_reroot(p, root) for p in recipe.data.train]
            recipe.data.val = [_reroot(p, root) for p in recipe.data.val]
        result = train(
            recipe,
            args.out,
            resume=args.resume,
            on_progress=_print_progress,
            max_seconds=args.max_minutes * 60 if args.max_minutes else None,
            workers=args.workers,
            time_budget_s=args.time_budget * 60 if args.time_budget else None,
        )
    except (ValueError, FileNotFoundError) as err:  # ConfigError and bad data are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2
    what = "stopped" if result.stopped else "finished"
    print(f"{what} at step {result.steps_done}; best model: {result.model_path}")
    return 0


def _reroot(p: str, root: Path) -> str:
    parts = Path(p).parts
    if "data" in parts:
        i = len(parts) - 1 - parts[::-1].index("data")
        return str(root.joinpath(*parts[i + 1 :]))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
