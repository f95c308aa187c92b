"""denoise_dask: chunk by chunk, lazily, on threads or a cluster, equal to Denoiser.denoise."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from model_factory import exact_float32

da = pytest.importorskip("dask.array")

from src_models import dask_inference  # noqa: E402
from src_models.dask_inference import _aligned_chunks, _ModelRef, denoise_dask  # noqa: E402

RTOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _exact():
    exact_float32()


def _rel(a, b) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


def _noisy(shape, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(100, 25, size=shape) + shift).astype(np.float32)


def test_aligned_chunks_move_boundaries_to_the_size_multiple_and_merge_short_ends():
    assert _aligned_chunks((37, 37, 37, 40), 2, 8, None) == (151,)  # small chunks merged
    assert _aligned_chunks((600, 600, 600, 40), 16, 8, None) == (608, 592, 640)
    assert _aligned_chunks((64,) * 20, 16, 112, None) == (1024, 256)  # up to 1024 px
    assert _aligned_chunks((64,) * 20, 16, 112, None, 512) == (512, 512, 256)  # deep chunks
    assert _aligned_chunks((1000, 30, 3), 1, 8, None) == (1000, 33)  # 3 < overlap: merged
    assert _aligned_chunks((151,), 2, 8, 24) == (24, 24, 24, 24, 24, 31)
    assert _aligned_chunks((2500,), 1, 16, None) == (834, 834, 832)  # > 1024: split evenly
    assert _aligned_chunks((10,), 4, 16, None) == (10,)


@pytest.mark.parametrize("name", ["pyramid", "resnet"])
def test_2d_image_over_many_chunks_equals_in_memory(tiny_models, name):
    den = tiny_models[name]
    # left half negative, right half positive: chunk-wise offsets would differ from the plane's
    img = _noisy((150, 130), seed=1, shift=-40.0)
    img[:, 65:] += 80.0
    ref = den.denoise(img)
    lazy = denoise_dask(da.from_array(img, chunks=(37, 41)), den)
    assert isinstance(lazy, da.Array) and lazy.chunks == da.from_array(img, (37, 41)).chunks
    out = lazy.compute()
    assert out.dtype == np.float32 and out.shape == img.shape
    assert _rel(out, ref) < RTOL


def test_zt_stack_with_non_finite_pixels_equals_in_memory(tiny_models):
    den = tiny_models["pyramid"]
    img = _noisy((2, 3, 91, 77), seed=2)
    img[0, 1, 5, 7] = np.nan
    img[1, 2, 60, 3] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = den.denoise(img)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        lazy = denoise_dask(da.from_array(img, chunks=(1, 2, 30, 26)), den)
    out = lazy.compute()
    assert np.isfinite(out).all()
    assert _rel(out, ref) < RTOL


@pytest.mark.parametrize(("name", "axis"), [("color", -1), ("gray", -1), ("color", 0)])
def test_rgb_channel_axis_equals_in_memory(tiny_models, name, axis):
    den = tiny_models[name]  # colour model: channels jointly; gray model: one by one
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(70, 58, 3), dtype=np.uint8)
    if axis == 0:
        img = np.ascontiguousarray(np.moveaxis(img, -1, 0))
    ref = den.denoise(img, channel_axis=axis)
    chunks = (25, 21, 3) if axis == -1 else (3, 25, 21)
    out = denoise_dask(da.from_array(img, chunks=chunks), den, channel_axis=axis).compute()
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.abs(out.astype(int) - ref).max() <= 1  # float rounding may flip a .5


@pytest.mark.parametrize("offset", [90.0, "auto"])
def test_given_or_auto_black_level_equals_in_memory(tiny_models, offset):
    if offset == "auto":
        pytest.importorskip("src_models.noise_model")
    den = tiny_models["pyramid"]
    img = (_noisy((2, 80, 72), seed=6) + 100).astype(np.uint16)  # camera offset ~100
    ref = den.denoise(img, offset=offset)
    out = denoise_dask(da.from_array(img, chunks=(1, 30, 30)), den, offset=offset).compute()
    assert np.abs(out.astype(int) - ref).max() <= 1


def test_auto_black_level_reads_a_chunk_of_many_planes_once_per_pass(tiny_models):
    class Counted:
        """An array-like source counting the chunk reads dask makes."""

        def __init__(self, data):
            self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
            self.reads = 0

        def __getitem__(self, key):
            out = self.data[key]
            self.reads += out.size > 0  # not dask's probes of empty slices
            return out

    den = tiny_models["pyramid"]
    img = (_noisy((6, 40, 40), seed=8) + 100).astype(np.uint16)
    img[3] += 40  # one plane with another level
    src = Counted(img)
    lazy = denoise_dask(da.from_array(src, chunks=(6, 16, 16), asarray=False), den, offset="auto")
    stats_reads = src.reads  # the min/max and black-level passes, when the graph is built
    out = lazy.compute()
    assert np.abs(out.astype(int) - den.denoise(img, offset="auto")).max() <= 1
    assert stats_reads <= 2 * 9  # 9 stored chunks, each read once per pass (not once per plane)


def test_tta_over_many_chunks_equals_in_memory(tiny_models):
    den = tiny_models["pyramid"]
    img = _noisy((2, 90, 70), seed=7)
    ref = den.denoise(img, tta=8)
    assert _rel(ref, den.denoise(img)) > 1e-4  # augmentation changes the output
    out = denoise_dask(da.from_array(img, chunks=(1, 37, 41)), den, tta=8).compute()
    assert _rel(out, ref) < RTOL


def test_strength_over_many_chunks_equals_in_memory(tiny_models):
    den = tiny_models["pyramid"]
    img = _noisy((2, 90, 70), seed=8)
    ref = den.denoise(img, strength=0.35)
    assert _rel(ref, den.denoise(img)) > 1e-4  # the blend changes the output
    out = denoise_dask(da.from_array(img, chunks=(1, 37, 41)), den, strength=0.35).compute()
    assert _rel(out, ref) < RTOL
    with pytest.raises(ValueError, match="strength must be a number from 0"):
        denoise_dask(img, den, strength=2)


def test_tile_rechunks_a_numpy_array(tiny_models):
    den = tiny_models["gray"]
    img = _noisy((64, 80), seed=4).astype(np.uint16) * 100
    lazy = denoise_dask(img, den, tile=24)
    assert lazy.chunks == ((24, 24, 16), (24, 24, 24, 8))
    assert np.abs(lazy.compute().astype(int) - den.denoise(img)).max() <= 1


def test_result_is_lazy_until_computed(tiny_models, monkeypatch):
    den = tiny_models["gray"]
    calls = []
    real = den.predict_batch
    monkeypatch.setattr(den, "predict_batch", lambda x: calls.append(x.shape) or real(x))
    lazy = denoise_dask(da.from_array(_noisy((40, 40)), chunks=20), den, tile=20)
    assert calls == []
    lazy.compute(scheduler="sync")
    assert len(calls) == 4 and len(set(calls)) == 1  # one window shape: one trace
    calls.clear()
    merged = denoise_dask(da.from_array(_noisy((40, 40)), chunks=20), den)
    assert merged.chunks == ((20, 20), (20, 20))  # the input's chunks come back
    merged.compute(scheduler="sync")
    assert len(calls) == 1  # small input chunks are denoised together
    calls.clear()
    monkeypatch.setattr(dask_inference, "BLOCK_PIXELS", 2 * 20 * 20)  # as if planes were huge
    deep = denoise_dask(da.from_array(_noisy((2, 40, 40)), chunks=(2, 10, 10)), den)
    got = deep.compute(scheduler="sync")
    assert len(calls) == 4  # two planes a chunk: merged only up to 20 px, 2 x 2 blocks
    np.testing.assert_allclose(got, den.denoise(_noisy((2, 40, 40))), rtol=1e-5, atol=1e-5)


def test_model_reference_pickles_without_weights(model_dir, tiny_models):
    by_path = _ModelRef(model_dir / "pyramid.keras")
    blob = pickle.dumps(by_path)
    assert len(blob) < 500
    assert pickle.loads(blob).get().card.receptive_field == by_path.card().receptive_field
    in_memory = _ModelRef(tiny_models["gray"])
    assert pickle.loads(pickle.dumps(in_memory)).get() is tiny_models["gray"]  # same process


def test_two_worker_cluster_equals_in_memory(model_dir):
    """Two in-process workers (processes=False: worker processes would each import TF)."""
    distributed = pytest.importorskip("distributed")
    from src_models.registry import load_model

    img = _noisy((2, 96, 88), seed=5)
    ref = load_model("pyramid").denoise(img)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        lazy = denoise_dask(da.from_array(img, chunks=(1, 32, 44)), "pyramid")
        out = client.compute(lazy).result()
        assert len(client.scheduler_info()["workers"]) == 2
    assert _rel(out, ref) < RTOL


def test_bad_arguments_raise_at_the_call(tiny_models):
    den = tiny_models["gray"]
    with pytest.raises(ValueError, match="tile"):
        denoise_dask(np.zeros((8, 8)), den, tile=0)
    with pytest.raises(ValueError, match="offset"):
        denoise_dask(np.zeros((8, 8)), den, offset=float("nan"))
    with pytest.raises(ValueError, match="offset"):
        denoise_dask(np.zeros((8, 8)), den, offset="black")
    with pytest.raises(ValueError, match="no finite values"):
        denoise_dask(np.full((8, 8), np.nan, dtype=np.float32), den)


def test_measure_dask_reports_time_and_peak_memory(model_dir, tmp_path):
    from src_models.dask_inference import measure_dask

    res = measure_dask("pyramid", size=64, workers=0, tile=32, folder=str(tmp_path))
    assert res["method"] == "pyramid" and res["shape"] == "64x64" and res["workers"] == 0
    assert res["seconds"] > 0 and res["mpix_s"] == pytest.approx(64 * 64 / 1e6 / res["seconds"])
    assert res["peak_rss_mb"] == res["client_peak_rss_mb"] > 100  # TensorFlow alone is bigger
    assert res["worker_peak_rss_mb"] == []
