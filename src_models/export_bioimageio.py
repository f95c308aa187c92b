"""A bioimage.io model package (zip) from a Keras denoiser, validated offline.

Why bioimage.io: ilastik, deepImageJ, QuPath, bioimageio.core and the
bioimage.io website run a model from one zip with a ``rdf.yaml`` that says what
goes in and out. The package holds the TensorFlow SavedModel
(``tensorflow_saved_model_bundle`` weights, so consumers need neither this
package nor its custom layers), test input and output ``.npy`` files, a cover
(noisy | denoised) and the model card as documentation.

Validation never downloads: the description holds no URL (the paper is cited by
DOI, which is only pattern-checked) and every file it names lies inside the zip,
so ``bioimageio.spec`` checks hashes, test tensors and shapes from local files.
"""

from __future__ import annotations

import math
import shutil
import string
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ModelCard
from .export_tf import INPUT_NAME, OUTPUT_NAME, ExportError

__all__ = [
    "PackageInfo",
    "halo_and_min_size",
    "package_name",
    "run_package",
    "validate_package",
    "write_bioimageio",
]

BFCNN_DOI = "10.48550/arXiv.1906.05478"
BFCNN_CITATION = (
    "Mohan, Kadkhodaie, Simoncelli & Fernandez-Granda: Robust and interpretable blind image "
    "denoising via bias-free convolutional neural networks. ICLR 2020."
)
CHANNEL_NAMES = {1: ["gray"], 3: ["red", "green", "blue"]}


@dataclass(frozen=True)
class PackageInfo:
    """Who made the model and under which terms; written into the package's ``rdf.yaml``."""

    authors: tuple[str, ...] = ("napari-bfcnn developers",)
    license: str = "MIT"
    tags: tuple[str, ...] = ("denoising", "bias-free", "napari-bfcnn", "2d", "tensorflow")

    def check(self) -> None:
        """Raise ValueError for a license that is no SPDX id or an author bioimage.io refuses.

        Why before exporting: these are typos, and should cost no minutes of work.
        """
        from bioimageio.spec.model import v0_5 as spec
        from pydantic import ValidationError

        try:
            spec.LicenseId(self.license)
        except ValidationError:
            raise ValueError(
                f"license {self.license!r} is not an SPDX license id (e.g. MIT, CC-BY-4.0)"
            ) from None
        if not self.authors:
            raise ValueError("a bioimage.io package needs at least one author")
        for name in self.authors:
            try:
                spec.Author(name=name)
            except ValidationError:
                raise ValueError(f"author {name!r} is not a valid name (no '/')") from None


