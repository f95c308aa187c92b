"""TensorFlow SavedModel and TFLite files from a Keras denoiser.

Why separate files for deployment: a SavedModel or a ``.tflite`` file runs
without this package, its custom layers or Keras (TF Serving, TF Java, the
TFLite runtimes on phones and microcontrollers, bioimage.io consumers). Both
hold plain graphs: the bias-free layers lower to builtin ops only (ScaleNorm at
inference is one multiplication, pixel (un)shuffle a reshape and a transpose),
so no Flex delegate is ever needed.

SavedModel endpoints (``m = tf.saved_model.load(path)``):

* ``m.serve(noisy)`` and the ``serving_default`` signature: float32
  ``[N, H, W, C]`` in any intensity scale -> ``{"denoised": float32}``, exactly
  the Keras model. H and W must be multiples of the card's ``size_multiple``.
* ``m(images)`` and the ``serve_uint8`` signature: uint8 ``[N, H, W, C]`` ->
  uint8 (rounded, clipped to 0-255), like the original bfcnn models. Any H, W
  (more than ``size_multiple`` pixels): the image is reflect-padded to the next
  multiple and the result cropped back.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # keras and TensorFlow load only when an export runs
    import keras

__all__ = [
    "ExportError",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "TFLiteRunner",
    "dynamic_upsampling",
    "exact_float32",
    "load_tflite",
    "require_tensorflow",
    "run_saved_model",
    "tflite_op_names",
    "write_saved_model",
    "write_tflite",
]

INPUT_NAME = "noisy"
OUTPUT_NAME = "denoised"


class ExportError(RuntimeError):
    """An export failed or its file does not reproduce the Keras model; the message says why."""


def require_tensorflow() -> None:
    """Raise :class:`ExportError` unless Keras runs on TensorFlow, whose graphs the files hold."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ExportError(
            f"export needs Keras on TensorFlow (KERAS_BACKEND=tensorflow); "
            f"this process runs {keras.backend.backend()!r}"
        )


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Run float32 convolutions in full float32 inside, not TF32 as recent GPUs do by default.

    Why: exports are checked against the Keras model to 1e-4, and a TFLite file
    always computes in float32 on the CPU; TF32 keeps 10 mantissa bits.
    """
    import tensorflow as tf

    was = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(was)


@contextlib.contextmanager
def dynamic_upsampling(model: keras.Model) -> Iterator[None]:
    """Let bilinear ``UpSampling2D`` layers trace with unknown height and width.

    Why: Keras checks ``size > 0`` in Python before resizing, which fails on the
    symbolic sizes of a graph with free H and W. Inside this context those layers
    call ``tf.image.resize`` directly, the op Keras itself runs on TensorFlow, so
    the numbers are unchanged (the multiscale architecture needs it).
    """
    import keras
    import tensorflow as tf

    def resize(x, height_factor, width_factor, data_format, interpolation="nearest"):
        size = tf.shape(x)[1:3] * tf.constant([height_factor, width_factor])
        return tf.image.resize(x, size, method=interpolation)

    patched = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if (
            isinstance(layer, keras.layers.UpSampling2D)
            and layer.interpolation != "nearest"
            and layer.data_format == "channels_last"
        ):
            layer._resize_images = resize
            patched.append(layer)
    try:
        yield
    finally:
        for layer in patched:
            del layer._resize_images


def _serving_module(model: keras.Model, channels: int, multiple: int):
    """A ``tf.Module`` with the float (``serve``) and uint8 (``__call__``) endpoints."""
    import tensorflow as tf

    float_spec = tf.TensorSpec([None, None, None, channels], tf.float32, name=INPUT_NAME)
    uint8_spec = tf.TensorSpec([None, None, None, channels], tf.uint8, name=INPUT_NAME)

    class Serving(tf.Module):
        def __init__(self):
            super().__init__(name="bfcnn_serving")
            self.model = model

        @tf.function(input_signature=[float_spec])
        def serve(self, noisy):
            shape = tf.shape(noisy)
            checks = [
                tf.debugging.assert_equal(
                    shape[i] % multiple,
                    0,
                    message=f"height and width must be multiples of {multiple}",
                )
                for i in (1, 2)
            ]
            with tf.control_dependencies(checks):
                return {OUTPUT_NAME: self.model(noisy, training=False)}

        @tf.function(input_signature=[uint8_spec])
        def __call__(self, images):
            x = tf.cast(images, tf.float32)
            h, w = tf.shape(x)[1], tf.shape(x)[2]
            pad_h, pad_w = (-h) % multiple, (-w) % multiple
            x = tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], mode="REFLECT")
            y = self.model(x, training=False)[:, :h, :w, :]
            return tf.cast(tf.clip_by_value(tf.round(y), 0.0, 255.0), tf.uint8)

        @tf.function(input_signature=[uint8_spec])
        def serve_uint8(self, noisy):
            return {OUTPUT_NAME: self.__call__(noisy)}

    return Serving()


def write_saved_model(model: keras.Model, path: str | Path, channels: int, multiple: int) -> Path:
    """Write a SavedModel folder with the float and uint8 endpoints (see the module docstring)."""
    import tensorflow as tf

    require_tensorflow()
    path = Path(path)
    module = _serving_module(model, channels, multiple)
    with dynamic_upsampling(model):
        signatures = {
            "serving_default": module.serve.get_concrete_function(),
            "serve_uint8": module.serve_uint8.get_concrete_function(),
        }
        module.__call__.get_concrete_function()
        tf.saved_model.save(module, str(path), signatures=signatures)
    return path


def run_saved_model(path: str | Path, x: np.ndarray) -> np.ndarray:
    """Reload a SavedModel and run its float endpoint (uint8 input: the uint8 endpoint)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    if x.dtype == np.uint8:
        return loaded(tf.constant(x)).numpy()
    return loaded.serve(tf.constant(x, dtype=tf.float32))[OUTPUT_NAME].numpy()


