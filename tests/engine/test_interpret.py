"""Adaptive filters: Euler's identity, brute-force Jacobians, probe estimates, spectra, cancel.

Why fully random weights: builders start residual nets as the identity (a zero
last layer), and a near-identity net would make every filter a delta. Every
weight is drawn at random here, so filters spread and differ between pixels.
The models are saved and loaded, as the plugin gets them.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from src_models.inference import Cancelled, Denoiser
from src_models.interpret import (
    MAX_JACOBIAN_VALUES,
    crop_jacobian,
    filter_maps,
    jacobian_spectrum,
    pixel_filter,
)

KINDS = {
    "dncnn": ("dncnn", {"depth": 4, "width": 8}),
    "resnet": (
        "resnet",
        {"blocks": 1, "width": 8, "expand": 8, "gate": True, "squeeze_excite": True},
    ),
    "unet": ("unet", {"scales": 2, "width": 8, "convs": 1, "unshuffle": 2}),
    "multiscale": ("multiscale", {"levels": 2, "depth": 3, "width": 8}),
    "rgb": ("dncnn", {"channels": 3, "depth": 3, "width": 8}),
}


def randomise_all(model, seed: int) -> None:
    """Draw every weight: He-scaled kernels, gammas in [0.5, 1.5], small biases, random stds."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        shape = tuple(v.shape)
        if len(shape) >= 2:
            w = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        elif v.path.endswith("gamma"):
            w = rng.uniform(0.5, 1.5, size=shape)
        else:  # biases inside scale-invariant gates
            w = 0.3 * rng.standard_normal(shape)
        v.assign(w.astype("float32"))
    for v in model.non_trainable_variables:
        if v.path.endswith("moving_std"):
            v.assign(rng.uniform(0.5, 2.0, size=tuple(v.shape)).astype("float32"))


def random_denoiser(name: str, folder, seed: int = 0) -> Denoiser:
    import keras

    from src_models.architectures import build_model, receptive_field, size_multiple
    from src_models.config import DnCNNConfig, ModelCard, MultiscaleConfig, ResNetConfig, UNetConfig
    from src_models.modelfile import load_keras_model, save_model

    classes = {
        "dncnn": DnCNNConfig,
        "resnet": ResNetConfig,
        "unet": UNetConfig,
        "multiscale": MultiscaleConfig,
    }
    kind, kwargs = KINDS[name]
    keras.utils.set_random_seed(seed)
    config = classes[kind](**kwargs)
    model = build_model(config, name=name)
    randomise_all(model, seed)
    multiple = size_multiple(config)
    card = ModelCard(
        name=name,
        channels=config.channels,
        kind=kind,
        receptive_field=receptive_field(model, multiple),
        size_multiple=multiple,
    )
    path = save_model(model, folder / f"{name}.keras", card)
    return Denoiser(*load_keras_model(path))


@pytest.fixture(scope="module")
def denoisers(tmp_path_factory) -> dict[str, Denoiser]:
    folder = tmp_path_factory.mktemp("interpret_models")
    return {name: random_denoiser(name, folder, seed=i) for i, name in enumerate(KINDS)}


def image(shape, seed: int = 0) -> np.ndarray:
    """Positive float32 pixels in [0.2, 0.8] (offset 0; perturbations keep it positive)."""
    return np.random.default_rng(seed).uniform(0.2, 0.8, size=shape).astype(np.float32)


