"""The config schema rejects bad values with messages that name the field and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from src_models.config import ConfigError, load_recipe, parse_recipe

RECIPE_DIR = Path(__file__).resolve().parents[2] / "src_models" / "recipes"
RECIPES = sorted(RECIPE_DIR.rglob("*.yaml"))  # stages/ too


def _base(**arch):
    return {"name": "m", "architecture": {"kind": "dncnn", **arch}}


def test_unknown_architecture_kind_lists_the_allowed_kinds():
    with pytest.raises(ConfigError) as err:
        parse_recipe({"name": "m", "architecture": {"kind": "transformer"}})
    msg = str(err.value)
    assert "architecture" in msg and "dncnn" in msg and "unet" in msg and "transformer" in msg


def test_even_kernel_size_is_rejected_with_the_value():
    with pytest.raises(ConfigError, match=r"architecture\.dncnn\.kernel_size.*odd \(got 4\)"):
        parse_recipe(_base(kernel_size=4))


def test_unknown_field_is_rejected_by_name():
    with pytest.raises(ConfigError, match=r"architecture\.dncnn\.bias.*Extra inputs"):
        parse_recipe(_base(bias=True))


def test_out_of_range_values_name_the_bound():
    with pytest.raises(ConfigError, match=r"training\.learning_rate.*greater than 0"):
        parse_recipe({**_base(), "training": {"learning_rate": 0}})
    with pytest.raises(
        ConfigError, match=r"corruption\.sigma_range.*0 <= low <= high \(got \(50\.0, 10\.0\)\)"
    ):
        parse_recipe({**_base(), "corruption": {"sigma_range": [50, 10]}})


def test_colour_data_with_a_gray_architecture_is_refused():
    with pytest.raises(ConfigError, match="channels is 1 but data.color=True"):
        parse_recipe({**_base(), "data": {"color": True}})


def test_missing_recipe_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="recipe not found: .*nope.yaml"):
        load_recipe(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_bundled_recipe_validates_and_points_at_training_data_only(path):
    recipe = load_recipe(path)
    assert recipe.data.train, "a recipe must name its training data"
    for p in recipe.data.train:  # stages/ sit one folder deeper: their relative paths too
        assert p.replace("\\", "/").endswith(("train/gray400", "train/color432")), p
        shared_data = (RECIPE_DIR.parents[1].parent / "shared" / "data").resolve()  # a link, maybe
        assert Path(p).parent.parent == shared_data, p
    if recipe.init_from and recipe.init_from.endswith(".keras"):
        # a previous stage's run folder, or a bundled model file (color starts from gray)
        runs = (RECIPE_DIR.parents[1] / "runs").resolve()
        bundled = (RECIPE_DIR.parent / "pretrained").resolve()
        base = Path(recipe.init_from)
        assert base.parent.parent == runs or (
            base.parent == bundled and base.is_file()
        ), recipe.init_from
    for p in recipe.data.train + recipe.data.val:
        assert "/eval" not in p.replace("\\", "/"), f"{path.name} trains or validates on eval/: {p}"


def test_fluorescence_ranges_must_be_positive_and_ordered():
    bad_gamma = {**_base(), "data": {"fluorescence": {"prob": 0.5, "gamma_range": [0, 2]}}}
    with pytest.raises(ConfigError, match=r"data\.fluorescence\.gamma_range.*0 < low <= high"):
        parse_recipe(bad_gamma)
    bad_psf = {**_base(), "data": {"fluorescence": {"psf_sigma_range": [2.0, 1.0]}}}
    with pytest.raises(ConfigError, match=r"data\.fluorescence\.psf_sigma_range"):
        parse_recipe(bad_psf)
    with pytest.raises(ConfigError, match=r"data\.fluorescence\.prob"):
        parse_recipe({**_base(), "data": {"fluorescence": {"prob": 1.5}}})


def test_validation_photons_must_be_positive():
    with pytest.raises(ConfigError, match=r"training\.val_photons.*> 0"):
        parse_recipe({**_base(), "training": {"val_photons": [10, 0]}})


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("training", {"val_sigmas": []}, r"training: .*at least one of val_sigmas or val_photons"),
        ("training", {"val_sigmas": [-5]}, r"training\.val_sigmas: .*>= 0"),
        ("training", {"seed": -1}, r"training\.seed: .*greater than or equal to 0"),
        ("data", {"split_seed": -1}, r"data\.split_seed: .*greater than or equal to 0"),
        (
            "corruption",
            {"poisson_gaussian_prob": 0.5, "photons_range": [0, 10]},
            r"corruption: .*photons_range must start above 0",
        ),
    ],
)
def test_settings_that_would_fail_mid_run_or_keep_the_untrained_model_are_refused(
    section, values, message
):
    with pytest.raises(ConfigError, match=message):
        parse_recipe({**_base(), section: values})


def test_card_validation_text_lists_sigmas_then_photon_levels_in_order():
    from src_models.config import ModelCard

    card = ModelCard(name="m", val_psnr={"50": 23.5, "30ph": 31.25, "15": 29.0, "3ph": 24.0})
    assert card.validation_text() == (
        "σ=15: 29.00 dB, σ=50: 23.50 dB; Poisson noise at 3 photons at full scale: 24.00 dB, "
        "30 photons at full scale: 31.25 dB"
    )
    assert ModelCard(name="m", val_psnr={"15": 29.0}).validation_text() == "σ=15: 29.00 dB"
    # a noisy-only fine-tuning run scores on its own held-out pairs, named by the method
    assert ModelCard(name="m", val_psnr={"r2r": 31.5}).validation_text() == "r2r: 31.50 dB"