def halo_and_min_size(card: ModelCard) -> tuple[int, int]:
    """Output halo and smallest input side for the package's axes.

    Why: the halo is what tiled consumers crop from each tile, so it covers the
    receptive field; it is rounded up to the size multiple so that a valid tile
    plus its halo padding is valid too. The spec requires a minimum side larger
    than twice the halo.
    """
    m = card.size_multiple
    halo = math.ceil(card.receptive_field / m) * m
    min_size = (2 * halo // m + 1) * m
    return halo, min_size


def package_name(name: str) -> str:
    """The model's name as bioimage.io allows it: 5-64 of letters, digits, ``_+- ()``."""
    allowed = set(string.ascii_letters + string.digits + "_+- ()")
    clean = "".join(c if c in allowed else "-" for c in name)
    return f"BF-CNN {clean}"[:64]


def _channel_names(channels: int) -> list[str]:
    return CHANNEL_NAMES.get(channels, [f"channel{i}" for i in range(channels)])


def _rdf(
    card: ModelCard,
    name: str,
    files: dict[str, Path],
    info: PackageInfo,
    tf_version: str,
):
    """The bioimage.io model description (format 0.5) of an exported denoiser."""
    from bioimageio.spec.model import v0_5 as spec

    halo, min_size = halo_and_min_size(card)
    step = card.size_multiple
    names = _channel_names(card.channels)
    in_axes = [
        spec.BatchAxis(),
        *(
            spec.SpaceInputAxis(
                id=spec.AxisId(a), size=spec.ParameterizedSize(min=min_size, step=step)
            )
            for a in ("y", "x")
        ),
        spec.ChannelAxis(channel_names=[spec.Identifier(n) for n in names]),
    ]
    tid = spec.TensorId(INPUT_NAME)
    out_space = [
        spec.SpaceOutputAxisWithHalo(
            id=spec.AxisId(a),
            size=spec.SizeReference(tensor_id=tid, axis_id=spec.AxisId(a)),
            halo=halo,
        )
        if halo
        else spec.SpaceOutputAxis(
            id=spec.AxisId(a), size=spec.SizeReference(tensor_id=tid, axis_id=spec.AxisId(a))
        )
        for a in ("y", "x")
    ]
    out_axes = [
        spec.BatchAxis(),
        *out_space,
        spec.ChannelAxis(channel_names=[spec.Identifier(n) for n in names]),
    ]
    inputs = [
        spec.InputTensorDescr(
            id=tid,
            # bioimage.io allows 128 characters; the README.md of the package says more
            description="noisy image, float32, any scale (D(a*y) = a*D(y)); subtract a "
            "camera's black level first, add it back after",
            axes=in_axes,
            test_tensor=spec.FileDescr(source=files["test_input"]),
            sample_tensor=spec.FileDescr(source=files["sample_input"]),
        )
    ]
    outputs = [
        spec.OutputTensorDescr(
            id=spec.TensorId(OUTPUT_NAME),
            description="denoised image in the input's units",
            axes=out_axes,
            test_tensor=spec.FileDescr(source=files["test_output"]),
            sample_tensor=spec.FileDescr(source=files["sample_output"]),
        )
    ]
    weights = spec.WeightsDescr(
        tensorflow_saved_model_bundle=spec.TensorflowSavedModelBundleWeightsDescr(
            source=files["weights"],
            tensorflow_version=spec.Version(tf_version),
            comment="exported from the Keras 3 model by napari-bfcnn; endpoints 'serve' "
            "(float32) and 'serve_uint8' (uint8 images, rounded and clipped)",
        )
    )
    return spec.ModelDescr(
        name=package_name(name),
        description=(card.description or f"bias-free {card.kind} denoiser")[:1024],
        authors=[spec.Author(name=a) for a in info.authors],
        cite=[spec.CiteEntry(text=BFCNN_CITATION, doi=spec.Doi(BFCNN_DOI))],
        license=spec.LicenseId(info.license),
        documentation=spec.FileDescr(source=files["documentation"]),
        covers=[spec.FileDescr(source=files["cover"])],
        tags=list(info.tags),
        inputs=inputs,
        outputs=outputs,
        weights=weights,
    )


def _zip_folder(folder: Path, target: Path) -> Path:
    """Zip a folder's contents (not the folder itself) into ``target``."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return target


def write_bioimageio(
    card: ModelCard,
    name: str,
    saved_model: Path,
    path: str | Path,
    test_input: np.ndarray,
    test_output: np.ndarray,
    cover: np.ndarray,
    documentation: str,
    info: PackageInfo | None = None,
) -> Path:
    """Write the package zip to ``path`` and validate it offline.

    Parameters
    ----------
    card : ModelCard
    name : str
        Model name shown by consumers.
    saved_model : Path
        A SavedModel folder from :func:`export_tf.write_saved_model`.
    path : str or Path
        Target ``.zip``.
    test_input, test_output : ndarray
        ``[1, H, W, C]`` float32 input and the Keras model's output on it.
    cover : ndarray
        uint8 RGB image (noisy | denoised).
    documentation : str
        Markdown (the model card).
    info : PackageInfo, optional
        Authors, license and tags.
    """
    import imageio.v3 as iio
    import tensorflow as tf
    from bioimageio.spec import save_bioimageio_package
    from pydantic import ValidationError

    info = info or PackageInfo()
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="bfcnn-bioimageio-") as tmp:
        stage = Path(tmp)
        files = {
            "weights": _zip_folder(Path(saved_model), stage / "tf_saved_model.zip"),
            "test_input": stage / "test_input.npy",
            "test_output": stage / "test_output.npy",
            "sample_input": stage / "sample_input.tif",
            "sample_output": stage / "sample_output.tif",
            "cover": stage / "cover.png",
            "documentation": stage / "README.md",
        }
        np.save(files["test_input"], test_input.astype(np.float32))
        np.save(files["test_output"], test_output.astype(np.float32))
        iio.imwrite(files["sample_input"], test_input[0].astype(np.float32))
        iio.imwrite(files["sample_output"], test_output[0].astype(np.float32))
        iio.imwrite(files["cover"], cover)
        files["documentation"].write_text(documentation, encoding="utf-8")
        try:
            descr = _rdf(card, name, files, info, tf.__version__)
        except ValidationError as err:  # e.g. a license that is no SPDX id
            raise ExportError(f"invalid bioimage.io description: {err}") from None
        tmp_zip = stage / "package.zip"
        save_bioimageio_package(descr, output_path=tmp_zip)
        validate_package(tmp_zip)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp_zip), path)
    return path


def validate_package(path: str | Path) -> None:
    """Validate a package zip with ``bioimageio.spec`` from its local files only.

    Raises
    ------
    ExportError
        With the validator's errors (and warnings) when the package is invalid.
    """
    from bioimageio.spec import load_description

    descr = load_description(path, perform_io_checks=True)
    summary = descr.validation_summary
    if summary.status not in ("valid-format", "passed"):  # "passed": older bioimageio.spec
        details = summary.format() if hasattr(summary, "format") else str(summary)
        raise ExportError(f"bioimage.io validation failed for {path}:\n{details}")


def run_package(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Run a package's SavedModel weights on its test input: (output, stored test output).

    Why from the zip: it checks what a consumer gets, the weights as packaged.
    """
    import io

    from .export_tf import run_saved_model

    with zipfile.ZipFile(path) as zf, tempfile.TemporaryDirectory(prefix="bfcnn-pkg-") as tmp:
        test_in, test_out = (
            np.load(io.BytesIO(zf.read(n))) for n in ("test_input.npy", "test_output.npy")
        )
        weights = Path(tmp) / "weights"
        with zipfile.ZipFile(io.BytesIO(zf.read("tf_saved_model.zip"))) as wz:
            wz.extractall(weights)
        return run_saved_model(weights, test_in), test_out
