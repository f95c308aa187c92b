"""Denoiser: exact tiling, planes and channels, dtypes, bad inputs, progress and cancel."""

from __future__ import annotations

import numpy as np
import pytest

from src_models.inference import Cancelled, Denoiser, Progress, estimate_sigma


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def noisy(shape, seed: int = 0, sigma: float = 0.1) -> np.ndarray:
    """A smooth positive image plus Gaussian noise, float32 in about [0, 1]."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 3, n) for n in shape], indexing="ij")
    clean = 0.5 + 0.3 * np.sin(sum(grids))
    return (clean + sigma * rng.standard_normal(shape)).clip(0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def gray(tiny_models) -> Denoiser:
    return tiny_models["gray"]


@pytest.fixture(scope="module")
def color(tiny_models) -> Denoiser:
    return tiny_models["color"]


# ------------------------------------------------------------------ tiling


def test_tiled_equals_untiled_gray(gray):
    img = noisy((300, 260))
    whole = gray.denoise(img)
    tiled = gray.denoise(img, tile=128)
    assert gray.card.receptive_field > 0
    assert rel_err(tiled, whole) < 1e-5
    assert rel_err(whole, img) > 1e-2  # the model really filters


def test_tiled_equals_untiled_color_with_size_multiple(color):
    img = noisy((300, 260, 3))
    assert color.card.size_multiple > 1
    whole = color.denoise(img, channel_axis=-1)
    tiled = color.denoise(img, channel_axis=-1, tile=128)
    assert rel_err(tiled, whole) < 1e-5


def test_tiled_equals_untiled_for_odd_sizes_and_rectangular_tiles(tiny_models):
    img = noisy((97, 131))
    for name in ("pyramid", "resnet"):
        den = tiny_models[name]
        whole = den.denoise(img)
        tiled = den.denoise(img, tile=(41, 23))  # rounded up to the size multiple
        assert rel_err(tiled, whole) < 1e-5, name


@pytest.mark.parametrize("shape, margin", [((40, 37), 8), ((5, 6), 13), ((9, 4), 4)])
def test_windows_are_read_as_numpy_reflect_padding_of_the_normalised_plane(shape, margin):
    from src_models.inference import _normalise, _Plane, padded_index

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 4096, shape + (1,)).astype(np.uint16)
    extra = (3, 0)
    rows, cols = padded_index(shape[0], margin, extra[0]), padded_index(shape[1], margin, 0)
    plane = _Plane((), slice(None), pixels, rows, cols, offset=100.0, scale=3996.0, repeat=1)
    pad = ((margin, margin + extra[0]), (margin, margin), (0, 0))
    expected = np.pad(_normalise(pixels, 100.0, 3996.0), pad, mode="reflect")  # numpy's own
    size = (rows.size - 3, cols.size - 2)
    for y, x in [(0, 0), (3, 2), (1, 0), (0, 1)]:  # corners, edges, reflections of reflections
        window = plane.window(y, x, size)
        assert window.dtype == np.float32
        np.testing.assert_array_equal(window, expected[y : y + size[0], x : x + size[1]])


def test_a_large_plane_is_denoised_without_a_float_copy_of_the_whole_plane(gray, monkeypatch):
    import tracemalloc

    from src_models import inference

    monkeypatch.setattr(inference, "BATCH_PIXELS", 1)  # one window per model call
    img = np.random.default_rng(0).integers(0, 256, (1024, 1024), dtype=np.uint8)
    gray.denoise(img[:64, :64], tile=96)  # warm-up: tracing allocates on first use
    tracemalloc.start()
    try:
        out = gray.denoise(img, tile=96)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.dtype == np.uint8 and out.shape == img.shape
    # the uint8 output (1 MiB) and a window's copies; a float32 plane would alone take 4 MiB
    assert peak < 1024 * 1024 * 4, f"peak {peak / 2**20:.1f} MiB"


def test_margin_below_receptive_field_shows_seams(gray):
    """The tiling check has teeth: with no overlap, tile seams are visible."""
    blind = Denoiser(gray.model, gray.card.model_copy(update={"receptive_field": 0}))
    img = noisy((300, 260))
    assert rel_err(blind.denoise(img, tile=64), gray.denoise(img)) > 1e-3


# ------------------------------------------------------------------ scale and offset


def test_denoise_is_homogeneous_in_the_image_scale(gray):
    img = noisy((64, 48))
    base = gray.denoise(img)
    for a in (0.25, 2.0, 10.0):
        assert rel_err(gray.denoise(a * img), a * base) < 1e-5


def test_extreme_float_ranges_stay_finite_and_scale(gray):
    img = noisy((40, 40)).astype(np.float64)
    base = gray.denoise(img)
    for a in (1e-30, 1e30):
        out = gray.denoise(img * a)
        assert out.dtype == np.float32
        assert np.isfinite(out).all()
        assert rel_err(out / a, base) < 1e-5


def test_given_offset_comes_back_as_the_same_constant(gray):
    img = noisy((48, 48))
    base = gray.denoise(img, offset=0.0)
    shifted = gray.denoise(img + 100.0, offset=100.0)
    assert np.abs(shifted - (base + 100.0)).max() < 1e-3


def test_negative_images_are_shifted_to_start_at_zero_and_back(gray):
    img = noisy((48, 48)) - 0.7  # minimum below 0
    out = gray.denoise(img)
    lo = float(img.min())
    expected = gray.denoise(img - lo) + lo
    assert np.isfinite(out).all()
    assert np.abs(out - expected).max() < 1e-5


@pytest.fixture(scope="module")
def camera_plane() -> np.ndarray:
    """A real image: skimage's camera, float64 in [0, 255], cropped to keep it quick."""
    from skimage import data

    return data.camera()[96:352, 96:352].astype(np.float64)


