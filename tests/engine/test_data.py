"""Training data: image loading, listing, splitting, patch batches, validation pairs, PSNR."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from skimage.color import rgb2gray

from src_models.config import CorruptionConfig, FluorescenceConfig
from src_models.data import (
    PatchSampler,
    fluorescence_like,
    list_images,
    load_image,
    photon_validation_set,
    psnr,
    split_train_val,
    validation_set,
)

NOISE = CorruptionConfig(sigma_range=(10.0, 50.0))


def _ramp(h: int = 40, w: int = 48, c: int = 1) -> np.ndarray:
    """An image whose every pixel value is unique, so a crop tells where it came from."""
    return (np.arange(h * w * c, dtype=np.float32) / (h * w * c)).reshape(h, w, c)


# --- load_image ---------------------------------------------------------------------


def test_load_uint8_png_is_divided_by_255_and_gray_to_color_repeats(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (12, 10), dtype=np.uint8)
    path = tmp_path / "g.png"
    iio.imwrite(path, arr)
    gray = load_image(path, color=False)
    assert gray.dtype == np.float32 and gray.shape == (12, 10, 1)
    np.testing.assert_allclose(gray[..., 0], arr / 255.0, atol=1e-7)
    color = load_image(path, color=True)
    assert color.shape == (12, 10, 3)
    np.testing.assert_array_equal(color[..., 0], color[..., 2])
    np.testing.assert_array_equal(color[..., :1], gray)


def test_load_uint16_tiff_is_divided_by_65535(tmp_path):
    arr = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    path = tmp_path / "u16.tif"
    tifffile.imwrite(path, arr)
    img = load_image(path, color=False)
    np.testing.assert_allclose(img[..., 0], arr / 65535.0, rtol=1e-6)
    assert img.max() == 1.0


def test_load_float_tiff_keeps_unit_range_values_and_rescales_others(tmp_path):
    arr = np.array([[0.25, 0.0], [1.0, 0.75]], dtype=np.float32)
    path = tmp_path / "f.tiff"
    tifffile.imwrite(path, arr)
    np.testing.assert_array_equal(load_image(path, color=False)[..., 0], arr)
    eight_bit = np.array([[0.0, 51.0], [255.0, 102.0]], dtype=np.float32)  # 8-bit as floats
    tifffile.imwrite(path, eight_bit)
    with pytest.warns(UserWarning, match=r"spans \[0, 255\], not \[0, 1\]: rescaled"):
        loaded = load_image(path, color=False)[..., 0]
    np.testing.assert_allclose(loaded, eight_bit / 255.0)  # sigma 25/255 means 25 on it
    tifffile.imwrite(path, np.array([[-0.5, 0.5], [1.5, 0.0]], dtype=np.float32))
    with pytest.warns(UserWarning, match="rescaled"):
        np.testing.assert_allclose(load_image(path, color=False)[..., 0], [[0, 0.5], [1, 0.25]])


def test_load_rgba_png_drops_alpha_and_gray_is_luminance(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, (8, 9, 4), dtype=np.uint8)
    path = tmp_path / "rgba.png"
    iio.imwrite(path, rgba)
    color = load_image(path, color=True)
    assert color.shape == (8, 9, 3)
    np.testing.assert_allclose(color, rgba[..., :3] / 255.0, atol=1e-7)
    gray = load_image(path, color=False)
    assert gray.shape == (8, 9, 1)
    np.testing.assert_allclose(gray[..., 0], rgb2gray(rgba[..., :3] / 255.0), atol=1e-6)


def test_cmyk_jpeg_loads_as_its_rgb_colours(tmp_path):
    from PIL import Image

    path = tmp_path / "red.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=100)  # pure red
    red = load_image(path, color=True)
    assert red.shape == (16, 16, 3)
    np.testing.assert_allclose(red.mean(axis=(0, 1)), [1.0, 0.0, 0.0], atol=0.02)


def test_load_channel_first_rgb_tiff(tmp_path):
    chw = np.random.default_rng(2).integers(0, 256, (3, 6, 7), dtype=np.uint8)
    path = tmp_path / "chw.tif"
    tifffile.imwrite(path, chw, photometric="minisblack")
    img = load_image(path, color=True)
    np.testing.assert_allclose(img, np.moveaxis(chw, 0, -1) / 255.0, atol=1e-7)


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png", color=False)
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((9, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"stack\.tif has shape \(9, 8, 8\)"):
        load_image(stack, color=False)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        load_image(broken, color=False)


# --- list_images / split_train_val ----------------------------------------------------


def test_list_images_sorts_folder_filters_suffixes_and_keeps_files(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ["b.png", "a.TIF", "c.jpg", "notes.txt", ".hidden.png"]:
        (folder / name).write_bytes(b"")
    (folder / "sub").mkdir()
    extra = tmp_path / "z.bmp"
    extra.write_bytes(b"")
    found = list_images([folder, str(extra), folder / "b.png"])
    assert [p.name for p in found] == ["a.TIF", "b.png", "c.jpg", "z.bmp"]


def test_list_images_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_images([missing])
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no images .* in folder .*empty_folder"):
        list_images([empty])
    txt = tmp_path / "data.csv"
    txt.write_text("1,2")
    with pytest.raises(ValueError, match="data.csv is not a supported image file"):
        list_images([txt])


def test_split_train_val_is_deterministic_disjoint_and_bounded():
    items = [f"img{i}" for i in range(20)]
    train, val = split_train_val(items, val_fraction=0.25, max_val=3, seed=5)
    assert (train, val) == split_train_val(items, val_fraction=0.25, max_val=3, seed=5)
    assert len(val) == 3 and len(train) == 17
    assert sorted(train + val) == sorted(items)
    assert train == [x for x in items if x in train]  # input order kept
    assert split_train_val(items, 0.25, 3, seed=6)[1] != val


def test_split_train_val_keeps_at_least_one_training_image():
    assert split_train_val(["only"], 0.5, 8, 0) == (["only"], [])
    train, val = split_train_val(["a", "b"], 0.9, 8, 0)
    assert len(train) == 1 and len(val) == 1
    assert split_train_val(["a", "b", "c"], 0.0, 8, 0) == (["a", "b", "c"], [])
    assert len(split_train_val(list(range(10)), 0.01, 8, 0)[1]) == 1


# --- PatchSampler -----------------------------------------------------------------------


def test_patch_sampler_shapes_and_dtypes():
    sampler = PatchSampler(
        [_ramp(c=3), _ramp(50, 30, 3)], patch_size=16, batch_size=5, corruption=NOISE, seed=0
    )
    noisy, clean = sampler.batch(0)
    assert noisy.shape == clean.shape == (5, 16, 16, 3)
    assert noisy.dtype == clean.dtype == np.float32
    assert not np.array_equal(noisy, clean)


def test_patch_sampler_is_deterministic_in_seed_and_step():
    images = [_ramp(), _ramp(64, 32)]
    a = PatchSampler(images, 16, 4, NOISE, seed=3)
    b = PatchSampler(images, 16, 4, NOISE, seed=3)
    b.batch(0), b.batch(9)  # other batches drawn first must not matter
    for x, y in zip(a.batch(7), b.batch(7), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.batch(7)[1], a.batch(8)[1])
    assert not np.array_equal(a.batch(7)[0], PatchSampler(images, 16, 4, NOISE, seed=4).batch(7)[0])


def test_patch_sampler_clean_patches_are_crops_of_the_image():
    image = _ramp(40, 48)
    sampler = PatchSampler([image], 12, 6, NOISE, seed=1, augment=False)
    _, clean = sampler.batch(2)
    flat = image[..., 0]
    for patch in clean[..., 0]:
        y, x = np.argwhere(flat == patch[0, 0])[0]
        np.testing.assert_array_equal(patch, flat[y : y + 12, x : x + 12])


def test_patch_sampler_augment_gives_flips_and_rotations_of_crops():
    image = _ramp(40, 48)
    sampler = PatchSampler([image], 12, 16, NOISE, seed=0, augment=True)
    values = set(image.ravel().tolist())
    _, clean = sampler.batch(0)
    assert set(clean.ravel().tolist()) <= values
    # some patches are no longer plain crops: their first row is not increasing
    increasing = [np.all(np.diff(p[0, :, 0]) > 0) for p in clean]
    assert not all(increasing)


def test_patch_sampler_weights_images_by_area():
    big, small = np.zeros((60, 60, 1), np.float32), np.ones((20, 20, 1), np.float32)
    sampler = PatchSampler([big, small], 8, 64, CorruptionConfig(), seed=0)
    assert sampler.weights == pytest.approx([0.9, 0.1])
    share_small = np.mean([sampler.clean_patches(s).mean(axis=(1, 2, 3)) for s in range(10)])
    assert 0.03 < share_small < 0.2


def test_patch_sampler_pads_images_smaller_than_the_patch():
    sampler = PatchSampler([_ramp(10, 12)], 16, 3, NOISE, seed=0)
    noisy, clean = sampler.batch(0)
    assert clean.shape == (3, 16, 16, 1)
    assert set(clean.ravel().tolist()) <= set(_ramp(10, 12).ravel().tolist())


def test_patch_sampler_rejects_mixed_channels_and_negative_step():
    with pytest.raises(ValueError, match=r"mix channel counts \[1, 3\]"):
        PatchSampler([_ramp(c=1), _ramp(c=3)], 8, 2, NOISE)
    sampler = PatchSampler([_ramp()], 8, 2, NOISE)
    with pytest.raises(ValueError, match="step must be a non-negative integer"):
        sampler.batch(-1)


# --- fluorescence-like clean images -------------------------------------------------------


def test_fluorescence_like_blurs_a_point_by_the_drawn_psf_and_keeps_its_mass():
    point = np.zeros((41, 41, 1), np.float32)
    point[20, 20] = 1.0
    cfg = FluorescenceConfig(prob=1.0, gamma_range=(2.0, 2.0), psf_sigma_range=(1.5, 1.5))
    out = fluorescence_like(point, cfg, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == point.shape
    assert out.sum() == pytest.approx(1.0, rel=1e-4)  # a PSF spreads light, never adds any
    yy, xx = np.mgrid[:41, :41] - 20
    assert np.sqrt((out[..., 0] * yy**2).sum()) == pytest.approx(1.5, rel=0.02)
    assert np.sqrt((out[..., 0] * xx**2).sum()) == pytest.approx(1.5, rel=0.02)
    assert point.sum() == 1.0 and point[20, 20, 0] == 1.0  # the input is not modified


def test_fluorescence_like_darkens_by_gamma_and_stays_in_unit_range():
    flat = np.full((16, 16, 1), 0.5, np.float32)
    cfg = FluorescenceConfig(prob=1.0, gamma_range=(3.0, 3.0), psf_sigma_range=(1.0, 1.0))
    out = fluorescence_like(flat, cfg, np.random.default_rng(0))
    np.testing.assert_allclose(out, 0.125, rtol=1e-5)  # flat stays flat: 0.5**3
    wild = np.random.default_rng(1).normal(0.5, 1.0, (32, 32, 3)).astype(np.float32)
    out = fluorescence_like(wild, FluorescenceConfig(prob=1.0), np.random.default_rng(2))
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_fluorescence_like_blurs_channels_separately():
    image = np.zeros((21, 21, 2), np.float32)
    image[10, 10, 0] = 1.0
    out = fluorescence_like(image, FluorescenceConfig(prob=1.0), np.random.default_rng(0))
    assert out[..., 1].max() == 0.0 and out[..., 0].max() > 0.0


def test_patch_sampler_with_fluorescence_transforms_its_share_and_noises_the_transformed_target():
    images = [np.random.default_rng(0).random((64, 64, 1), dtype=np.float32)]
    plain = PatchSampler(images, 16, 64, NOISE, seed=5, augment=False)
    cfg = FluorescenceConfig(prob=0.5, gamma_range=(2.0, 3.0), psf_sigma_range=(1.0, 2.0))
    fluo = PatchSampler(images, 16, 64, NOISE, seed=5, augment=False, fluorescence=cfg)
    a, b = plain.clean_patches(3), fluo.clean_patches(3)
    changed = ~np.all(a == b, axis=(1, 2, 3))
    assert 0.3 < changed.mean() < 0.7
    assert b[changed].std() < 0.5 * a[changed].std()  # blurred noise-like image: smoother
    assert b[changed].mean() < a[changed].mean()  # gamma > 1 darkens
    np.testing.assert_array_equal(a[~changed], b[~changed])
    noisy, clean = fluo.batch(3)
    np.testing.assert_array_equal(clean, b)


def test_patch_sampler_without_fluorescence_keeps_its_batches():
    images = [_ramp(), _ramp(64, 32)]
    off = FluorescenceConfig(prob=0.0)
    for x, y in zip(
        PatchSampler(images, 16, 4, NOISE, seed=3).batch(2),
        PatchSampler(images, 16, 4, NOISE, seed=3, fluorescence=off).batch(2),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)


def test_photon_validation_set_has_shot_noise_at_each_level_and_fixed_labels():
    images = [np.full((40, 40, 1), 0.5, np.float32), np.full((30, 30, 1), 0.25, np.float32)]
    pairs = photon_validation_set(images, (10.0, 100.0), seed=0, crop=None)
    assert [lab for _, _, lab in pairs] == ["10ph", "100ph", "10ph", "100ph"]
    noisy, clean, _ = pairs[0]
    assert noisy.var() == pytest.approx(0.5 / 10, rel=0.15)  # Poisson: var = signal / photons
    assert pairs[1][0].var() == pytest.approx(0.5 / 100, rel=0.15)
    again = photon_validation_set(images, (10.0, 100.0), seed=0, crop=None)
    for (n1, _, _), (n2, _, _) in zip(pairs, again, strict=True):
        np.testing.assert_array_equal(n1, n2)


def test_photon_validation_set_makes_the_clean_images_fluorescence_like_once_per_image():
    image = np.random.default_rng(0).random((48, 48, 1), dtype=np.float32)
    cfg = FluorescenceConfig(prob=0.5, gamma_range=(2.0, 2.0), psf_sigma_range=(1.0, 1.0))
    pairs = photon_validation_set([image], (3.0, 30.0), seed=0, crop=None, fluorescence=cfg)
    expected = fluorescence_like(image, cfg, np.random.default_rng(0))
    np.testing.assert_allclose(pairs[0][1], expected, rtol=1e-6)
    np.testing.assert_array_equal(pairs[0][1], pairs[1][1])
    plain = photon_validation_set([image], (3.0,), seed=0, crop=None)
    np.testing.assert_array_equal(plain[0][1], image)


# --- validation_set / psnr ------------------------------------------------------------------


def test_validation_set_is_deterministic_centre_cropped_and_noisy():
    images = [
        np.random.default_rng(0).random((300, 200, 1), dtype=np.float32),
        np.full((64, 80, 1), 0.5, np.float32),
    ]
    pairs = validation_set(images, sigmas=(15.0, 50.0), seed=0, crop=128)
    again = validation_set(images, sigmas=(15.0, 50.0), seed=0, crop=128)
    assert [s for _, _, s in pairs] == [15.0, 50.0, 15.0, 50.0]
    for (n1, c1, _), (n2, c2, _) in zip(pairs, again, strict=True):
        np.testing.assert_array_equal(n1, n2)
        np.testing.assert_array_equal(c1, c2)
    noisy, clean, _ = pairs[0]
    assert clean.shape == (128, 128, 1)
    np.testing.assert_array_equal(clean, images[0][86:214, 36:164])
    assert pairs[3][1].shape == (64, 80, 1)
    assert (pairs[3][0] - pairs[3][1]).std() * 255 == pytest.approx(50.0, rel=0.05)
    other = validation_set(images, sigmas=(15.0,), seed=1, crop=128)
    assert not np.array_equal(other[0][0], noisy)


def test_validation_set_crops_to_a_size_multiple():
    pairs = validation_set(
        [np.zeros((70, 45, 1), np.float32)], (25.0,), seed=0, crop=None, multiple=8
    )
    assert pairs[0][1].shape == (64, 40, 1)


def test_validation_set_of_no_images_is_empty():
    assert validation_set([], (25.0,), seed=0) == []


def test_psnr_identical_is_inf_and_known_mse_matches():
    clean = np.full((16, 16, 1), 0.5, np.float32)
    assert psnr(clean, clean) == float("inf")
    assert psnr(clean, clean + 0.1) == pytest.approx(10 * np.log10(1 / 0.01))
    rng = np.random.default_rng(0)
    est = clean + rng.normal(0, 0.05, clean.shape)
    mse = np.mean((clean - est) ** 2)
    assert psnr(clean, est) == pytest.approx(10 * np.log10(1 / mse))


def test_validation_scores_are_capped_so_a_perfect_score_fits_in_a_model_card():
    from src_models.config import ModelCard
    from src_models.data import SCORE_MAX_DB
    from src_models.train import evaluate

    clean = np.zeros((8, 8, 1), np.float32)
    assert psnr(clean, clean, max_db=SCORE_MAX_DB) == SCORE_MAX_DB == 100.0
    assert psnr(clean, clean + 0.1, max_db=SCORE_MAX_DB) == pytest.approx(20.0)

    def identity(x, training=False):
        return x

    scores = evaluate(identity, [(clean, clean, "black")], multiple=1)
    assert scores == {"black": 100.0}
    card = ModelCard(name="m", channels=1, val_psnr=scores)
    assert ModelCard.model_validate_json(card.model_dump_json()).val_psnr == scores


def test_psnr_clips_the_estimate_to_the_peak_range():
    zeros = np.zeros((4, 4, 1), np.float32)
    assert psnr(zeros, zeros - 0.5) == float("inf")
    assert psnr(zeros + 255, zeros + 300, peak=255) == float("inf")
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(zeros, np.zeros((4, 5, 1)))