def rel(a, b) -> float:
    """Relative Frobenius error of a against b."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def finite_difference_jacobian(den: Denoiser, img: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """J[out_y, out_x, in_y, in_x] of ``den.denoise`` by central differences (one stack call)."""
    h, w = img.shape
    n = h * w
    stack = np.repeat(img[None].astype(np.float64), 2 * n, axis=0).reshape(2 * n, n)
    stack[0::2][np.arange(n), np.arange(n)] += eps
    stack[1::2][np.arange(n), np.arange(n)] -= eps
    out = den.denoise(stack.reshape(2 * n, h, w).astype(np.float32)).astype(np.float64)
    columns = (out[0::2] - out[1::2]).reshape(n, n) / (2 * eps)  # [input, output]
    return columns.T.reshape(h, w, h, w)


# ------------------------------------------------------------------ one pixel's filter


@pytest.mark.parametrize("name", ["dncnn", "resnet", "unet", "multiscale"])
def test_euler_identity_holds_at_interior_and_border_pixels(denoisers, name):
    den = denoisers[name]
    img = image((37, 45), seed=1)
    out = den.denoise(img)
    for pixel in [(0, 0), (18, 21), (36, 44), (3, 40)]:
        f = pixel_filter(den, img, pixel)
        assert f.identity_error < 1e-4, pixel
        assert f.output_value == pytest.approx(float(out[pixel]), rel=1e-5, abs=1e-6)
        rows, cols = f.window
        assert f.weights.shape == (rows.stop - rows.start, cols.stop - cols.start)
        assert f.origin == (rows.start, cols.start)
        assert rows.start <= pixel[0] < rows.stop and cols.start <= pixel[1] < cols.stop
        # Euler by hand: the weights times the pixels they cover give the output
        assert float(np.sum(f.weights * img[f.window])) == pytest.approx(f.output_value, rel=1e-4)
        assert f.width > 0.3 and f.centre_weight == pytest.approx(
            f.weights[pixel[0] - rows.start, pixel[1] - cols.start]
        )


@pytest.mark.parametrize("name", ["dncnn", "unet"])
def test_euler_identity_by_hand_subtracts_the_offset(denoisers, name):
    """``D(y)_i - o = sum_j w_j (y_j - o)``: without ``o`` the sum misses ``o (sum_j w_j - 1)``."""
    den = denoisers[name]
    img = (100 + 200 * image((30, 28), seed=13)).astype(np.float32)  # values in [140, 260]
    out = den.denoise(img, offset=100)
    for pixel in [(0, 0), (15, 14), (29, 27)]:
        f = pixel_filter(den, img, pixel, offset=100)
        assert f.offset == 100.0 and f.identity_error < 1e-4
        assert f.output_value == pytest.approx(float(out[pixel]), rel=1e-5)
        by_hand = float(np.sum(f.weights.astype(np.float64) * (img[f.window] - 100.0)))
        assert by_hand == pytest.approx(f.output_value - 100.0, rel=1e-4)
        no_offset = float(np.sum(f.weights.astype(np.float64) * img[f.window]))
        assert no_offset - f.output_value == pytest.approx(100.0 * (f.weight_sum - 1), rel=1e-3)
        assert abs(f.weight_sum - 1) > 1e-2  # random weights: the offset really matters


@pytest.mark.parametrize("name", ["unet", "resnet"])
def test_pixel_filter_is_the_finite_difference_jacobian_row(denoisers, name):
    den = denoisers[name]
    img = image((14, 13), seed=2)  # not a multiple of the unet's size multiple: padded
    jac = finite_difference_jacobian(den, img)
    for pixel in [(0, 0), (7, 6), (13, 12), (0, 12)]:
        f = pixel_filter(den, img, pixel)
        row = jac[pixel]
        assert rel(f.weights, row[f.window]) < 3e-2, pixel
        outside = np.ones(img.shape, bool)
        outside[f.window] = False
        assert np.abs(row[outside]).max(initial=0.0) < 1e-3 * np.abs(row).max()


def test_weights_do_not_depend_on_the_image_scale_and_offsets_are_reported(denoisers):
    den = denoisers["unet"]
    img = image((24, 20), seed=3)
    base = pixel_filter(den, img, (5, 7))
    scaled = pixel_filter(den, (img * 1000).astype(np.uint16), (5, 7))
    assert rel(scaled.weights, base.weights) < 1e-3
    assert base.offset == 0.0
    shifted = img - 0.5  # negative pixels: the plane minimum is the offset
    f = pixel_filter(den, shifted, (5, 7))
    assert f.offset == pytest.approx(float(shifted.min()))
    assert f.identity_error < 1e-4
    assert f.output_value == pytest.approx(float(den.denoise(shifted)[5, 7]), abs=1e-5)


def test_auto_offset_gives_the_filter_of_what_the_denoiser_outputs_for_camera_data(denoisers):
    from src_models.noise_model import black_level

    den = denoisers["unet"]
    camera = (100 + 400 * image((24, 20), seed=4)).astype(np.uint16)  # a black level of ~100
    out = den.denoise(camera, offset="auto")
    f = pixel_filter(den, camera, (5, 7), offset="auto")
    assert f.offset == pytest.approx(black_level(camera))
    assert f.identity_error < 1e-4
    assert f.output_value == pytest.approx(float(out[5, 7]), abs=0.6)  # uint16 rounding
    plain = pixel_filter(den, camera, (5, 7))  # offset 0: another input, another filter
    assert plain.offset == 0.0 and rel(plain.weights, f.weights) > 1e-3
    maps = filter_maps(den, camera, ["energy"], probes=16, offset="auto")
    assert np.isfinite(maps["energy"]).all()
    with pytest.raises(ValueError, match="offset must be"):
        pixel_filter(den, camera, (5, 7), offset="black")


def test_colour_filters_have_channel_blocks_and_obey_euler(denoisers):
    img = image((20, 22, 3), seed=4)
    joint = denoisers["rgb"]  # a 3-channel model mixes channels
    f = pixel_filter(joint, img, (10, 11), channel_axis=-1)
    h, w = f.weights.shape[1:3]
    assert f.weights.shape == (3, h, w, 3)
    assert np.all(f.identity_error < 1e-4)
    np.testing.assert_allclose(
        f.output_value, joint.denoise(img, channel_axis=-1)[10, 11], rtol=1e-5
    )
    assert np.abs(f.weights[0, ..., 1]).max() > 1e-3  # cross-channel weights
    one = pixel_filter(joint, img, (10, 11), channel_axis=-1, out_channel=2)
    np.testing.assert_allclose(one.weights, f.weights[2], rtol=1e-6, atol=1e-7)
    assert one.centre_weight == pytest.approx(float(f.centre_weight[2]))

    gray = denoisers["dncnn"]  # a 1-channel model runs on each channel alone
    g = pixel_filter(gray, img, (0, 3), channel_axis=-1)
    assert np.all(g.identity_error < 1e-4)
    for c_out in range(3):
        for c_in in range(3):
            if c_in != c_out:
                assert not g.weights[c_out, ..., c_in].any()
    alone = pixel_filter(gray, np.ascontiguousarray(img[..., 1]), (0, 3))
    np.testing.assert_allclose(g.weights[1, ..., 1], alone.weights, rtol=1e-5, atol=1e-7)


def test_pixel_filter_warns_when_the_card_understates_the_receptive_field(denoisers):
    den = denoisers["unet"]
    blind = Denoiser(den.model, den.card.model_copy(update={"receptive_field": 1}))
    with pytest.warns(RuntimeWarning, match="receptive_field"):
        f = pixel_filter(blind, image((24, 24)), (12, 12))
    assert f.identity_error > 1e-3


def test_identity_error_stays_small_where_the_output_equals_the_offset(denoisers):
    """A dark pixel: ``D(y)_i - o`` near 0 though its terms ``w_j (y_j - o)`` are not."""
    den = denoisers["dncnn"]
    img = image((24, 24), seed=14)
    pixel, o = (12, 12), 0.5
    for _ in range(8):  # Newton on o: d(D_i - o)/do = -sum_j w_j, as D(y) - o = N(y - o)
        f = pixel_filter(den, img, pixel, offset=o)
        o += (f.output_value - o) / f.weight_sum
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "the filter of pixel", RuntimeWarning)
        f = pixel_filter(den, img, pixel, offset=o)
    terms = np.abs(f.weights.astype(np.float64) * (img[f.window] - o)).sum()
    assert abs(f.output_value - o) < 1e-4 * terms  # the terms cancel
    assert f.identity_error < 1e-5


def test_pixel_filter_rejects_bad_pixels(denoisers):
    den = denoisers["dncnn"]
    img = image((16, 16))
    with pytest.raises(ValueError, match=r"pixel=\(16, 0\) is outside"):
        pixel_filter(den, img, (16, 0))
    with pytest.raises(ValueError, match="has 3 indices"):
        pixel_filter(den, img, (1, 2, 3))
    with pytest.raises(TypeError, match="integers"):
        pixel_filter(den, img, (1.5, 2))
    with pytest.raises(ValueError, match="out_channel needs"):
        pixel_filter(den, img, (1, 2), out_channel=0)


# ------------------------------------------------------------------ the whole Jacobian


def test_jacobian_spectrum_matches_finite_differences_and_pixel_filters(denoisers):
    den = denoisers["multiscale"]
    img = image((10, 12), seed=5)
    spec = jacobian_spectrum(den, img, k=4)
    jac = spec.jacobian.reshape(10, 12, 10, 12)
    assert rel(jac, finite_difference_jacobian(den, img)) < 3e-2
    f = pixel_filter(den, img, (9, 0))
    np.testing.assert_allclose(jac[9, 0][f.window], f.weights, rtol=1e-4, atol=1e-6)
    assert spec.identity_error < 1e-4


def test_jacobian_spectrum_is_sorted_with_trace_and_frobenius(denoisers):
    den = denoisers["unet"]
    img = image((12, 12), seed=6)
    spec = jacobian_spectrum(den, img, k=5)
    s = spec.singular_values
    J = spec.jacobian.astype(np.float64)
    assert s.shape == (144,) and np.all(np.diff(s) <= 1e-9) and s[-1] >= 0
    np.testing.assert_allclose(s, np.linalg.svd(J, compute_uv=False), rtol=1e-6, atol=1e-6 * s[0])
    assert spec.effective_dimension == pytest.approx(float(np.trace(J)), rel=1e-6)
    assert spec.squared_sum == pytest.approx(float(np.sum(s**2)), rel=1e-6)
    assert spec.vectors.shape == (5, 12, 12)
    for sigma, vec in zip(s, spec.vectors.reshape(5, -1).astype(np.float64), strict=False):
        assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
        assert np.linalg.norm(J @ vec) == pytest.approx(sigma, rel=1e-4)
    # ||J - J^T||_F / ||J||_F of the Jacobian it returns (a random net: far from symmetric)
    sym = np.linalg.norm(J - J.T) / np.linalg.norm(J)
    assert spec.symmetry_error == pytest.approx(sym, rel=1e-6)
    assert spec.symmetry_error > 0.05


@pytest.mark.parametrize(
    "answers, when",
    [((False, True), "before its eigenvalues"), ((False, False, True), "before its singular vec")],
)
def test_cancel_after_the_jacobian_stops_the_spectrum_before_each_eigensolver(
    denoisers, answers, when
):
    """The first poll after the last batch is the Jacobian loop's; then one per eigensolver."""
    den = denoisers["dncnn"]
    calls: list[tuple[int, int]] = []
    polls_after_jacobian: list[bool] = []

    def cancel() -> bool:
        done, total = calls[-1]
        if done < total:
            return False
        polls_after_jacobian.append(answers[len(polls_after_jacobian)])
        return polls_after_jacobian[-1]

    def progress(done: int, total: int) -> None:
        calls.append((done, total))

    crop = image((12, 12), seed=16)
    with pytest.raises(Cancelled, match=when):
        jacobian_spectrum(den, crop, k=2, progress=progress, cancel=cancel)
    assert tuple(polls_after_jacobian) == answers