def test_auto_offset_makes_denoising_equivariant_to_a_constant(gray, camera_plane):
    base = gray.denoise(camera_plane, offset="auto")
    for c in (-40.0, 100.0, 5000.0):
        shifted = gray.denoise(camera_plane + c, offset="auto")
        assert np.abs(shifted - (base + c)).max() < 1e-4 * (255.0 + abs(c))


def test_without_a_black_level_a_constant_changes_the_result(gray, camera_plane):
    """Why the option exists: the net itself is not offset-equivariant."""
    base = gray.denoise(camera_plane)
    shifted = gray.denoise(camera_plane + 100.0)
    assert np.abs(shifted - (base + 100.0)).max() > 1.0


def test_auto_offset_is_the_black_level_of_each_plane(gray, camera_plane):
    from src_models.noise_model import black_level

    stack = np.stack([camera_plane, camera_plane + 300.0])
    out = gray.denoise(stack, offset="auto")
    for z in range(2):
        given = gray.denoise(stack[z], offset=black_level(stack[z]))
        assert rel_err(out[z], given) < 1e-6


@pytest.fixture(scope="module")
def identity():
    """A bias-free 1x1 convolution with weight 1: D(y) = y, to check the plumbing exactly."""
    import keras

    from src_models.config import ModelCard

    model = keras.Sequential(
        [keras.Input((None, None, 1)), keras.layers.Conv2D(1, 1, use_bias=False)]
    )
    model.layers[-1].kernel.assign(np.ones((1, 1, 1, 1), np.float32))
    return Denoiser(model, ModelCard(name="identity", channels=1))


@pytest.mark.parametrize("offset", [None, "auto", 100.0])
def test_uint16_round_trip_is_exact_up_to_the_top_of_the_range(identity, offset):
    rng = np.random.default_rng(3)
    img = rng.integers(100, 65536, size=(64, 80), dtype=np.uint16)
    img[0, :8] = [65535, 65534, 65533, 65000, 100, 101, 102, 40000]
    out = identity.denoise(img, offset=offset)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, img)  # nothing clipped, nothing quantised
    assert len(np.unique(out)) > 4000  # far more levels than 8 bits hold


def test_float_layers_keep_their_range_and_values(identity):
    rng = np.random.default_rng(4)
    for lo, hi in ((-3.2, 7.5), (1e-4, 2e-4), (1e5, 1e5 + 3.0)):
        img = rng.uniform(lo, hi, (40, 44))
        for offset in (None, "auto"):
            out = identity.denoise(img, offset=offset)
            assert out.dtype == np.float32
            float32_step = 1.2e-7 * max(abs(lo), abs(hi))  # float32 resolution at this magnitude
            np.testing.assert_allclose(out, img, rtol=0, atol=4 * float32_step)


def test_uint16_with_a_camera_offset_keeps_its_background_level(gray):
    """Background at the offset stays there, with the black level given or found."""
    rng = np.random.default_rng(5)
    signal = np.zeros((96, 96))
    signal[24:72, 24:72] = 2000.0
    img = np.rint(100.0 + 4.0 * rng.poisson(signal / 4.0) + rng.normal(0, 3, signal.shape))
    img = img.astype(np.uint16)
    for offset in (100.0, "auto"):
        out = gray.denoise(img, offset=offset)
        assert out.dtype == np.uint16
        background = out[:16, :16].astype(np.float64)
        assert abs(background.mean() - 100.0) < 3.0 * 3.0  # a random net: within the read noise
        assert len(np.unique(out)) > 256


