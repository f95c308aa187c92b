"""The one place with backend-specific code: compiled inference and autodiff.

Why one module: the engine runs on TensorFlow on the desktop and on JAX on the
GPU machine. Everything else calls the functions here and stays backend-free:
``compiled_predict``, ``compiled_vjp`` and ``compiled_jvp`` return callables that
take and return numpy float32 arrays, so callers never touch tensors;
``cached_autodiff``, ``vjp`` and ``jvp`` keep those compiled per model.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

__all__ = [
    "cached_autodiff",
    "compiled_jvp",
    "compiled_jvps",
    "compiled_predict",
    "compiled_vjp",
    "jvp",
    "vjp",
]

Array = np.ndarray
_MAX_TRACES = 16  # compiled window shapes kept per model


def _name() -> str:
    return keras.backend.backend()


def _numpy(x) -> Array:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float32)


def _as_input(x) -> Array:
    return np.ascontiguousarray(x, dtype=np.float32)


def compiled_predict(model: keras.Model, xla: bool = False) -> Callable[[Array], Array]:
    """Return ``f(x) -> model(x, training=False)`` compiled once for the active backend.

    Why not ``model.predict_on_batch``: it retraces for every new batch or tile
    shape and warns about it. Here TensorFlow traces one graph per window shape
    with a free batch size (kept for the last 16 shapes); JAX jits per shape.

    Parameters
    ----------
    model : keras.Model
        A model taking (N, H, W, C) float32 images.
    xla : bool
        TensorFlow only: compile the graphs with XLA (``jit_compile``), falling back
        to a plain graph for a window shape XLA cannot compile (XLA compiles again for
        every new batch size, so any call may be the one that fails). JAX always uses XLA.

    Returns
    -------
    callable
        Maps a numpy (N, H, W, C) array to the numpy float32 output.
    """
    backend = _name()
    if backend == "tensorflow":
        import tensorflow as tf

        plain = tf.function(lambda x: model(x, training=False))
        fn = tf.function(lambda x: model(x, training=False), jit_compile=True) if xla else plain
        traced: dict[tuple[int, ...], tuple[Callable, bool]] = {}  # shape -> (graph, is XLA)

        def predict(x: Array) -> Array:
            # one graph per window shape with a free batch size: tiles of one call share a
            # shape, so it traces once per call at most (fully dynamic shapes would break
            # layers such as bilinear UpSampling2D, which need static sizes in a graph)
            x = _as_input(x)
            key = tuple(x.shape[1:])
            spec = tf.TensorSpec((None, *key), tf.float32)
            entry = traced.get(key)  # one lookup: dask threads share this function
            if entry is None:
                if len(traced) >= _MAX_TRACES:
                    traced.pop(next(iter(traced)), None)
                entry = (fn.get_concrete_function(spec), fn is not plain)
                traced[key] = entry
            graph, compiled = entry
            try:
                return graph(tf.constant(x)).numpy()
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
                if not compiled:  # a plain graph's own error: the caller's to see
                    raise
            # XLA compiles on a call with a new batch size and could not: plain graph
            graph = plain.get_concrete_function(spec)
            traced[key] = (graph, False)
            return graph(tf.constant(x)).numpy()

        return predict
    if backend == "jax":
        import jax

        @jax.jit
        def _call(trainable, non_trainable, x):
            return model.stateless_call(trainable, non_trainable, x, training=False)[0]

        def predict(x: Array) -> Array:
            # weights are passed on every call so a later fine-tune is picked up
            tv = [v.value for v in model.trainable_variables]
            ntv = [v.value for v in model.non_trainable_variables]
            return _numpy(_call(tv, ntv, _as_input(x)))

        return predict
    if backend == "torch":
        import torch

        def predict(x: Array) -> Array:
            with torch.no_grad():
                return _numpy(model(_as_input(x), training=False))

        return predict
    return lambda x: _numpy(model(_as_input(x), training=False))


def _tf_concrete_per_shape(fn) -> Callable[[Array, Array], tuple[Array, Array]]:
    """Trace ``fn(x, w)`` once per window shape with a free batch size (last 16 shapes kept).

    Why not ``reduce_retracing``: after two window sizes it traces with unknown
    spatial sizes, which layers such as bilinear ``UpSampling2D`` cannot build.
    """
    import tensorflow as tf

    traced: dict[tuple[int, ...], Callable] = {}

    def call(x: Array, w: Array) -> tuple[Array, Array]:
        x, w = _as_input(x), _as_input(w)
        if x.shape != w.shape:
            raise ValueError(f"input {x.shape} and direction {w.shape} must have the same shape")
        key = tuple(x.shape[1:])
        graph = traced.get(key)
        if graph is None:
            if len(traced) >= _MAX_TRACES:
                traced.pop(next(iter(traced)))
            spec = tf.TensorSpec((None, *key), tf.float32)
            graph = tf.function(fn).get_concrete_function(spec, spec)
            traced[key] = graph
        y, g = graph(tf.constant(x), tf.constant(w))
        return y.numpy(), g.numpy()

    return call


def compiled_vjp(model: keras.Model) -> Callable[[Array, Array], tuple[Array, Array]]:
    """Return ``f(x, u) -> (D(x), J(x)^T u)``: the output and a vector-Jacobian product.

    Why: one row of the Jacobian (a pixel's adaptive filter) is ``J^T e_i``, one
    backward pass. Batched: item ``n`` of the result uses ``x[n]`` and ``u[n]``.
    """
    backend = _name()
    if backend == "tensorflow":
        import tensorflow as tf

        def fn(x, u):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = model(x, training=False)
            return y, tape.gradient(y, x, output_gradients=u)

        return _tf_concrete_per_shape(fn)
    if backend == "jax":
        import jax

        @jax.jit
        def _vjp(trainable, non_trainable, x, u):
            def f(z):
                return model.stateless_call(trainable, non_trainable, z, training=False)[0]

            y, pullback = jax.vjp(f, x)
            return y, pullback(u)[0]

        def vjp(x: Array, u: Array) -> tuple[Array, Array]:
            tv = [v.value for v in model.trainable_variables]
            ntv = [v.value for v in model.non_trainable_variables]
            y, g = _vjp(tv, ntv, _as_input(x), _as_input(u))
            return _numpy(y), _numpy(g)

        return vjp
    raise NotImplementedError(
        f"vector-Jacobian products are not implemented for the {backend} backend"
    )


def compiled_jvp(model: keras.Model) -> Callable[[Array, Array], tuple[Array, Array]]:
    """Return ``f(x, v) -> (D(x), J(x) v)``: the output and a Jacobian-vector product.

    Why: diagonal maps by Hutchinson probes need ``J v`` for many random ``v``;
    forward mode gives it in one pass. Under TensorFlow, bilinear resizing
    (multiscale models) needs the forward rule added by :func:`_tf_forward_rules`.
    """
    backend = _name()
    if backend == "tensorflow":
        import tensorflow as tf

        _tf_forward_rules(model)

        def fn(x, v):
            with tf.autodiff.ForwardAccumulator(primals=x, tangents=v) as acc:
                y = model(x, training=False)
            return y, acc.jvp(y, unconnected_gradients=tf.UnconnectedGradients.ZERO)

        return _tf_concrete_per_shape(fn)
    if backend == "jax":
        import jax

        @jax.jit
        def _jvp(trainable, non_trainable, x, v):
            def f(z):
                return model.stateless_call(trainable, non_trainable, z, training=False)[0]

            return jax.jvp(f, (x,), (v,))

        def jvp(x: Array, v: Array) -> tuple[Array, Array]:
            tv = [v_.value for v_ in model.trainable_variables]
            ntv = [v_.value for v_ in model.non_trainable_variables]
            y, t = _jvp(tv, ntv, _as_input(x), _as_input(v))
            return _numpy(y), _numpy(t)

        return jvp
    raise NotImplementedError(
        f"Jacobian-vector products are not implemented for the {backend} backend"
    )


def compiled_jvps(model: keras.Model) -> Callable[[Array, Array], tuple[Array, Array]]:
    """Return ``f(x, vs) -> (D(x), [J(x) v for v in vs])``: many tangents, one primal.

    Why: probing a Jacobian needs several tangents at the same image; computing
    ``D(x)`` once for all of them is about 1.5 times faster than a batch of
    :func:`compiled_jvp` calls with ``x`` repeated. ``x`` is (N, H, W, C),
    ``vs`` (T, N, H, W, C); the result's second item has the shape of ``vs``.
    """
    backend = _name()
    if backend == "tensorflow":
        import tensorflow as tf

        _tf_forward_rules(model)
        traced: dict[tuple[int, ...], Callable] = {}

        def fn(x, vs):
            def one(v):
                with tf.autodiff.ForwardAccumulator(primals=x, tangents=v) as acc:
                    y = model(x, training=False)
                return y, acc.jvp(y, unconnected_gradients=tf.UnconnectedGradients.ZERO)

            ys, ts = tf.vectorized_map(one, vs)  # the primal is loop-invariant: computed once
            return ys[0], ts

        def jvps(x: Array, vs: Array) -> tuple[Array, Array]:
            x, vs = _as_input(x), _as_input(vs)
            if vs.shape[1:] != x.shape:
                raise ValueError(f"tangents {vs.shape} must be (T, *{x.shape})")
            key = tuple(x.shape)
            graph = traced.get(key)
            if graph is None:
                if len(traced) >= _MAX_TRACES:
                    traced.pop(next(iter(traced)))
                graph = tf.function(fn).get_concrete_function(
                    tf.TensorSpec(key, tf.float32), tf.TensorSpec((None, *key), tf.float32)
                )
                traced[key] = graph
            y, t = graph(tf.constant(x), tf.constant(vs))
            return y.numpy(), t.numpy()

        return jvps
    if backend == "jax":
        import jax

        @jax.jit
        def _jvps(trainable, non_trainable, x, vs):
            def f(z):
                return model.stateless_call(trainable, non_trainable, z, training=False)[0]

            y, linear = jax.linearize(f, x)
            return y, jax.vmap(linear)(vs)

        def jvps(x: Array, vs: Array) -> tuple[Array, Array]:
            tv = [v_.value for v_ in model.trainable_variables]
            ntv = [v_.value for v_ in model.non_trainable_variables]
            y, t = _jvps(tv, ntv, _as_input(x), _as_input(vs))
            return _numpy(y), _numpy(t)

        return jvps
    raise NotImplementedError(
        f"Jacobian-vector products are not implemented for the {backend} backend"
    )


def _tf_forward_rules(model: keras.Model) -> None:
    """Give TensorFlow's forward mode the rules it lacks, or refuse: never drop a tangent.

    TensorFlow differentiates ops without a forward rule twice backwards, but it
    marks ``ResizeBilinearGrad`` not differentiable, so the tangent through a
    bilinear ``UpSampling2D`` (multiscale models) silently comes out as None.
    ``ResizeBilinear`` is linear in the image, so its tangent is the resized
    tangent; we add that rule to TensorFlow's table of special-cased forward rules.
    """
    try:
        from tensorflow.python.eager import forwardprop
    except ImportError:  # pragma: no cover
        forwardprop = None
    table = getattr(forwardprop, "_SPECIAL_CASES", None)
    if isinstance(table, dict):
        table.setdefault("ResizeBilinear", _tf_resize_bilinear_jvp)
        return
    bilinear = [
        layer.name
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.UpSampling2D) and layer.interpolation != "nearest"
    ]
    if bilinear:  # pragma: no cover - only on TensorFlow versions without the table
        raise NotImplementedError(
            f"this TensorFlow cannot take Jacobian-vector products through bilinear "
            f"upsampling (layers {bilinear}); use the JAX backend for this model"
        )


def _tf_resize_bilinear_jvp(attr_tuple, inputs, outputs, tangents):
    """Forward rule of ``ResizeBilinear``: linear in the image, so resize the tangent."""
    import tensorflow as tf

    del outputs
    attrs = dict(zip(attr_tuple[::2], attr_tuple[1::2], strict=True))
    tangent = tf.raw_ops.ResizeBilinear(
        images=tangents[0],
        size=inputs[1],
        align_corners=bool(attrs.get("align_corners", False)),
        half_pixel_centers=bool(attrs.get("half_pixel_centers", False)),
    )
    return [tangent]


def vjp(model: keras.Model, x: Array, cotangent: Array) -> Array:
    """``J(x)^T u`` for an (N, H, W, C) batch, compiled once per model and window shape.

    Why a second entry point: callers that only want the product need not keep
    the compiled function; it is cached here for the last few models.
    """
    return cached_autodiff(model, "vjp")(x, cotangent)[1]


def jvp(model: keras.Model, x: Array, tangent: Array) -> Array:
    """``J(x) v`` for an (N, H, W, C) batch, compiled once per model and window shape."""
    return cached_autodiff(model, "jvp")(x, tangent)[1]


_CACHE: dict[tuple[int, str], tuple[keras.Model, Callable]] = {}
_MAX_MODELS = 4  # models whose compiled autodiff functions are kept


def cached_autodiff(model: keras.Model, what: str) -> Callable[[Array, Array], tuple[Array, Array]]:
    """The compiled ``what`` ("vjp", "jvp" or "jvps") of a model, kept for reuse.

    Why: compiling costs seconds; the functions for the last four models stay
    cached, so interactive callers (click a pixel, see its filter) pay once.
    """
    makers = {"vjp": compiled_vjp, "jvp": compiled_jvp, "jvps": compiled_jvps}
    if what not in makers:
        raise ValueError(f"what must be one of {sorted(makers)} (got {what!r})")
    key = (id(model), what)
    hit = _CACHE.pop(key, None)
    if hit is None or hit[0] is not model:
        hit = (model, makers[what](model))
    _CACHE[key] = hit  # most recently used last
    while len(_CACHE) > 3 * _MAX_MODELS:
        _CACHE.pop(next(iter(_CACHE)))
    return hit[1]
