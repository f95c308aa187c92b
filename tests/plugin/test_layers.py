"""Layer <-> array rules and plane planning, without a viewer."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Labels, Points

from napari_bfcnn._layers import (
    LayerError,
    find_output,
    guess_channel_axis,
    output_kwargs,
    output_name,
    read_array,
    read_layer,
)
from napari_bfcnn._planes import iter_denoise, output_dtype, plan_planes, run_to_end


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((64, 64), None),
        ((3, 64, 64), 0),
        ((64, 64, 2), 2),
        ((10, 64, 64), None),
        ((5, 2, 64, 64), None),
        ((5, 64, 64, 4), 3),
    ],
)
def test_guess_channel_axis_picks_small_first_or_last_axis(shape, expected):
    assert guess_channel_axis(shape) == expected


def test_axis_labels_tell_a_three_slice_stack_from_three_channels():
    assert guess_channel_axis((3, 64, 64), ("z", "y", "x")) is None
    assert guess_channel_axis((3, 64, 64), ("T", "Y", "X")) is None
    assert guess_channel_axis((3, 64, 64), ("-3", "-2", "-1")) == 0  # napari's defaults: size
    assert guess_channel_axis((5, 2, 64, 64), ("z", "c", "y", "x")) == 1  # named, any position
    assert guess_channel_axis((5, 64, 64), ("t", "y")) is None  # labels that do not fit: size


def test_rgba_layer_reads_channels_last_with_alpha():
    layer = Image(np.zeros((16, 16, 4), np.uint8), rgb=True)
    inp = read_layer(layer)
    assert (inp.channel_axis, inp.rgb, inp.alpha, inp.channels) == (2, True, True, 3)


def test_channel_axis_is_normalised_and_stacks_are_detected():
    inp = read_layer(Image(np.zeros((2, 5, 16, 16), np.float32)), channel_axis=-4)
    assert inp.channel_axis == 0
    assert inp.loop_axes == (1,)
    assert inp.is_stack


@pytest.mark.parametrize(
    ("layer", "words"),
    [
        (Labels(np.zeros((16, 16), np.int32)), "Labels layer"),
        (Points(np.zeros((3, 2))), "Points layer"),
        (Image(np.zeros((1, 1), np.float32)), "1x1"),
        (Image(np.zeros((16, 16), bool)), "boolean"),
        (Image(np.full((16, 16), np.nan, np.float32)), "no finite pixel"),
        (Image(np.zeros((2, 2, 2, 8, 8), np.float32)), "choose a channel axis"),
    ],
)
def test_bad_layers_raise_layer_error_naming_the_problem(layer, words):
    with pytest.raises(LayerError, match=words):
        read_layer(layer)


def test_finite_check_finds_the_one_finite_pixel_of_a_big_stack_block_by_block():
    from napari_bfcnn._layers import _has_finite

    stack = np.full((3, 40, 50), np.nan, np.float32)
    assert not _has_finite(stack, chunk=100)
    stack[2, 39, 49] = 1.0  # the very last pixel, found through nested blocks
    assert _has_finite(stack, chunk=100)
    assert _has_finite(stack)  # one block
    stack[2, 39, 49] = np.inf
    assert not _has_finite(stack, chunk=100)


def test_out_of_range_channel_axis_is_named():
    with pytest.raises(LayerError, match="channel_axis=5 is out of range for an image with 3"):
        read_array(np.zeros((2, 16, 16)), channel_axis=5)


def test_plan_fixed_axis_gives_one_plane_of_size_one():
    plan = plan_planes((5, 2, 16, 16), channel_axis=1, joint=True, fixed={0: 3})
    assert plan.out_shape == (1, 2, 16, 16)
    assert len(plan.planes) == 1
    src, dst = plan.planes[0]
    assert src[0] == 3 and dst[0] == 0
    assert plan.plane_channel_axis == 0


def test_plan_rgba_keeps_alpha_out_of_the_planes():
    plan = plan_planes((16, 16, 4), channel_axis=-1, joint=True, alpha=True)
    assert plan.planes[0][0][2] == slice(0, 3)
    assert plan.noise_shape == (16, 16, 3)


def test_output_dtype_keeps_integers_and_makes_floats_float32():
    assert output_dtype(np.uint16) == np.uint16
    assert output_dtype(np.float64) == np.float32


class _Halve:
    """Stand-in denoiser: halves the image in two progress steps."""

    channels = 1
    name = "halve"

    def denoise_iter(
        self, array, *, channel_axis=None, tile=None, offset=None, tta=1, strength=1.0
    ):
        from src_models import Progress

        yield Progress(0, 2)
        yield Progress(2, 2)
        yield (np.asarray(array, np.float32) / 2).astype(
            array.dtype if array.dtype.kind in "iu" else np.float32
        )


def test_a_result_larger_than_free_memory_is_refused_before_any_work(monkeypatch):
    import psutil

    from napari_bfcnn._planes import ResultTooLarge, check_memory
    from napari_bfcnn._workers import DenoiseJob, denoise_job

    class Free:
        available = 2**30  # 1 GiB free

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Free())
    small = plan_planes((4, 256, 256), channel_axis=None, joint=False)
    check_memory(small, np.float32, with_noise=True)  # 2 MiB: fine
    big = plan_planes((300, 1024, 1024), channel_axis=None, joint=False)
    with pytest.raises(ResultTooLarge, match="would take 1.2 GiB and 1.0 GiB of memory are free"):
        check_memory(big, np.uint32)
    data = np.broadcast_to(np.float32(1.0), (300, 1024, 1024))  # no memory of its own
    job = DenoiseJob(inp=read_array(data, name="huge"), model="tiny-gray")
    gen = denoise_job(job)
    with pytest.raises(StopIteration) as stop:
        while True:
            next(gen)
    outcome = stop.value.value
    assert outcome.error.startswith("not enough memory: the result would take 1.2 GiB")
    assert "command line" in outcome.error


def test_iter_denoise_restores_nan_pixels_and_skips_all_nan_planes():
    data = np.ones((3, 8, 8), np.float32) * 4
    data[0, 2, 3] = np.nan
    data[2] = np.nan
    result = run_to_end(iter_denoise(_Halve(), data, plan_planes(data.shape), with_noise=True))
    assert np.isnan(result.denoised[0, 2, 3])
    assert result.denoised[0, 0, 0] == 2 and result.denoised[1, 5, 5] == 2
    assert np.isnan(result.denoised[2]).all()
    assert len(result.skipped) == 1
    assert result.noise[1, 0, 0] == 2


def test_iter_denoise_yields_increasing_fractions_ending_at_one():
    data = np.ones((4, 8, 8), np.float32)
    gen = iter_denoise(_Halve(), data, plan_planes(data.shape))
    fractions = []
    while True:
        try:
            fractions.append(next(gen))
        except StopIteration:
            break
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0


def test_output_kwargs_copy_spatial_properties_and_record_provenance():
    src = Image(
        np.zeros((4, 16, 16), np.float32),
        name="src",
        scale=(3, 2, 2),
        translate=(1, 5, 7),
        metadata={"who": "me"},
        colormap="magma",
        contrast_limits=(0, 10),
        blending="additive",
        axis_labels=("z", "y", "x"),
        units=("um", "um", "um"),
    )
    kw = output_kwargs(src, np.zeros((1, 16, 16), np.float32), "gray", fixed={0: 2})
    assert kw["name"] == output_name("src", "gray") == "src [denoised: gray]"
    assert kw["scale"] == (3, 2, 2)
    assert kw["translate"] == (7, 5, 7)  # slice 2 at z-scale 3 plus translate 1
    assert kw["metadata"]["who"] == "me"
    assert kw["metadata"]["bfcnn"] == {
        "source": "src",
        "source_id": str(src.unique_id),  # follows renames of the source
        "model": "gray",
        "kind": "denoised",
        "planes": "current",
    }
    assert kw["colormap"].name == "magma"
    assert kw["contrast_limits"] == (0, 10)
    assert kw["blending"] == "additive"
    assert kw["axis_labels"] == ("z", "y", "x")
    out = Image(np.zeros((1, 16, 16), np.float32), **kw)
    assert find_output([src, out], "src", "gray") is out
    assert find_output([src, out], "src", "other") is None


def test_find_output_never_takes_the_source_or_another_layers_result():
    """A deleted source's name reused (even by its own renamed output) is another source."""
    old_src = Image(np.zeros((16, 16), np.float32), name="cells")
    kw = output_kwargs(old_src, np.ones((16, 16), np.float32), "gray")
    out = Image(np.ones((16, 16), np.float32), **kw)
    assert find_output([old_src, out], old_src, "gray") is out
    out.name = "cells"  # the source deleted, its output renamed to its name
    assert find_output([out], out, "gray") is None  # not the input itself
    new_src = Image(np.zeros((16, 16), np.float32), name="cells")
    assert find_output([new_src, out], new_src, "gray") is None  # not another layer's result
    assert find_output([new_src, out], "cells", "gray") is out  # by name alone: the old rule
    legacy = Image(np.ones((16, 16), np.float32), **kw)
    legacy.metadata = {"bfcnn": {"source": "cells", "model": "gray", "kind": "denoised"}}
    assert find_output([new_src, legacy], new_src, "gray") is legacy  # no id recorded