# ------------------------------------------------------------------ dtypes


def test_uint8_comes_back_as_uint8_rounded(gray):
    img = (noisy((40, 44)) * 255).round().astype(np.uint8)
    out = gray.denoise(img)
    assert out.dtype == np.uint8
    ref = gray.denoise(img.astype(np.float32))
    assert np.abs(out.astype(np.float64) - np.clip(np.rint(ref), 0, 255)).max() <= 1


def test_uint16_comes_back_as_uint16(gray):
    img = (noisy((40, 44)) * 60000).astype(np.uint16)
    out = gray.denoise(img)
    assert out.dtype == np.uint16
    ref = gray.denoise(img.astype(np.float64))
    assert np.abs(out - np.clip(ref, 0, 65535)).max() <= 1.0


def test_float64_comes_back_as_float32(gray):
    img = noisy((40, 44)).astype(np.float64)
    out = gray.denoise(img)
    assert out.dtype == np.float32
    assert rel_err(out, gray.denoise(img.astype(np.float32))) < 1e-6


def test_input_array_is_not_modified(gray):
    img = noisy((40, 40))
    img[3, 4] = np.nan
    before = img.copy()
    with pytest.warns(RuntimeWarning):
        gray.denoise(img)
    np.testing.assert_array_equal(img, before)


# ------------------------------------------------------------------ planes and channels


def test_zyx_stack_is_denoised_plane_by_plane(gray):
    stack = np.stack([noisy((36, 40), seed=s) for s in range(3)])
    out = gray.denoise(stack)
    assert out.shape == stack.shape
    for z in range(3):
        assert rel_err(out[z], gray.denoise(stack[z])) < 1e-6


def test_tzyx_stack_keeps_its_shape(gray):
    stack = noisy((2, 3, 20, 24))
    out = gray.denoise(stack)
    assert out.shape == stack.shape
    assert rel_err(out[1, 2], gray.denoise(stack[1, 2])) < 1e-6


@pytest.mark.parametrize("channel_axis", [0, -1])
def test_gray_model_on_two_channels_equals_each_channel_alone(gray, channel_axis):
    img = np.stack([noisy((32, 36), seed=1), 3.0 * noisy((32, 36), seed=2)], axis=channel_axis)
    out = gray.denoise(img, channel_axis=channel_axis)
    assert out.shape == img.shape
    for c in range(2):
        alone = gray.denoise(np.take(img, c, axis=channel_axis))
        assert rel_err(np.take(out, c, axis=channel_axis), alone) < 1e-6


def test_channel_axis_in_a_stack_middle(gray):
    stack = noisy((2, 2, 24, 28))  # (Z, C, Y, X)
    out = gray.denoise(stack, channel_axis=1)
    assert rel_err(out[1, 0], gray.denoise(stack[1, 0])) < 1e-6


def test_rgb_runs_jointly_whatever_the_channel_axis(color):
    img = noisy((40, 48, 3))
    last = color.denoise(img, channel_axis=-1)
    first = color.denoise(np.moveaxis(img, -1, 0), channel_axis=0)
    assert rel_err(np.moveaxis(first, 0, -1), last) < 1e-6
    # joint, not per channel: channel 0 depends on channel 1
    img2 = img.copy()
    img2[..., 1] *= 0.5
    assert np.abs(color.denoise(img2, channel_axis=-1)[..., 0] - last[..., 0]).max() > 1e-4


def test_color_model_on_gray_averages_its_three_outputs(color):
    img = noisy((32, 32))
    out = color.denoise(img)
    rgb = color.denoise(np.repeat(img[..., None], 3, axis=-1), channel_axis=-1)
    assert out.shape == img.shape
    assert rel_err(out, rgb.mean(axis=-1)) < 1e-5