def test_jacobian_spectrum_refuses_crops_over_64x64(denoisers):
    den = denoisers["dncnn"]
    assert MAX_JACOBIAN_VALUES == 64 * 64
    with pytest.raises(ValueError, match=r"\(65, 64\) has 4160 values"):
        jacobian_spectrum(den, image((65, 64)))
    with pytest.raises(ValueError, match="at most 4096"):
        crop_jacobian(den, image((40, 40, 3)), channel_axis=-1)


# ------------------------------------------------------------------ whole-image maps


def exact_maps(den: Denoiser, img: np.ndarray, channel_axis=None) -> dict[str, np.ndarray]:
    """Centre weight, energy and width of every pixel's filter from the full Jacobian.

    Colour (channel last): each output channel's value, averaged over channels,
    as :func:`filter_maps` reports them.
    """
    h, w = img.shape[:2]
    c = 1 if channel_axis is None else img.shape[-1]
    J = crop_jacobian(den, img, channel_axis=channel_axis)  # rows and columns in (h, w, c) order
    yy, xx = np.divmod(np.arange(h * w).repeat(c), w)
    dist2 = (yy[:, None] - yy[None]) ** 2 + (xx[:, None] - xx[None]) ** 2
    energy = np.sum(J**2, axis=1)
    maps = {
        "centre_weight": np.diag(J),
        "energy": energy,
        "width": np.sqrt(np.sum(J**2 * dist2, axis=1) / energy),
    }
    return {name: m.reshape(h, w, c).mean(axis=-1) for name, m in maps.items()}


