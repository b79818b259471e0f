"""Models: the seed CNN for images and a small MLP for 2-D toy data.

Both models are split into a feature extractor (``body``) and a linear ``head`` so that
last-layer Laplace and feature-space diversity scores can reach the penultimate features
and the last layer separately:

    logits = head(body(x))        params = {"params": {"body": ..., "head": ...}}
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxal import batching
from jaxal.config import TOY_DATASETS

Params = Any


@jax.custom_jvp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, VALID (odd sides are floored: 7 -> 3), NHWC.

    The forward pass is ``reduce_window``, which XLA:CPU runs fast; its autodiff rule
    (select-and-scatter) makes the backward pass ~2.5x slower than the whole rest of the
    CNN's training step on XLA:CPU. The custom JVP below expresses the tangent as a masked
    reshape-and-sum, which is linear in the tangent, so JAX transposes it into a cheap
    broadcast for reverse mode, and forward mode (linearised predictives, GGN products)
    keeps working. Ties (common after ReLU: all-zero windows) share the tangent equally,
    as ``jnp.max`` does. The seed CNN uses it through ``relu_max_pool_2x2``.
    """
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def _windows(x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    return x[:, : 2 * h2, : 2 * w2].reshape(n, h2, 2, w2, 2, c)


@max_pool_2x2.defjvp
def _max_pool_2x2_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    y = max_pool_2x2(x)
    is_max = (_windows(x) == y[:, :, None, :, None, :]).astype(x.dtype)
    share = is_max / is_max.sum(axis=(2, 4), keepdims=True)
    return y, (share * _windows(t)).sum(axis=(2, 4))


# Examples per chunk of the filter gradient in training (see conv_chunked_filter_grad).
FILTER_GRAD_CHUNK = 8


def conv_chunked_filter_grad(lhs: jax.Array, rhs: jax.Array, *args, **kwargs) -> jax.Array:
    """``lax.conv_general_dilated`` whose filter gradient is summed over batch chunks.

    Same value and same gradients (up to float summation order). XLA:CPU's filter-gradient
    convolution slows down more than linearly in the batch size: on the seed CNN's second
    conv (14x14, 32 -> 64 channels) 2.9 ms at batch 32 and 11.8 ms at batch 64, against
    2.2 and 4.1 ms as a sum over chunks of 8 (``benchmarks/train_profile.py``; chunks of
    4 and 16 measured no better, chunking the input gradient too measured no gain). Reverse
    mode only (a ``custom_vjp``): the seed CNN uses it in training steps, and keeps the
    plain convolution for everything that takes forward-mode derivatives (curvature,
    linearised predictives). The input gradient is the plain one.
    """
    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, *args, **kwargs)

    numbers = kwargs.get("dimension_numbers")
    batch_first = numbers is None or (numbers.lhs_spec[0] == 0 and numbers.out_spec[0] == 0)
    if not batch_first or lhs.shape[0] <= FILTER_GRAD_CHUNK:
        return conv(lhs, rhs)

    @jax.custom_vjp
    def chunked(x, w):
        return conv(x, w)

    def forward(x, w):
        return conv(x, w), (x, w)

    def backward(residuals, g):
        x, w = residuals
        dx = jax.vjp(lambda x: conv(x, w), x)[1](g)[0]
        dw = sum(jax.vjp(lambda w, x=x[s:s + FILTER_GRAD_CHUNK]: conv(x, w), w)[1](
                     g[s:s + FILTER_GRAD_CHUNK])[0]
                 for s in range(0, x.shape[0], FILTER_GRAD_CHUNK))
        return dx, dw

    chunked.defvjp(forward, backward)
    return chunked(lhs, rhs)


def conv_padded_channels(conv: Callable | None = None, kernel: str | None = None
                         ) -> Callable:
    """``conv`` (``lax.conv_general_dilated`` if None) with the input's and the kernel's
    channel axis zero-padded where ``batching.padded_conv_channels(kernel)`` says (3 to 4
    on CPU with XLA's kernels, which convolve 3 channels at a sixth of their speed).

    The zero channels add nothing to any output, so the value is the same, and so are the
    derivatives: the kernel's gradient is the padded one's, sliced back (pad's transpose).
    The parameters keep their shape. Only NHWC inputs with HWIO kernels (flax's ``Conv``)."""
    conv = conv or jax.lax.conv_general_dilated

    def padded(lhs, rhs, *args, **kwargs):
        numbers = kwargs.get("dimension_numbers")
        channels = batching.padded_conv_channels(kernel).get(lhs.shape[-1])
        nhwc = numbers is not None and tuple(numbers.lhs_spec) == (0, 3, 1, 2) and tuple(
            numbers.rhs_spec) == (3, 2, 0, 1)
        if channels is None or not nhwc:
            return conv(lhs, rhs, *args, **kwargs)
        extra = channels - lhs.shape[-1]
        lhs = jnp.pad(lhs, [(0, 0)] * (lhs.ndim - 1) + [(0, extra)])
        rhs = jnp.pad(rhs, [(0, 0)] * (rhs.ndim - 2) + [(0, extra), (0, 0)])
        return conv(lhs, rhs, *args, **kwargs)

    return padded