# ------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    ("array", "kwargs", "error", "message"),
    [
        (np.zeros((0, 10), np.float32), {}, ValueError, r"empty image \(shape \(0, 10\)\)"),
        (np.zeros((1, 1), np.float32), {}, ValueError, r"shape \(1, 1\) is too small"),
        (np.zeros((3, 3), np.float32), {}, ValueError, r"shape \(3, 3\) is too small"),
        (np.zeros((8, 3), np.float32), {}, ValueError, r"\(8, 3\) must be at least 4 pixels"),
        (np.zeros((8, 8), bool), {}, TypeError, "dtype bool"),
        (np.zeros((8, 8), np.complex64), {}, TypeError, "dtype complex64"),
        (np.zeros((8, 8), object), {}, TypeError, "dtype object"),
        (np.zeros(16, np.float32), {}, ValueError, r"at least 2 dimensions \(got shape \(16,\)\)"),
        (
            np.zeros((3, 8, 8)),
            {"channel_axis": 3},
            ValueError,
            "channel_axis=3 is out of range for an image with 3 dimensions",
        ),
        (
            np.zeros((3, 8, 8)),
            {"channel_axis": -4},
            ValueError,
            "channel_axis=-4 is out of range for an image with 3 dimensions",
        ),
        (np.zeros((8, 8)), {"channel_axis": 0}, ValueError, "fewer than 2 spatial axes"),
        (np.zeros((8, 8)), {"tile": 0}, ValueError, "tile sizes must be positive"),
        (np.zeros((8, 8, 4)), {}, ValueError, "looks like 4 channels last.*channel_axis=-1"),
        (np.zeros((8, 8, 3)), {}, ValueError, "looks like 3 channels last.*channel_axis=-1"),
    ],
)
def test_bad_inputs_raise_naming_the_problem(gray, array, kwargs, error, message):
    with pytest.raises(error, match=message):
        gray.denoise(array, **kwargs)


def test_bad_inputs_fail_when_the_generator_is_made(gray):
    with pytest.raises(TypeError, match="dtype bool"):
        gray.denoise_iter(np.zeros((8, 8), bool))


@pytest.mark.parametrize("offset", [float("nan"), float("inf"), "median", True, [1.0]])
def test_bad_offsets_are_refused_naming_the_value(gray, offset):
    with pytest.raises(ValueError, match=r"offset must be a finite number, 'auto' or None \(got "):
        gray.denoise_iter(np.ones((8, 8)), offset=offset)


def test_nested_lists_are_accepted(gray):
    img = noisy((8, 8))
    out = gray.denoise(img.tolist())
    assert out.dtype == np.float32  # Python floats are float64
    assert rel_err(out, gray.denoise(img)) < 1e-6


def test_all_nan_plane_raises(gray):
    stack = noisy((2, 16, 16))
    stack[1] = np.nan
    with pytest.raises(ValueError, match=r"plane \(1,\) has no finite values"):
        gray.denoise(stack)


def test_nan_and_inf_pixels_give_finite_output_with_a_warning(gray):
    img = noisy((40, 40))
    img[5, 5] = np.nan
    img[20, 30] = np.inf
    with pytest.warns(RuntimeWarning, match="replaced by the median"):
        out = gray.denoise(img)
    assert np.isfinite(out).all()
    filled = img.copy()
    filled[~np.isfinite(img)] = np.median(img[np.isfinite(img)])
    assert rel_err(out, gray.denoise(filled)) < 1e-6


# ------------------------------------------------------------------ test-time augmentation


def _manual_tta(den: Denoiser, img: np.ndarray, n: int) -> np.ndarray:
    """The definition, by hand: flips and transposes of the whole image, mapped back."""
    outs = []
    for k in range(n):
        x = img.T if k & 4 else img
        x = x[::-1] if k & 1 else x
        x = x[:, ::-1] if k & 2 else x
        y = den.denoise(np.ascontiguousarray(x), offset=0.0)
        y = y[:, ::-1] if k & 2 else y
        y = y[::-1] if k & 1 else y
        outs.append(y.T if k & 4 else y)
    return np.mean(outs, axis=0)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_tta_averages_the_model_over_flips_and_transposes(color, n):
    """On an image of whole size multiples the average equals flipping the image by hand."""
    m = color.card.size_multiple
    img = noisy((12 * m, 10 * m))
    tta = color.denoise(img, offset=0.0, tta=n)
    assert rel_err(tta, _manual_tta(color, img, n)) < 1e-5
    assert rel_err(tta, color.denoise(img, offset=0.0)) > 1e-3  # not the plain output


def test_tta_tiles_give_the_untiled_result_for_odd_sizes(tiny_models):
    img = noisy((97, 131))
    for name in ("gray", "pyramid"):
        den = tiny_models[name]
        whole = den.denoise(img, tta=8)
        assert rel_err(den.denoise(img, tta=8, tile=(41, 23)), whole) < 1e-5, name