def _tflite_function(model: keras.Model, channels: int, size: int | None):
    """The model as a frozen concrete function (variables as constants, as TFLite needs)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    shape = [None, None, None, channels] if size is None else [1, size, size, channels]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name=INPUT_NAME)])
    def denoise(noisy):
        return {OUTPUT_NAME: model(noisy, training=False)}

    with dynamic_upsampling(model):
        return convert_variables_to_constants_v2(denoise.get_concrete_function())


def write_tflite(
    model: keras.Model, path: str | Path, channels: int, size: int | None = None
) -> Path:
    """Write a float32 ``.tflite`` file that uses TFLite builtin ops only.

    Parameters
    ----------
    model : keras.Model
    path : str or Path
    channels : int
    size : int, optional
        Fixed square input ``[1, size, size, C]``; None (default) leaves batch,
        height and width free: call ``resize_tensor_input`` before
        ``allocate_tensors``.
    """
    import tensorflow as tf

    require_tensorflow()
    fn = _tflite_function(model, channels, size)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        with _quiet_tf():
            flat = converter.convert()
    except Exception as err:  # the converter raises ConverterError and others, all with a reason
        raise ExportError(f"TFLite conversion with builtin ops only failed: {err}") from None
    path = Path(path)
    path.write_bytes(flat)
    return path


@contextlib.contextmanager
def _quiet_tf() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _litert():
    """The module with ``Interpreter`` and ``OpResolverType``: LiteRT where installed, else TF's."""
    try:  # the maintained runtime; tf.lite's interpreter is deprecated but still works
        from ai_edge_litert import interpreter as module
    except ImportError:
        from tensorflow.lite.python import interpreter as module
    return module


class TFLiteRunner:
    """Run a ``.tflite`` denoiser on numpy arrays, resizing its input as needed.

    Why a class: the interpreter is built once; each new input shape costs a
    ``resize_tensor_input`` + ``allocate_tensors``, as in any TFLite runtime.
    """

    def __init__(self, path: str | Path):
        with _quiet_tf():
            self.interpreter = _litert().Interpreter(model_path=str(path))
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._shape: tuple[int, ...] | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape != self._shape:
            if tuple(self._input["shape_signature"]) != x.shape:
                self.interpreter.resize_tensor_input(self._input["index"], x.shape, strict=True)
            self.interpreter.allocate_tensors()
            self._shape = x.shape
        self.interpreter.set_tensor(self._input["index"], x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output["index"]).copy()


def load_tflite(path: str | Path) -> TFLiteRunner:
    """A :class:`TFLiteRunner` for a ``.tflite`` file."""
    return TFLiteRunner(path)


def tflite_op_names(path: str | Path) -> set[str]:
    """Names of the ops in a ``.tflite`` graph (``CONV_2D``, ...; ``Flex...`` would mean TF ops).

    Read without delegates, which would hide the ops they take over.
    """
    litert = _litert()
    with _quiet_tf():
        interpreter = litert.Interpreter(
            model_path=str(path),
            experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    return {d["op_name"] for d in interpreter._get_ops_details()}