def _layer(module: nn.Module, name: str, layer: nn.Module, x: jax.Array) -> jax.Array:
    """Apply a Dense/Conv layer, exposing its input and its output's gradient on request.

    Both are no-ops unless asked for: the input is sown into the ``layer_inputs``
    collection (as ``<name>_in``, ``name`` the layer's parameter name) when that is
    mutable, and a zero ``perturbations`` entry (``<name>_out``) is added to the
    output when one is passed, so that the gradient with respect to it is the gradient
    with respect to the layer's output (``jaxal.curvature.layerwise`` needs both for
    per-layer curvature: diagonal GGN and KFAC).
    """
    module.sow("layer_inputs", f"{name}_in", x, reduce_fn=lambda _, new: new)
    return module.perturb(f"{name}_out", layer(x))


@jax.custom_jvp
def relu_max_pool_2x2(x: jax.Array) -> jax.Array:
    """``max_pool_2x2(relu(x))``, the seed CNN's block ending, with a cheaper derivative.

    Equal to the composition in value and in both derivatives (tested, ties included),
    but its JVP selects the tangent with one precomputed mask, relu'(x) · [x is its
    window's max], and divides by the number of such maxima. Both sit behind an
    optimisation barrier: otherwise XLA fuses the comparisons that define them into
    every consumer, and in the (C-1)-cotangent backward pass of
    ``jaxal.curvature.layerwise`` they were recomputed once per cotangent (measured: exact
    KFAC fit 1.80 -> 1.68 s).
    """
    return jax.nn.relu(max_pool_2x2(x))


@relu_max_pool_2x2.defjvp
def _relu_max_pool_2x2_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    pooled = max_pool_2x2(x)
    windows = _windows(x)
    winner = (windows == pooled[:, :, None, :, None, :]) & (windows > 0)
    share = 1.0 / jnp.maximum(winner.sum(axis=(2, 4)), 1).astype(x.dtype)
    winner, share = jax.lax.optimization_barrier((winner, share))
    picked = jnp.where(winner, _windows(t), 0.0).sum(axis=(2, 4))
    return jax.nn.relu(pooled), picked * share


def _offsets(x: jax.Array) -> list[jax.Array]:
    """The four 2x2-window positions as strided slices [n, h//2, w//2, c]: (0,0), (0,1),
    (1,0), (1,1)."""
    h2, w2 = x.shape[1] // 2, x.shape[2] // 2
    x = x[:, : 2 * h2, : 2 * w2]
    return [x[:, i::2, j::2] for i in (0, 1) for j in (0, 1)]


@jax.custom_vjp
def relu_max_pool_2x2_reverse(x: jax.Array) -> jax.Array:
    """``relu_max_pool_2x2`` with a hand-written reverse-mode rule only (a ``custom_vjp``).

    Same value and same gradient, ties included (the cotangent of a window goes in equal
    shares to its positive maxima), but the backward pass works on the four window
    positions as strided slices instead of a 6-D reshape of the window: 0.70 against
    1.19 ms on the seed CNN's first block at batch 32 (``benchmarks/train_profile.py``).
    The seed CNN uses it in training steps, which take only gradients; everything that
    takes forward-mode derivatives uses ``relu_max_pool_2x2``.
    """
    return jax.nn.relu(max_pool_2x2(x))


def _relu_max_pool_forward(x):
    return relu_max_pool_2x2_reverse(x), x