def test_tta_output_stays_homogeneous_and_keeps_dtype(gray):
    img = noisy((64, 48))
    out = gray.denoise(img, tta=8, offset=0.0)
    assert rel_err(gray.denoise(7.5 * img, tta=8, offset=0.0), 7.5 * out) < 1e-5
    u16 = (img * 4000).astype(np.uint16)
    assert gray.denoise(u16, tta=4).dtype == np.uint16


def test_tta_progress_counts_each_transform_of_each_tile(gray):
    steps = [s for s in gray.denoise_iter(noisy((70, 70)), tile=32, tta=4)
             if isinstance(s, Progress)]
    assert steps[-1] == Progress(9 * 4, 9 * 4)
    assert len(steps) > 4  # reported (and cancellable) between transforms


@pytest.mark.parametrize("tta", [0, 3, 16, True, 2.5, "8"])
def test_bad_tta_is_refused_naming_the_choices(gray, tta):
    with pytest.raises(ValueError, match="tta must be one of 1, 2, 4, 8"):
        gray.denoise(noisy((32, 32)), tta=tta)


# ------------------------------------------------------------------ strength


@pytest.mark.parametrize("strength", [0.0, 0.3, 0.75])
def test_strength_blends_the_input_back_in(gray, strength):
    """y + s (D(y) - y): 0 gives the input back, 1 the model's output."""
    img = noisy((70, 90))
    full = gray.denoise(img, offset=0.0)
    out = gray.denoise(img, offset=0.0, strength=strength)
    assert np.abs(out - (img + strength * (full - img))).max() < 1e-5 * np.abs(img).max()
    assert np.array_equal(gray.denoise(img, offset=0.0, strength=1.0), full)


def test_strength_keeps_tiles_homogeneity_and_channel_repeats(tiny_models, gray):
    img = noisy((97, 131))
    whole = gray.denoise(img, strength=0.4)
    assert rel_err(gray.denoise(img, strength=0.4, tile=(41, 23), tta=2),
                   gray.denoise(img, strength=0.4, tta=2)) < 1e-5
    assert rel_err(gray.denoise(6.0 * img, strength=0.4), 6.0 * whole) < 1e-5
    # a colour model on a gray image: the blend uses the image, not its repeated channels
    color = tiny_models["color"]
    full = color.denoise(img, offset=0.0)
    half = color.denoise(img, offset=0.0, strength=0.5)
    assert half.shape == img.shape
    assert np.abs(half - (img + 0.5 * (full - img))).max() < 1e-5 * np.abs(img).max()


def test_strength_with_a_black_level_and_integers(gray):
    u16 = (100 + noisy((64, 48)) * 4000).astype(np.uint16)
    full = gray.denoise(u16.astype(np.float32), offset="auto")  # unrounded, unclipped
    out = gray.denoise(u16, offset="auto", strength=0.5)
    assert out.dtype == np.uint16
    want = np.clip(np.rint(u16 + 0.5 * (full - u16)), 0, 65535)  # blended, then rounded once
    assert np.abs(out - want).max() <= 1.0
    assert np.array_equal(gray.denoise(u16, offset="auto", strength=0.0), u16)


@pytest.mark.parametrize("strength", [-0.1, 1.01, float("nan"), True, "0.5", None])
def test_bad_strength_is_refused_naming_the_range(gray, strength):
    with pytest.raises(ValueError, match="strength must be a number from 0"):
        gray.denoise_iter(noisy((32, 32)), strength=strength)


# ------------------------------------------------------------------ progress and cancel


def test_generator_yields_progress_then_the_array_last(gray):
    items = list(gray.denoise_iter(noisy((100, 90)), tile=32))
    *steps, result = items
    assert all(isinstance(s, Progress) for s in steps)
    assert isinstance(result, np.ndarray) and result.shape == (100, 90)
    assert steps[0] == Progress(0, steps[0].total)
    assert steps[-1].done == steps[-1].total > 1
    assert [s.done for s in steps] == sorted(s.done for s in steps)


def test_progress_callback_reaches_total(gray):
    calls = []
    gray.denoise(noisy((3, 70, 70)), tile=32, progress=lambda d, t: calls.append((d, t)))
    total = calls[-1][1]
    assert total == 3 * 3 * 3  # 3 planes x 3 x 3 tiles
    assert calls[-1] == (total, total)
    assert all(t == total for _, t in calls)


def test_small_planes_of_a_stack_are_batched(gray):
    steps = [s for s in gray.denoise_iter(noisy((6, 24, 24))) if isinstance(s, Progress)]
    assert steps == [Progress(0, 6), Progress(6, 6)]  # one model call for six planes


