"""Image files: channel axes from TIFF axes letters, writes that never leave half a file."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from src_models.files import (
    ImageFile,
    LazyImage,
    open_lazy,
    read_image_file,
    split_name,
    tiff_nbytes,
    write_image_file,
    write_zarr_lazy,
)


@pytest.mark.parametrize(
    ("shape", "kwargs", "axes", "channel_axis"),
    [
        ((5, 24, 24, 3), {}, "QYXS", 3),  # an RGB stack without axes metadata: Q first
        ((5, 3, 24, 24), {"photometric": "rgb", "planarconfig": "separate"}, "QSYX", 1),
        ((5, 24, 24), {}, "QYX", None),
        ((2, 3, 24, 24), {"imagej": True, "metadata": {"axes": "ZCYX"}}, "ZCYX", 1),
    ],
)
def test_channel_axis_comes_from_the_axes_letter_of_the_data_dimension(
    tmp_path, shape, kwargs, axes, channel_axis
):
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, np.zeros(shape, np.uint8), **kwargs)
    image = read_image_file(path)
    assert image.axes == axes and image.data.shape == shape
    assert image.channel_axis == channel_axis
    assert open_lazy(path).channel_axis == channel_axis


def test_a_failed_write_leaves_the_earlier_file_whole_and_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, np.full((8, 8), 7, np.uint8))
    before = path.read_bytes()

    def fail(target, data, **_kwargs):
        with open(target, "wb") as f:
            f.write(b"half a tiff")
        raise OSError("No space left on device")

    like, ones = ImageFile(np.zeros((8, 8), np.uint8), None), np.ones((8, 8), np.uint8)
    monkeypatch.setattr(tifffile, "imwrite", fail)
    with pytest.raises(OSError, match="No space"):
        write_image_file(path, like, ones)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tif"]
    monkeypatch.undo()
    assert write_image_file(path, like, ones) == path
    assert np.array_equal(tifffile.imread(path), ones)


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("s.ome.tif", ("s", ".ome.tif")),
        ("s.OME.TIFF", ("s", ".OME.TIFF")),
        ("plate.ome.zarr", ("plate", ".ome.zarr")),
        ("a.b.tif", ("a.b", ".tif")),
        ("p.jpg", ("p", ".jpg")),
        (".ome.tif", (".ome", ".tif")),  # nothing before the OME extension: a plain split
    ],
)
def test_split_name_keeps_the_ome_extension_whole(name, parts):
    assert split_name(name) == parts


def test_a_tiff_of_several_series_is_refused_naming_the_count(tmp_path):
    path = tmp_path / "frames.tif"
    with tifffile.TiffWriter(path) as tif:
        for i in range(3):  # one write per frame: tifffile reads three series
            tif.write(np.full((8, 8), i, np.uint8))
    for read in (read_image_file, open_lazy, tiff_nbytes):
        with pytest.raises(ValueError, match=r"frames.tif: holds 3 image series.*split it"):
            read(path)


def test_ome_tiff_channel_names_are_written_back(tmp_path):
    src = tmp_path / "s.ome.tif"
    names = ["DAPI", "GFP", "RFP"]
    tifffile.imwrite(src, np.zeros((2, 3, 8, 8), np.uint16), ome=True,
                     metadata={"axes": "ZCYX", "PhysicalSizeX": 0.5, "Channel": {"Name": names}})
    image = read_image_file(src)
    write_image_file(tmp_path / "out.ome.tif", image, image.data + 1)
    with tifffile.TiffFile(tmp_path / "out.ome.tif") as tif:
        xml = tif.ome_metadata
        assert tif.series[0].axes == "ZCYX"
    assert [f'Name="{n}"' in xml for n in names] == [True] * 3
    assert 'PhysicalSizeX="0.5"' in xml


def test_relative_zarr_paths_still_work_from_another_working_directory(tmp_path, monkeypatch):
    """dask workers may run elsewhere: a relative store path would read fill values (zeros)."""
    zarr = pytest.importorskip("zarr", minversion="3")
    img = np.arange(1, 97, dtype=np.uint16).reshape(8, 12)
    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    zarr.open_array("in.zarr", mode="w", shape=img.shape, chunks=(4, 4), dtype=img.dtype)[:] = img
    image = open_lazy("in.zarr")
    write = write_zarr_lazy("out.zarr", LazyImage(image.data, None, "zarr"), image.data * 2)

    monkeypatch.chdir(tmp_path / "elsewhere")  # where a worker might be
    np.testing.assert_array_equal(image.data.compute(), img)
    write.compute()
    assert list((tmp_path / "elsewhere").iterdir()) == []
    written = zarr.open_array(str(tmp_path / "work" / "out.zarr"), mode="r")[:]
    np.testing.assert_array_equal(written, img * 2)


@pytest.mark.parametrize(
    ("data", "kwargs", "axes"),
    [
        (np.arange(30 * 20 * 2, dtype=np.uint16).reshape(30, 20, 2),
         {"photometric": "minisblack", "planarconfig": "contig", "extrasamples": ["unspecified"]},
         "YXS"),  # gray + alpha: one page, not one page per row
        (np.arange(30 * 20 * 5, dtype=np.uint16).reshape(30, 20, 5),
         {"photometric": "minisblack", "planarconfig": "contig",
          "extrasamples": ["unspecified"] * 4},
         "YXS"),  # five samples likewise
        (np.arange(3 * 30 * 20, dtype=np.uint8).reshape(3, 30, 20),
         {"photometric": "rgb", "planarconfig": "separate"}, "SYX"),  # planar RGB stays planar
        (np.arange(30 * 20 * 3, dtype=np.uint8).reshape(30, 20, 3), {"photometric": "rgb"}, "YXS"),
    ],
)
def test_tiff_samples_are_written_in_the_sources_layout_in_memory_and_band_by_band(
    tmp_path, data, kwargs, axes
):
    import dask.array as da

    from src_models.files import write_tiff_lazy

    src = tmp_path / "in.tif"
    tifffile.imwrite(src, data, **kwargs)
    image = read_image_file(src)
    assert image.axes == axes
    lazy = open_lazy(src)
    for name, write in (
        ("mem.tif", lambda p: write_image_file(p, image, image.data)),
        ("lazy.tif", lambda p: write_tiff_lazy(p, lazy, da.from_array(data, chunks=16))),
    ):
        write(tmp_path / name)
        with tifffile.TiffFile(tmp_path / name) as tif:
            assert len(tif.pages) == 1 and tif.series[0].axes == axes, name
            np.testing.assert_array_equal(tif.asarray(), data)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_an_ome_zarr_source_gives_a_one_level_ome_zarr_result(tmp_path, zarr_format):
    img = np.arange(24 * 20, dtype=np.uint16).reshape(24, 20)
    scales = [
        {
            "version": "0.4",
            "axes": [{"name": "y", "type": "space", "unit": "micrometer"},
                     {"name": "x", "type": "space", "unit": "micrometer"}],
            "datasets": [
                {"path": f"s{k}", "coordinateTransformations": [{"type": "scale", "scale": [s, s]}]}
                for k, s in enumerate([0.5, 1.0])
            ],
        }
    ]
    attrs = {"multiscales": scales} if zarr_format == 2 else {"ome": {"multiscales": scales}}
    group = zarr.open_group(str(tmp_path / "in.ome.zarr"), mode="w", zarr_format=zarr_format)
    group.attrs.update({**attrs, "omero": {"channels": [{"label": "GFP"}]}})
    layout = (
        {"chunk_key_encoding": {"name": "v2", "separator": "/"}}  # as OME-Zarr 0.4 requires
        if zarr_format == 2
        else {"dimension_names": ["y", "x"]}  # as 0.5 requires
    )
    group.create_array("s0", shape=img.shape, chunks=(8, 8), dtype=img.dtype, **layout)[:] = img
    group.create_array("s1", shape=(12, 10), chunks=(8, 8), dtype=img.dtype)[:] = img[::2, ::2]

    image = open_lazy(tmp_path / "in.ome.zarr")
    write_zarr_lazy(tmp_path / "out.ome.zarr", image, image.data * 2).compute()
    out = zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="r")
    meta = out.attrs["multiscales"] if zarr_format == 2 else out.attrs["ome"]["multiscales"]
    assert meta[0]["axes"] == scales[0]["axes"] and meta[0]["datasets"] == scales[0]["datasets"][:1]
    assert out.attrs["omero"] == {"channels": [{"label": "GFP"}]}
    assert [name for name, _ in out.arrays()] == ["s0"] and out["s0"].chunks == (8, 8)
    if zarr_format == 2:
        assert out["s0"].metadata.dimension_separator == "/"
        assert (tmp_path / "out.ome.zarr" / "s0" / "0" / "0").is_file()  # "/" chunk keys
    else:
        assert out["s0"].metadata.dimension_names == ("y", "x")
    np.testing.assert_array_equal(open_lazy(tmp_path / "out.ome.zarr").data.compute(), img * 2)


def test_a_cmyk_jpeg_is_read_as_rgb(tmp_path):
    from PIL import Image

    Image.new("CMYK", (16, 12), (0, 255, 255, 0)).save(tmp_path / "red.jpg", quality=100)
    image = read_image_file(tmp_path / "red.jpg")
    assert image.data.shape == (12, 16, 3) and image.channel_axis == 2  # not RGBA
    np.testing.assert_allclose(image.data.mean(axis=(0, 1)), [255, 0, 0], atol=5)