def _relu_max_pool_backward(x, g):
    n, h, w, c = x.shape
    positions = _offsets(x)
    pooled = functools.reduce(jnp.maximum, positions)
    winners = [(p == pooled) & (p > 0) for p in positions]
    share = g / jnp.maximum(sum(k.astype(x.dtype) for k in winners), 1)
    parts = [jnp.where(k, share, 0.0) for k in winners]
    # Interleave the four positions back: [n, h2, 2, w2, 2, c] -> [n, 2 h2, 2 w2, c].
    dx = jnp.stack([jnp.stack(parts[:2], axis=3), jnp.stack(parts[2:], axis=3)], axis=2)
    dx = dx.reshape(n, 2 * (h // 2), 2 * (w // 2), c)
    return (jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


relu_max_pool_2x2_reverse.defvjp(_relu_max_pool_forward, _relu_max_pool_backward)


class CNNBody(nn.Module):
    """Three blocks Conv 3x3 (SAME) -> ReLU -> MaxPool 2x2 [-> spatial Dropout], then
    Dense -> ReLU -> Dropout.

    Dropout is on when ``train`` (a fresh mask per example) or ``sample`` (consistent MC
    dropout: one mask per ``dropout`` key, shared by every example of the batch, so the
    same key gives the same network for every chunk of a pool; Kirsch et al. 2019).
    """

    channels: Sequence[int] = (32, 64, 64)
    hidden: int = 128
    dropout_rate: float = 0.5
    hidden_dropout_rate: float = 0.0   # after each conv block, per channel; 0: none
    # Convolution kernels, one of batching.CONV_KERNELS; None: batching.conv_kernel().
    conv_kernel: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, sample: bool = False) -> jax.Array:
        # Training steps take the reverse-mode-only forms with faster gradients; everything
        # else (curvature, predictives: train=False) the forms with forward-mode rules.
        # oneDNN's convolution has every derivative rule and chunks its own filter gradient.
        kernel = self.conv_kernel or batching.conv_kernel()
        if kernel == "onednn":
            from jaxal.conv import conv_general_dilated as conv
        else:
            conv = conv_chunked_filter_grad if train else None
        pool = relu_max_pool_2x2_reverse if train else relu_max_pool_2x2
        # Axes a dropout mask is shared over: per example in training, over the batch too
        # when sampling networks.
        shared = (0,) if sample else ()
        for i, c in enumerate(self.channels):
            layer = nn.Conv(c, (3, 3), padding="SAME",
                            conv_general_dilated=conv_padded_channels(conv, kernel))
            x = pool(_layer(self, f"Conv_{i}", layer, x))
            if self.hidden_dropout_rate > 0:
                x = nn.Dropout(self.hidden_dropout_rate, broadcast_dims=(*shared, 1, 2),
                               deterministic=not (train or sample))(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(_layer(self, "Dense_0", nn.Dense(self.hidden), x))
        return nn.Dropout(self.dropout_rate, broadcast_dims=shared,
                          deterministic=not (train or sample))(x)


class MLPBody(nn.Module):
    """Dense -> tanh blocks for low-dimensional toy data (smooth, so Laplace is well posed),
    with optional dropout after each block (off by default: the toy model is for exact
    posterior figures). Dropout as in ``CNNBody``: ``train`` per example, ``sample`` one
    mask per key shared by the batch."""

    hidden: Sequence[int] = (32, 32)
    hidden_dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, sample: bool = False) -> jax.Array:
        for i, h in enumerate(self.hidden):
            x = nn.tanh(_layer(self, f"Dense_{i}", nn.Dense(h), x))
            if self.hidden_dropout_rate > 0:
                x = nn.Dropout(self.hidden_dropout_rate, broadcast_dims=(0,) if sample else (),
                               deterministic=not (train or sample))(x)
        return x


class Classifier(nn.Module):
    """``logits = head(body(x))`` with the penultimate features reachable via ``features``."""

    body: nn.Module
    num_classes: int

    def setup(self):
        self.head = nn.Dense(self.num_classes)

    def __call__(self, x: jax.Array, train: bool = False, sample: bool = False
                 ) -> jax.Array:
        return _layer(self, "head", self.head, self.body(x, train, sample))

    def features(self, x: jax.Array, train: bool = False, sample: bool = False
                 ) -> jax.Array:
        return self.body(x, train, sample)


def cnn(num_classes: int = 10, channels: Sequence[int] = (32, 64, 64), hidden: int = 128,
        dropout_rate: float = 0.5, hidden_dropout_rate: float = 0.0,
        conv_kernel: str | None = None) -> Classifier:
    """The seed CNN (130,890 parameters for 28x28x1 inputs and 10 classes); its
    convolutions on ``conv_kernel`` (``xla`` or ``onednn``; None: as
    ``jaxal.batching.conv_kernel()`` chooses when traced)."""
    return Classifier(CNNBody(tuple(channels), hidden, dropout_rate, hidden_dropout_rate,
                              conv_kernel), num_classes)


def conv_kernel_of(model: Classifier) -> str | None:
    """The kernel ``model``'s convolutions run on (``batching.CONV_KERNELS``), or None for
    a model without convolutions."""
    if not isinstance(model.body, CNNBody):
        return None
    return model.body.conv_kernel or batching.conv_kernel()


def mlp(num_classes: int = 2, hidden: Sequence[int] = (32, 32),
        hidden_dropout_rate: float = 0.0) -> Classifier:
    """A small MLP for 2-D toy data."""
    return Classifier(MLPBody(tuple(hidden), hidden_dropout_rate), num_classes)


def build_model(dataset: str, num_classes: int, config) -> Classifier:
    """The run's model: the toy MLP for the 2-D toy datasets, else the seed CNN, with
    ``config.model``'s options (``config`` an ``ALConfig``)."""
    if dataset in TOY_DATASETS:
        return mlp(num_classes, hidden_dropout_rate=config.model.dropout)
    return cnn(num_classes, channels=tuple(config.model.channels), hidden=config.model.hidden,
               hidden_dropout_rate=config.model.dropout)


def init_params(model: Classifier, key: jax.Array, input_shape: Sequence[int]) -> Params:
    """Initialise parameters for inputs of shape ``input_shape`` (without the batch axis)."""
    variables = model.init(key, jnp.zeros((1, *input_shape), jnp.float32))
    return {"params": variables["params"]}


def apply_head(params: Params, features: jax.Array) -> jax.Array:
    """Logits from penultimate features: the last layer alone, ``features @ W + b``."""
    head = params["params"]["head"]
    return features @ head["kernel"] + head["bias"]


def num_params(params: Params) -> int:
    return sum(p.size for p in jax.tree.leaves(params))