def test_cancel_raises_after_at_most_one_more_tile(gray, monkeypatch):
    from src_models import inference

    monkeypatch.setattr(inference, "BATCH_PIXELS", 1)  # one window per model call
    calls = []
    original = gray.predict_batch
    monkeypatch.setattr(gray, "predict_batch", lambda x: (calls.append(len(x)), original(x))[1])
    img = noisy((96, 96))
    with pytest.raises(Cancelled, match="cancelled after 1 of 9 tiles"):
        gray.denoise(img, tile=32, cancel=lambda: len(calls) >= 1)
    assert calls == [1]
    calls.clear()
    with pytest.raises(Cancelled, match="after 0 of 9"):
        gray.denoise(img, tile=32, cancel=lambda: True)
    assert calls == []


def test_a_batch_holds_at_most_one_large_tile_of_pixels(gray, monkeypatch):
    from src_models import inference

    monkeypatch.setattr(inference, "BATCH_PIXELS", 3 * 40 * 40)
    sizes = []
    original = gray.predict_batch
    monkeypatch.setattr(gray, "predict_batch", lambda x: (sizes.append(x.shape), original(x))[1])
    gray.denoise(noisy((7, 32, 32)))  # window 32 + 2 * 4 = 40 px
    assert sizes == [(3, 40, 40, 1), (3, 40, 40, 1), (1, 40, 40, 1)]


# ------------------------------------------------------------------ other inputs and helpers


def test_lazy_dask_arrays_are_read_plane_by_plane(gray):
    da = pytest.importorskip("dask.array")
    stack = noisy((3, 32, 32))
    out = gray.denoise(da.from_array(stack, chunks=(1, 32, 32)))
    assert isinstance(out, np.ndarray)
    assert rel_err(out, gray.denoise(stack)) < 1e-6


def test_estimate_sigma_is_in_the_image_units():
    rng = np.random.default_rng(0)
    img = 100.0 + 10.0 * rng.standard_normal((128, 128))
    assert estimate_sigma(img) == pytest.approx(10.0, rel=0.1)
    assert estimate_sigma(img * 1000) == pytest.approx(10000.0, rel=0.1)
    rgb = np.stack([img, 100 + 20 * rng.standard_normal((128, 128)), img], axis=-1)
    assert estimate_sigma(rgb, channel_axis=-1) == pytest.approx(40 / 3, rel=0.1)
    stack = np.stack([img] * 20)
    assert estimate_sigma(stack) == pytest.approx(10.0, rel=0.1)


def test_automatic_core_grows_only_for_wide_margin_models_within_the_window_budget():
    from src_models.inference import MAX_CORE, WINDOW_PIXELS, auto_core

    side = int(np.sqrt(WINDOW_PIXELS))
    assert auto_core(105, 16, channels=1) == side - 2 * 112  # margins rounded to the multiple
    assert auto_core(105, 16, channels=3) == int(np.sqrt(WINDOW_PIXELS // 3)) - 224
    assert auto_core(900, 16, channels=1) == MAX_CORE  # never smaller than the old fixed size
    # small margins (1024-px windows only ~10 % larger than their cores) keep 1024-px cores
    assert auto_core(29, 16, channels=1) == MAX_CORE
    assert auto_core(25, 1, channels=1) == MAX_CORE


@pytest.mark.usefixtures("bundled_only")
def test_a_2048_plane_is_one_tile_where_its_margins_fit_the_window_budget_else_more():
    from src_models.registry import load_model

    plane = np.zeros((2048, 2048), np.float32)
    # margins of 112 (the gray U-Net without noise biases), 72 (gray-fast) and 160 (gray's
    # noise biases): one window of 2048 + 2 margins fits sqrt(WINDOW_PIXELS) = 2368
    assert next(load_model("microscopy").denoise_iter(plane)) == Progress(0, 1)
    assert next(load_model("gray-fast").denoise_iter(plane)) == Progress(0, 1)
    assert next(load_model("gray").denoise_iter(plane)) == Progress(0, 1)
    # a plane one margin taller than 2048 no longer fits: two tiles
    taller = np.zeros((2048 + 160, 2048), np.float32)
    assert next(load_model("gray").denoise_iter(taller)) == Progress(0, 2)
    rgb = np.zeros((2048, 2048, 3), np.float32)
    assert next(load_model("color").denoise_iter(rgb, channel_axis=-1)) == Progress(0, 4)
