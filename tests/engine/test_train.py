"""Training: learns, resumes at the exact step, survives being killed, stops when asked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from skimage import data as skdata
from skimage.transform import resize

from src_models.config import ConfigError, RecipeConfig, parse_recipe
from src_models.modelfile import load_keras_model, read_card
from src_models.train import train

ROOT = Path(__file__).resolve().parents[2]


def _images() -> list[np.ndarray]:
    out = []
    for name in ("camera", "moon", "coins", "text"):
        im = getattr(skdata, name)().astype("float32") / 255.0
        out.append(resize(im, (96, 96), anti_aliasing=True)[..., None].astype("float32"))
    return out


def _recipe(steps: int = 200, **training) -> RecipeConfig:
    return parse_recipe(
        {
            "name": "tiny",
            "architecture": {"kind": "dncnn", "depth": 4, "width": 16, "norm": False},
            "corruption": {"sigma_range": [20, 30], "clean_prob": 0.0},
            "data": {"patch_size": 32},
            "training": {
                "steps": steps,
                "batch_size": 8,
                "learning_rate": 3e-3,
                "warmup_steps": 10,
                "val_every": 50,
                "checkpoint_every": 20,
                "log_every": 10,
                "val_sigmas": [25],
                **training,
            },
        }
    )


@pytest.fixture(scope="module")
def images():
    ims = _images()
    return ims[:3], ims[3:]


def test_tiny_model_training_raises_validation_psnr_above_noisy_input(tmp_path, images):
    train_ims, val_ims = images
    reports = []
    result = train(
        _recipe(200), tmp_path, images=train_ims, val_images=val_ims, on_progress=reports.append
    )
    # the residual net starts as the identity, so the initial score is the noisy input's (~20.2 dB)
    assert result.val_psnr_initial["25"] == pytest.approx(20.2, abs=0.6)
    assert result.val_psnr_best["25"] > result.val_psnr_initial["25"] + 3.0
    losses = [r.loss for r in reports]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    card = read_card(result.model_path)
    assert card.steps_done == 200 and card.receptive_field == 4 and card.val_psnr["25"] > 23


def test_photon_validation_levels_are_scored_logged_and_carded(tmp_path, images):
    from src_models.config import FluorescenceConfig
    from src_models.data import photon_validation_set, psnr

    train_ims, val_ims = images
    recipe = _recipe(10, val_every=10, val_photons=[10])
    recipe.data.fluorescence = FluorescenceConfig(prob=1.0)
    result = train(recipe, tmp_path, images=train_ims, val_images=val_ims)
    assert set(result.val_psnr_initial) == {"25", "10ph"}
    # the residual net starts as the identity: its first score is the noisy pairs' own
    fluo = recipe.data.fluorescence
    pairs = photon_validation_set(val_ims, [10], seed=0, crop=256, fluorescence=fluo)
    noisy_psnr = np.mean([psnr(c, n) for n, c, _ in pairs])
    assert result.val_psnr_initial["10ph"] == pytest.approx(noisy_psnr, abs=0.3)
    assert (tmp_path / "log.csv").read_text().splitlines()[0].endswith("psnr_25,psnr_10ph")
    card = read_card(result.model_path)
    assert card.recipe.data.fluorescence.prob == 1.0
    assert card.validation_text().endswith(
        "; fluorescence-like, Poisson noise at 10 photons at full scale: "
        f"{card.val_psnr['10ph']:.2f} dB"
    )


def test_resume_continues_at_the_saved_step_and_matches_an_uninterrupted_run(tmp_path, images):
    train_ims, val_ims = images
    straight = train(_recipe(40), tmp_path / "a", images=train_ims, val_images=val_ims)
    assert straight.steps_done == 40 and not straight.stopped
    calls = {"n": 0}

    def stop_after_20():
        calls["n"] += 1
        return calls["n"] > 20

    first = train(
        _recipe(40), tmp_path / "b", images=train_ims, val_images=val_ims, should_stop=stop_after_20
    )
    assert first.stopped and first.steps_done == 20
    second = train(_recipe(40), tmp_path / "b", images=train_ims, val_images=val_ims, resume=True)
    assert second.steps_done == 40 and not second.stopped
    a, _ = load_keras_model(tmp_path / "a" / "checkpoint.keras")
    b, _ = load_keras_model(tmp_path / "b" / "checkpoint.keras")
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-3, atol=1e-5)
    steps = [
        int(line.split(",")[0])
        for line in (tmp_path / "b" / "log.csv").read_text().splitlines()[1:]
    ]
    assert steps == sorted(steps) and steps[-1] == 40 and len(set(steps)) == len(steps)


def test_resume_trusts_the_checkpoint_over_a_state_file_left_behind(tmp_path, images):
    import json

    train_ims, val_ims = images
    kw = dict(images=train_ims, val_images=val_ims)
    calls = {"n": 0}

    def stop_after_12():
        calls["n"] += 1
        return calls["n"] > 12

    first = train(_recipe(20), tmp_path / "r", should_stop=stop_after_12, **kw)
    assert first.steps_done == 12
    state_path = tmp_path / "r" / "state.json"
    state = json.loads(state_path.read_text())
    state_path.write_text(json.dumps({**state, "step": 5}))  # a stop between the two writes
    with pytest.warns(UserWarning, match="says step 5, its checkpoint step 12"):
        second = train(_recipe(20), tmp_path / "r", resume=True, **kw)
    assert second.steps_done == 20
    log = (tmp_path / "r" / "log.csv").read_text().splitlines()[1:]
    steps = [int(x.split(",")[0]) for x in log]
    assert len(set(steps)) == len(steps)  # no step done twice
    with pytest.warns(UserWarning, match="nothing to resume"):
        fresh = train(_recipe(3), tmp_path / "new", resume=True, **kw)
    assert fresh.steps_done == 3


def test_a_sampler_that_reads_the_model_refuses_prefetch_workers(tmp_path, images):
    from src_models.config import ConfigError

    train_ims, val_ims = images

    class Bound:
        def bind(self, model):
            raise AssertionError("not reached")

        def batch(self, step):
            raise AssertionError("not reached")

    with pytest.raises(ConfigError, match="needs workers=0; got workers=2"):
        train(_recipe(3), tmp_path / "w", images=train_ims, val_images=val_ims,
              sampler=Bound(), workers=2)


def test_an_error_mid_run_closes_the_batch_prefetcher(tmp_path, images, monkeypatch):
    from src_models import prefetch

    train_ims, val_ims = images
    closed = []
    real = prefetch.prefetched_batches

    def watched(*args, **kwargs):
        try:
            yield from real(*args, **kwargs)
        finally:
            closed.append(True)

    monkeypatch.setattr(prefetch, "prefetched_batches", watched)
    calls = []

    def fail_at_step_3():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return False

    try:
        train(_recipe(50), tmp_path, images=train_ims, val_images=val_ims,
              should_stop=fail_at_step_3)
    except RuntimeError as err:
        assert str(err) == "boom"
        assert closed == [True]  # shut down already, while the traceback still holds the run
    else:
        pytest.fail("the error was swallowed")


def test_should_stop_returns_quickly_with_a_checkpoint(tmp_path, images):
    train_ims, val_ims = images
    t0 = []

    def stop():
        if not t0:
            t0.append(time.time())
        return time.time() - t0[0] > 0.5

    result = train(
        _recipe(100000), tmp_path, images=train_ims, val_images=val_ims, should_stop=stop
    )
    assert result.stopped and 0 < result.steps_done < 100000
    model, card = load_keras_model(tmp_path / "checkpoint.keras")
    assert card.steps_done == result.steps_done


def test_killed_training_process_leaves_a_loadable_checkpoint(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    from skimage.io import imsave

    for i, im in enumerate(_images()):
        imsave(folder / f"im{i}.png", (im[..., 0] * 255).astype("uint8"), check_contrast=False)
    recipe = _recipe(100000, checkpoint_every=5).model_dump(mode="json")
    recipe["data"]["train"] = [str(folder)]
    cfg = tmp_path / "r.yaml"
    cfg.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "src_models.train", "--config", str(cfg), "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "checkpoint.keras").exists():
            time.sleep(0.2)
        time.sleep(1.5)  # let it write a few more checkpoints, then kill it mid-run
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    model, card = load_keras_model(out / "checkpoint.keras")  # the target is intact
    assert card.steps_done >= 5 and model.count_params() > 0


def test_time_schedule_warms_up_by_steps_then_decays_by_elapsed_fraction():
    from src_models.train import time_schedule_lr

    t = _recipe(10, learning_rate=1e-3, min_learning_rate=1e-5, warmup_steps=4).training
    assert time_schedule_lr(0, 0.0, t) == pytest.approx(2.5e-4)
    assert time_schedule_lr(3, 0.0, t) == pytest.approx(1e-3)
    assert time_schedule_lr(10, 0.0, t) == pytest.approx(1e-3)
    assert time_schedule_lr(10, 0.5, t) == pytest.approx(0.5 * (1e-3 + 1e-5))
    assert time_schedule_lr(10, 1.0, t) == pytest.approx(1e-5)
    assert time_schedule_lr(10, 3.0, t) == pytest.approx(1e-5)  # past the budget: the floor


def test_time_budget_ends_the_run_anneals_the_rate_by_elapsed_time_and_records_the_steps(
    tmp_path, images, monkeypatch
):
    """A fake clock that advances 1/8 s per batch: a 10 s budget is exactly 80 steps, on any
    machine, and the rate before each step is the time schedule at the elapsed fraction."""
    import types

    from src_models import train as train_module
    from src_models.data import PatchSampler
    from src_models.train import time_schedule_lr

    dt, budget = 0.125, 10.0
    clock = [1000.0]
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(time=lambda: clock[0]))

    class Ticking:  # every batch costs dt of (fake) wall time
        def __init__(self, sampler):
            self.sampler = sampler

        def batch(self, step):
            clock[0] += dt
            return self.sampler.batch(step)

    train_ims, val_ims = images
    recipe = _recipe(10**6, val_every=10**5, learning_rate=3e-3, min_learning_rate=1e-5)
    sampler = PatchSampler(train_ims, 32, 8, recipe.corruption, seed=recipe.training.seed)
    reports = []
    result = train(recipe, tmp_path, sampler=Ticking(sampler), val_images=val_ims,
                   on_progress=reports.append, time_budget_s=budget)
    assert not result.stopped and result.steps_done == 80  # budget / dt, not the 10**6 bound
    assert [r.step for r in reports] == list(range(10, 81, 10))
    assert all(r.total == 80 for r in reports)  # the total is the time's, not the bound
    assert [r.elapsed_s for r in reports] == [r.step * dt for r in reports]
    # the rate set before step k (k steps done, k * dt elapsed): warm-up, then cosine decay
    for r in reports:
        k = r.step - 1
        want = time_schedule_lr(k, k * dt / budget, recipe.training)
        assert r.learning_rate == pytest.approx(want, rel=1e-5), r.step
    rates = [r.learning_rate for r in reports]
    assert rates[0] == pytest.approx(3e-3) and rates[-1] < 2e-5  # annealed by time
    card = read_card(result.model_path)
    assert card.recipe.training.steps == 80  # its step-scheduled equivalent
    saved = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    assert saved["training"]["steps"] == 80
    assert result.val_psnr_best["25"] > result.val_psnr_initial["25"] + 3.0  # 20.3 -> 26.5 dB


def test_recipe_init_from_a_model_file_is_resolved_relative_to_the_recipe(tmp_path):
    from src_models.config import load_recipe

    raw = _recipe(10).model_dump(mode="json")
    raw["init_from"] = "../base/tiny.keras"
    (tmp_path / "recipes").mkdir()
    path = tmp_path / "recipes" / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_recipe(path).init_from == str((tmp_path / "base" / "tiny.keras").resolve())
    raw["init_from"] = "gray"  # a bundled name stays a name
    path.write_text(yaml.safe_dump(raw))
    assert load_recipe(path).init_from == "gray"


def test_bundled_card_names_base_models_and_data_as_the_repository_does(tmp_path, images):
    from src_models.bundle import bundle_model, portable_data_path, portable_model_path

    assert portable_model_path("/gpu/job/runs/gray-1/gray.keras") == "runs/gray-1/gray.keras"
    assert portable_model_path("gray") == "gray" and portable_model_path(None) is None
    assert (  # the color recipe starts from the bundled gray file
        portable_model_path("/any/clone/src_models/pretrained/gray.keras")
        == "src_models/pretrained/gray.keras"
    )
    assert portable_data_path("/gpu/.gpudata/train/gray400") == "../shared/data/train/gray400"
    train_ims, val_ims = images
    base = train(_recipe(5), tmp_path / "runs" / "tiny-1", images=train_ims, val_images=val_ims)
    stage2 = _recipe(5)
    stage2.init_from = str(base.model_path)
    result = train(stage2, tmp_path / "runs" / "tiny", images=train_ims, val_images=val_ims)
    shipped = read_card(bundle_model(result.model_path, dest=tmp_path / "pretrained"))
    assert shipped.base_model == "runs/tiny-1/tiny.keras"
    assert shipped.recipe.init_from == "runs/tiny-1/tiny.keras"

    other = _recipe(5)  # a stage whose recipe names another architecture than its base's
    other.init_from = str(base.model_path)
    other.architecture.width = 8
    with pytest.raises(ConfigError, match="differs from the recipe's in width"):
        train(other, tmp_path / "runs" / "tiny-2", images=train_ims, val_images=val_ims)


def test_a_model_over_the_size_limit_leaves_the_bundled_one_in_place(tmp_path, images, monkeypatch):
    from src_models import bundle

    train_ims, val_ims = images
    result = train(_recipe(3), tmp_path / "runs" / "tiny", images=train_ims, val_images=val_ims)
    dest = tmp_path / "pretrained"
    shipped = bundle.bundle_model(result.model_path, dest=dest)
    before = shipped.read_bytes()
    monkeypatch.setattr(bundle, "MAX_BYTES", 100)
    with pytest.raises(ValueError, match="larger than 10 MB"):
        bundle.bundle_model(result.model_path, dest=dest)
    assert shipped.read_bytes() == before
    assert [p.name for p in dest.iterdir()] == [shipped.name]  # no staged file left


def test_resume_must_keep_the_schedule_the_run_started_with(tmp_path, images):
    from src_models.config import ConfigError

    train_ims, val_ims = images
    kw = dict(images=train_ims, val_images=val_ims)
    timed = train(_recipe(10**6, val_every=10**5), tmp_path / "t", time_budget_s=2.0, **kw)
    with pytest.raises(ConfigError, match="scheduled over wall time"):
        train(_recipe(10**6), tmp_path / "t", resume=True, **kw)
    stepped = train(_recipe(4), tmp_path / "s", **kw)
    with pytest.raises(ConfigError, match=r"scheduled by steps"):
        train(_recipe(8), tmp_path / "s", resume=True, time_budget_s=5.0, **kw)
    # the same schedule resumes: the timed run's budget is spent, so it ends at once
    again = train(_recipe(10**6, val_every=10**5), tmp_path / "t", resume=True,
                  time_budget_s=2.0, **kw)
    assert again.steps_done == timed.steps_done and stepped.steps_done == 4


def test_resume_with_another_noise_or_optimiser_is_refused_naming_the_fields(tmp_path, images):
    train_ims, val_ims = images
    kw = dict(images=train_ims, val_images=val_ims)
    train(_recipe(4), tmp_path / "r", **kw)
    changed = _recipe(8, learning_rate=1e-3)
    changed.corruption.sigma_range = (0.0, 50.0)
    with pytest.raises(ConfigError, match=r"changed recipe \(corruption\.sigma_range, "
                                          r"training\.learning_rate\)"):
        train(changed, tmp_path / "r", resume=True, **kw)
    longer = _recipe(8, val_every=4)  # its length and bookkeeping may change
    assert train(longer, tmp_path / "r", resume=True, **kw).steps_done == 8
