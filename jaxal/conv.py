"""2-D convolutions by oneDNN through the XLA FFI, with every derivative (optional extra).

XLA:CPU's convolution kernels took about 2.2x the time of PyTorch's oneDNN ones on the seed
CNN's training step (``benchmarks/train_profile.py``). With the extra installed
(``pip install -e ".[onednn]"``: the ``jaxal_onednn`` extension, ``extensions/onednn``),
``conv_general_dilated`` runs the convolutions that oneDNN covers (2-D, NHWC input, HWIO
filter, float32, any strides and padding, no dilation, one group) on oneDNN's kernels:
the forward pass, the input gradient and the filter gradient, each an XLA FFI call.

They are three JAX primitives, each bilinear in its two arguments, whose derivatives are
each other:

    y  = conv(x, w)                      dy = conv(dx, w) + conv(x, dw)
    dx = input_grad(g, w)   (conv's transpose in x)
    dw = filter_grad(x, g)  (conv's transpose in w)

so forward mode (JVPs: the curvature, linearised predictives), reverse mode (training) and
their compositions all run on oneDNN: both gradients at every batch size, the forward pass
up to ``ONEDNN_FORWARD_MAX_BATCH`` examples (above it XLA's forward kernel measured faster).
Under ``vmap`` a batched input (or output gradient) is folded into the batch axis, one
call; batched filters (ensemble members, stacked seeds, posterior samples vmapped) go one
at a time (``lax.map``). On a backend other than CPU the primitives lower to XLA's
convolution.

``jaxal.batching.conv_kernel`` chooses between XLA's and oneDNN's kernels; importing this
module does not load the extension: ``conv_general_dilated`` does, on first use.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jaxal.errors import ConfigError

EXTRA = 'pip install -e ".[onednn]"'
_TARGETS = {"forward": "jaxal_onednn_conv_forward",
            "input_grad": "jaxal_onednn_conv_input_grad",
            "filter_grad": "jaxal_onednn_conv_filter_grad"}
_NHWC = ("NHWC", "HWIO", "NHWC")
# The forward pass of larger batches runs on XLA's kernel, measured faster there: pool
# scoring of the seed CNN (forward only, chunks of 256-4096) ran at 24,500-26,400
# images/s on oneDNN against 28,200-36,300 on XLA, while training steps (batch 32-128,
# forward and both gradients on oneDNN) ran 1.3-1.6x faster than on XLA
# (benchmarks/al_round.py --conv-kernels xla onednn, AMD EPYC, 2 cores). The gradients
# run on oneDNN at every batch size.
ONEDNN_FORWARD_MAX_BATCH = 128


@functools.cache
def extension():
    """The ``jaxal_onednn`` module, its FFI targets registered with XLA (once); None when
    the extra is not installed."""
    try:
        import jaxal_onednn
    except ImportError:
        return None
    handlers = jaxal_onednn.handlers()
    for target in _TARGETS.values():
        jax.ffi.register_ffi_target(target, handlers[target], platform="cpu")
    return jaxal_onednn


def available() -> bool:
    """Whether the oneDNN extension is installed and loads."""
    return extension() is not None


def require() -> None:
    """Raises ConfigError naming the install command when the extension is missing."""
    if not available():
        raise ConfigError(f"JAXAL_CONV=onednn needs jaxal's oneDNN extension: {EXTRA} "
                          "(docs/performance.md), or set JAXAL_CONV=xla")


# --- the primitives ----------------------------------------------------------------------

def _xla_numbers(lhs_shape, rhs_shape):
    return jax.lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC)


def _out_shape(x_shape, w_shape, strides, padding):
    n, h, w, _ = x_shape
    kh, kw, _, o = w_shape
    (pt, pb), (pl, pr) = padding
    return (n, (h + pt + pb - kh) // strides[0] + 1, (w + pl + pr - kw) // strides[1] + 1, o)


def _ffi(kind: str, out_shape, a, b, strides, padding):
    (pt, pb), (pl, pr) = padding
    return jax.ffi.ffi_call(_TARGETS[kind], jax.ShapeDtypeStruct(out_shape, jnp.float32))(
        a, b, stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
        pad_top=np.int64(pt), pad_bottom=np.int64(pb), pad_left=np.int64(pl),
        pad_right=np.int64(pr))


def _xla_forward(x, w, *, strides, padding):
    return jax.lax.conv_general_dilated(x, w, strides, padding,
                                        dimension_numbers=_xla_numbers(x.shape, w.shape))


def _xla_input_grad(g, w, *, strides, padding, input_shape):
    x = jnp.zeros(input_shape, g.dtype)
    return jax.vjp(lambda x: _xla_forward(x, w, strides=strides, padding=padding), x)[1](g)[0]


def _xla_filter_grad(x, g, *, strides, padding, filter_shape):
    w = jnp.zeros(filter_shape, g.dtype)
    return jax.vjp(lambda w: _xla_forward(x, w, strides=strides, padding=padding), w)[1](g)[0]


conv_p = Primitive("jaxal_onednn_conv")
input_grad_p = Primitive("jaxal_onednn_conv_input_grad")
filter_grad_p = Primitive("jaxal_onednn_conv_filter_grad")

conv_p.def_abstract_eval(lambda x, w, *, strides, padding: jax.core.ShapedArray(
    _out_shape(x.shape, w.shape, strides, padding), x.dtype))
input_grad_p.def_abstract_eval(lambda g, w, *, strides, padding, input_shape:
                               jax.core.ShapedArray(input_shape, g.dtype))
filter_grad_p.def_abstract_eval(lambda x, g, *, strides, padding, filter_shape:
                                jax.core.ShapedArray(filter_shape, g.dtype))


def _impl(primitive):
    """Eager calls run the primitive as its own jitted computation."""
    @functools.partial(jax.jit, static_argnames=("strides", "padding", "input_shape",
                                                 "filter_shape"))
    def run(a, b, **params):
        return primitive.bind(a, b, **params)
    return run


for _p in (conv_p, input_grad_p, filter_grad_p):
    _p.def_impl(_impl(_p))

def _forward_lowering(x, w, *, strides, padding):
    if x.shape[0] > ONEDNN_FORWARD_MAX_BATCH:
        return _xla_forward(x, w, strides=strides, padding=padding)
    return _ffi("forward", _out_shape(x.shape, w.shape, strides, padding), x, w, strides,
                padding)


mlir.register_lowering(conv_p, mlir.lower_fun(_forward_lowering, multiple_results=False),
                       platform="cpu")
mlir.register_lowering(input_grad_p, mlir.lower_fun(
    lambda g, w, *, strides, padding, input_shape: _ffi(
        "input_grad", input_shape, g, w, strides, padding), multiple_results=False),
    platform="cpu")
mlir.register_lowering(filter_grad_p, mlir.lower_fun(
    lambda x, g, *, strides, padding, filter_shape: _ffi(
        "filter_grad", filter_shape, x, g, strides, padding), multiple_results=False),
    platform="cpu")
# Elsewhere (GPU, TPU) XLA's own convolution computes the same numbers.
for _p, _fn in ((conv_p, _xla_forward), (input_grad_p, _xla_input_grad),
                (filter_grad_p, _xla_filter_grad)):
    mlir.register_lowering(_p, mlir.lower_fun(_fn, multiple_results=False))

# Transposes: <ct, conv(x, w)> = <input_grad(ct, w), x> = <filter_grad(x, ct), w>, and the
# same identity read from the other two primitives' side.
ad.defbilinear(
    conv_p,
    lambda ct, x, w, *, strides, padding: input_grad_p.bind(
        ct, w, strides=strides, padding=padding, input_shape=tuple(x.aval.shape)),
    lambda ct, x, w, *, strides, padding: filter_grad_p.bind(
        x, ct, strides=strides, padding=padding, filter_shape=tuple(w.aval.shape)))
ad.defbilinear(
    input_grad_p,
    lambda ct, g, w, *, strides, padding, input_shape: conv_p.bind(
        ct, w, strides=strides, padding=padding),
    lambda ct, g, w, *, strides, padding, input_shape: filter_grad_p.bind(
        ct, g, strides=strides, padding=padding, filter_shape=tuple(w.aval.shape)))
ad.defbilinear(
    filter_grad_p,
    lambda ct, x, g, *, strides, padding, filter_shape: input_grad_p.bind(
        g, ct, strides=strides, padding=padding, input_shape=tuple(x.aval.shape)),
    lambda ct, x, g, *, strides, padding, filter_shape: conv_p.bind(
        x, ct, strides=strides, padding=padding))


def _fold(primitive, shape_param: str | None):
    """Batching rule for a primitive whose first argument carries the examples (conv's x,
    input_grad's g): a batched first argument alone is folded into the example axis (one
    call); anything else goes one batch entry at a time (``lax.map``)."""
    def rule(args, dims, **params):
        a, b = args
        da, db = dims
        if db is None:
            a = jnp.moveaxis(a, da, 0)
            k, n = a.shape[:2]
            if shape_param is not None:
                shape = params[shape_param]
                params = {**params, shape_param: (k * n, *shape[1:])}
            out = primitive.bind(a.reshape(k * n, *a.shape[2:]), b, **params)
            return out.reshape(k, n, *out.shape[1:]), 0
        return _sequential(primitive, args, dims, **params)
    return rule


def _sequential(primitive, args, dims, **params):
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True)
                if d is not None)
    args = [jnp.broadcast_to(a[None], (size, *a.shape)) if d is None
            else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims, strict=True)]
    return jax.lax.map(lambda ab: primitive.bind(*ab, **params), tuple(args)), 0


batching.primitive_batchers[conv_p] = _fold(conv_p, None)
batching.primitive_batchers[input_grad_p] = _fold(input_grad_p, "input_shape")
batching.primitive_batchers[filter_grad_p] = functools.partial(_sequential, filter_grad_p)


# --- the convolution jaxal's models call -------------------------------------------------

def covers(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
           dimension_numbers=None, feature_group_count=1, batch_group_count=1,
           precision=None, preferred_element_type=None) -> bool:
    """Whether oneDNN's kernels cover this ``lax.conv_general_dilated`` call: 2-D, NHWC
    input, HWIO filter, NHWC output, float32, no dilation, one group, padding >= 0."""
    del precision
    numbers = dimension_numbers
    if numbers is not None and all(isinstance(spec, str) for spec in numbers):
        numbers = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, numbers)
    nhwc = (numbers is not None and tuple(numbers.lhs_spec) == (0, 3, 1, 2)
            and tuple(numbers.rhs_spec) == (3, 2, 0, 1)
            and tuple(numbers.out_spec) == (0, 3, 1, 2))
    return (nhwc and lhs.ndim == 4 and rhs.ndim == 4
            and lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
            and all(d == 1 for d in (lhs_dilation or (1, 1)))
            and all(d == 1 for d in (rhs_dilation or (1, 1)))
            and feature_group_count == 1 and batch_group_count == 1
            and preferred_element_type in (None, jnp.float32)
            and _pads(lhs.shape, rhs.shape, window_strides, padding) is not None)


def _pads(lhs_shape, rhs_shape, strides, padding):
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs_shape[1:3], rhs_shape[:2], strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return pads if all(p >= 0 for pair in pads for p in pair) else None


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding, *args, **kwargs):
    """``jax.lax.conv_general_dilated`` on oneDNN's kernels where they cover the call
    (``covers``), on XLA's otherwise; same signature, same values and derivatives."""
    if not covers(lhs, rhs, window_strides, padding, *args, **kwargs):
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, *args,
                                            **kwargs)
    require()
    strides = tuple(int(s) for s in window_strides)
    return conv_p.bind(lhs, rhs, strides=strides,
                       padding=_pads(lhs.shape, rhs.shape, strides, padding))


def plans() -> list[dict]:
    """Every oneDNN convolution planned in this process (one per layer, kind and chunk
    shape), with the kernel oneDNN chose, e.g. ``brgconv:avx512_core``: what a benchmark
    records of the path that ran. Empty when the extension is not loaded."""
    if extension() is None:
        return []
    kinds = tuple(_TARGETS)
    return [{"kind": kinds[kind], "input": x, "filter": w, "output": y, "implementation": impl}
            for kind, x, w, y, impl in extension().plans()]
