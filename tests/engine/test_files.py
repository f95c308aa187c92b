"""Image files: channel axes from TIFF axes letters, writes that never leave half a file."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from src_models.files import ImageFile, open_lazy, read_image_file, write_image_file


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