def mean_rel(a, b) -> float:
    return float(np.mean(np.abs(a - b)) / np.mean(np.abs(b)))


def test_hutchinson_centre_weight_is_within_5_percent_of_the_exact_diagonal(denoisers):
    img = image((24, 24), seed=7)
    for name, probes in (("multiscale", 64), ("unet", 256)):
        den = denoisers[name]
        exact = exact_maps(den, img)
        maps = filter_maps(den, img, maps=("centre_weight",), probes=probes)
        assert set(maps) == {"centre_weight"} and maps["centre_weight"].shape == (24, 24)
        assert mean_rel(maps["centre_weight"], exact["centre_weight"]) < 0.05, name
    # fewer probes (classes closer than the filters are wide) are less accurate, but not wild
    few = filter_maps(den, img, maps=("centre_weight",), probes=16)
    error = mean_rel(few["centre_weight"], exact["centre_weight"])
    assert mean_rel(maps["centre_weight"], exact["centre_weight"]) < error < 1.0


def test_probe_maps_are_exact_when_probe_classes_are_wider_than_the_filters(denoisers):
    """Classes d > rf apart: one class pixel per filter (diagonal exact); d > 2 rf: energy too."""
    den = denoisers["dncnn"]
    rf = den.card.receptive_field
    img = image((20, 23), seed=8)
    exact = exact_maps(den, img)
    maps = filter_maps(den, img, maps=("centre_weight",), probes=(rf + 1) ** 2)
    np.testing.assert_allclose(maps["centre_weight"], exact["centre_weight"], rtol=1e-4, atol=1e-5)
    maps = filter_maps(den, img, maps=("energy", "width"), probes=(2 * rf + 1) ** 2)
    for name in maps:
        np.testing.assert_allclose(maps[name], exact[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_colour_probe_maps_are_exact_when_classes_split_channels_and_are_wider_than_filters(
    denoisers,
):
    """A 3-channel model mixes channels at the pixel itself: ``J_{iq,iq'}`` must not leak in."""
    den = denoisers["rgb"]
    rf = den.card.receptive_field
    img = image((20, 23, 3), seed=15)
    exact = exact_maps(den, img, channel_axis=-1)
    J = crop_jacobian(den, img, channel_axis=-1).reshape(20, 23, 3, 20, 23, 3)
    cross = np.einsum("yxqyxr->yxqr", J)[..., ~np.eye(3, dtype=bool)]  # other channels, same pixel
    assert np.abs(cross).mean() > 0.03 * np.abs(exact["centre_weight"]).mean()  # >> 1e-4
    maps = filter_maps(den, img, ["centre_weight"], probes=(rf + 1) ** 2 * 3, channel_axis=-1)
    np.testing.assert_allclose(maps["centre_weight"], exact["centre_weight"], rtol=1e-4, atol=1e-5)
    maps = filter_maps(den, img, ["energy", "width"], probes=(2 * rf + 1) ** 2 * 3, channel_axis=-1)
    for name in maps:
        np.testing.assert_allclose(maps[name], exact[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("probes, spacing", [(1, 1), (2, 1), (3, 1), (16, 2), (48, 4), (50, 4)])
def test_probe_classes_cover_every_pixel_and_channel_once(probes, spacing):
    """Unbiased only if each (pixel, channel) has exactly one class, used at least once."""
    from src_models.interpret import _ProbeClasses

    classes = _ProbeClasses(probes, 7, 9, channels=3)
    v, weights = classes.draw(range(probes), key=(0, 0))
    assert classes.d == spacing and classes.uses.sum() == probes and classes.uses.min() >= 1
    per_class = np.zeros((classes.uses.size, 7, 9, 3))
    for p in range(probes):
        per_class[p % classes.uses.size] = np.abs(v[p])
    np.testing.assert_array_equal(per_class.sum(axis=0), 1)  # one class each
    if probes >= 3:  # channels never share a probe
        assert np.all(np.count_nonzero(v, axis=-1) <= 1)
    np.testing.assert_allclose(weights, 1 / classes.uses[np.arange(probes) % classes.uses.size])


def test_energy_width_and_residual_maps_match_the_exact_jacobian(denoisers):
    den = denoisers["unet"]
    img = image((24, 20), seed=8)
    exact = exact_maps(den, img)
    maps = filter_maps(den, img, probes=64)  # classes 8 px apart: closer than the filters reach
    assert mean_rel(maps["energy"], exact["energy"]) < 0.15
    assert mean_rel(maps["width"], exact["width"]) < 0.15
    np.testing.assert_allclose(maps["residual"], img - den.denoise(img), atol=1e-6)
    assert exact["width"].mean() > 1.0  # the filters really spread


def test_maps_do_not_depend_on_the_tiling(denoisers):
    den = denoisers["unet"]
    img = image((40, 36), seed=9)
    whole = filter_maps(den, img, probes=4, seed=3)
    tiled = filter_maps(den, img, probes=4, seed=3, tile=16)  # last cores overlap: counted once
    assert filter_maps(den, img, probes=4, seed=4)["energy"].tolist() != whole["energy"].tolist()
    for name in whole:
        np.testing.assert_allclose(tiled[name], whole[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_colour_maps_are_gray_images(denoisers):
    img = image((16, 18, 3), seed=10)
    maps = filter_maps(denoisers["rgb"], img, probes=2, channel_axis=-1)
    assert all(m.shape == (16, 18) and m.dtype == np.float32 for m in maps.values())
    residual = img - denoisers["rgb"].denoise(img, channel_axis=-1)
    np.testing.assert_allclose(maps["residual"], residual.mean(axis=-1), atol=1e-6)


def test_cancel_stops_filter_maps_and_progress_counts_steps(denoisers):
    den = denoisers["dncnn"]
    img = image((40, 40), seed=11)
    calls: list[tuple[int, int]] = []
    with pytest.raises(Cancelled):
        filter_maps(
            den,
            img,
            probes=8,
            tile=16,
            progress=lambda d, t: calls.append((d, t)),
            cancel=lambda: len(calls) >= 3,
        )
    assert calls[0][0] == 0 and calls[-1][0] == 2 < calls[-1][1]
    calls.clear()
    filter_maps(
        den, img, maps=("energy",), probes=2, tile=16, progress=lambda d, t: calls.append((d, t))
    )
    assert calls[-1][0] == calls[-1][1] == len(calls) - 1


def test_maps_memory_estimate_follows_the_window_not_the_probe_count():
    """Probes go through the network a few at a time: 256 of them need no more than 16."""
    from types import SimpleNamespace

    from src_models.interpret import ACTIVATION_BYTES, filter_maps_bytes

    gray = SimpleNamespace(channels=1, receptive_field=112, size_multiple=16)  # as `gray`
    big = filter_maps_bytes(gray, 4096, 4096, 1, 256)
    assert big == filter_maps_bytes(gray, 4096, 4096, 1, 16)
    # five float64 sums of the image, and one 1248^2 window with three tangents in the network
    assert 4096**2 * 40 + 1248**2 * 3 * ACTIVATION_BYTES < big < 4 * 2**30
    assert filter_maps_bytes(gray, 512, 512, 1, 16) < big / 3
    assert filter_maps_bytes(gray, 4096, 4096, 1, 16, maps=("residual",)) < big / 3
    fast = SimpleNamespace(channels=1, receptive_field=12, size_multiple=1)
    # small windows: several probes per call, so the count matters again, up to a batch
    assert filter_maps_bytes(fast, 128, 128, 1, 16) > filter_maps_bytes(fast, 128, 128, 1, 4)


def test_filter_maps_rejects_bad_arguments(denoisers):
    den = denoisers["dncnn"]
    img = image((16, 16))
    with pytest.raises(ValueError, match="unknown map names"):
        filter_maps(den, img, maps=("sharpness",))
    with pytest.raises(ValueError, match="probes must be a positive integer"):
        filter_maps(den, img, probes=0)
    with pytest.raises(ValueError, match="one plane"):
        filter_maps(den, image((2, 16, 16)))


# ------------------------------------------------------------------ autodiff in the backend


def test_jvp_through_bilinear_upsampling_obeys_euler_and_is_the_vjp_adjoint(denoisers):
    """TensorFlow's forward mode drops tangents through bilinear resizing unless given a rule."""
    from src_models.backend import jvp, vjp

    model = denoisers["multiscale"].model
    rng = np.random.default_rng(12)
    x, u, v = (rng.uniform(0, 1, size=(2, 16, 20, 1)).astype(np.float32) for _ in range(3))
    out = np.asarray(model(x, training=False))
    assert rel(jvp(model, x, x), out) < 1e-5
    assert float(np.sum(u * jvp(model, x, v))) == pytest.approx(
        float(np.sum(vjp(model, x, u) * v)), rel=1e-4
    )


def test_autodiff_works_for_several_window_shapes(denoisers):
    """Layers needing static sizes (bilinear upsampling) must not see relaxed shapes."""
    from src_models.backend import jvp, vjp

    model = denoisers["multiscale"].model
    for shape in [(1, 16, 16, 1), (3, 16, 16, 1), (1, 24, 20, 1), (2, 32, 8, 1)]:
        x = image(shape)
        out = np.asarray(model(x, training=False))
        assert rel(jvp(model, x, x), out) < 1e-5, shape
        assert float(np.sum(vjp(model, x, np.ones_like(x)) * x)) == pytest.approx(
            float(out.sum()), rel=1e-4
        )


# ------------------------------------------------------------------ the timing script's docs


def test_timing_script_writes_its_block_between_the_readme_markers(tmp_path):
    from src_models.interpret_timing import MARK_END, MARK_START, _write, main

    row = {"model": "m", "input": "512x512", "details": "d", "calls": "c"}
    rows = [
        {**row, "operation": "pixel_filter", "seconds": 0.214, "first_call_seconds": 2.5},
        {**row, "operation": "filter_maps", "seconds": 75.04, "first_call_seconds": 75.04},
        {**row, "operation": "jacobian_spectrum", "seconds": 754.2, "first_call_seconds": 754.2},
    ]
    meta = {"command": "cmd", "date": "today", "hardware": "hw", "load_start": "1", "load_end": "2"}
    _write(tmp_path / "run", rows, meta)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{MARK_START}\nold numbers\n{MARK_END}\noutro\n", encoding="utf-8")
    assert main(["--out", str(tmp_path / "run"), "--docs-only", "--write-docs", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith(f"intro\n{MARK_START}\n_Generated by `cmd` on today, hw; load average")
    assert text.endswith(f"|\n{MARK_END}\noutro\n") and "old numbers" not in text
    assert "| pixel filter (one click) | m | 512x512 | d | 0.21 s (first call 2.50 s) |" in text
    assert "| filter maps ('Compute maps') | m | 512x512 | d | 75.0 s |" in text
    assert "| Jacobian spectrum | m | 512x512 | d | 754 s (12.6 min) |" in text
    readme.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(ValueError, match="must hold <!-- interpret-timing:start -->"):
        main(["--out", str(tmp_path / "run"), "--docs-only", "--write-docs", str(readme)])
