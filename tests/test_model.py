"""Tests for jaxal.model: parameter counts, the body/head split, dropout, and max_pool_2x2.

``max_pool_2x2`` has a hand-written JVP; every derivative is checked against the plain
reshape-and-max reference (whose derivatives JAX derives itself), against an explicit
numpy loop, and against finite differences.
"""

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxal import batching
from jaxal import model as model_lib
from jaxal.model import (
    apply_head,
    cnn,
    init_params,
    max_pool_2x2,
    mlp,
    num_params,
    relu_max_pool_2x2,
)


def reference_pool(x):
    """2x2 VALID max-pool as reshape-and-max: odd sides are floored."""
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    return x[:, : 2 * h2, : 2 * w2].reshape(n, h2, 2, w2, 2, c).max(axis=(2, 4))


def numpy_pool_and_grad(x, w):
    """Loop reference: the pool and d/dx Σ w * pool(x), ties sharing the cotangent equally."""
    n, h, wd, c = x.shape
    y = np.zeros((n, h // 2, wd // 2, c), x.dtype)
    g = np.zeros_like(x)
    for b, i, j, k in itertools.product(range(n), range(h // 2), range(wd // 2), range(c)):
        window = x[b, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, k]
        y[b, i, j, k] = window.max()
        is_max = window == window.max()
        g[b, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, k] += w[b, i, j, k] * is_max / is_max.sum()
    return y, g


def num_tied_windows(x):
    windows = np.asarray(x)[:, : x.shape[1] // 2 * 2, : x.shape[2] // 2 * 2]
    n, h, w, c = windows.shape
    windows = windows.reshape(n, h // 2, 2, w // 2, 2, c)
    return int(((windows == windows.max(axis=(2, 4), keepdims=True)).sum(axis=(2, 4)) > 1).sum())


@pytest.fixture(scope="module")
def cnn_and_params():
    """The seed CNN and its parameters for MNIST-shaped inputs."""
    model = cnn(10)
    # One jitted init compiles faster than the ~40 small programs of an eager one.
    return model, jax.jit(lambda key: init_params(model, key, (28, 28, 1)))(jax.random.key(0))


@pytest.fixture(scope="module")
def mlp_and_params():
    """The toy MLP (2 classes) and its parameters for 2-D inputs."""
    model = mlp(2)
    return model, jax.jit(lambda key: init_params(model, key, (2,)))(jax.random.key(0))


# --- parameter counts ------------------------------------------------------------------------

# conv 3x3: 9*c_in*c_out + c_out.  Three SAME convs (32, 64, 64 channels) each followed by a
# 2x2 VALID pool; then Dense(128) and the Dense(10) head.
#   28x28x1: 320 + 18,496 + 36,928; pools 28 -> 14 -> 7 -> 3, Dense in 3*3*64 = 576:
#            576*128 + 128 = 73,856; head 128*10 + 10 = 1,290.  Total 130,890.
#   32x32x3: 896 + 18,496 + 36,928; pools 32 -> 16 -> 8 -> 4, Dense in 4*4*64 = 1,024:
#            1,024*128 + 128 = 131,200; head 1,290.  Total 188,810.
@pytest.mark.slow
def test_cnn_parameter_count_mnist(cnn_and_params):
    model, params = cnn_and_params
    assert num_params(params) == 130_890
    x = jax.random.normal(jax.random.key(1), (3, 28, 28, 1))
    logits = model.apply(params, x)
    assert logits.shape == (3, 10)
    assert bool(jnp.isfinite(logits).all())


def test_build_model_keeps_the_seed_cnn_and_widens_on_request():
    """build_model: the seed CNN by default (130,890 on MNIST); --channels 64 128 128
    --hidden 256 on CIFAR-shaped inputs: 1,792 + 73,856 + 147,584 conv, 4*4*128*256 + 256
    = 524,544 dense, 2,570 head = 750,346."""
    from jaxal.config import ALConfig, ModelConfig
    from jaxal.model import build_model

    count = lambda model, shape: num_params(jax.eval_shape(
        lambda key: init_params(model, key, shape), jax.random.key(0)))
    assert count(build_model("mnist", 10, ALConfig()), (28, 28, 1)) == 130_890
    wide = ALConfig(model=ModelConfig(channels=(64, 128, 128), hidden=256))
    assert count(build_model("cifar10", 10, wide), (32, 32, 3)) == 750_346


def test_cnn_parameter_count_and_logits_cifar_shaped():
    model = cnn(10)
    shapes = jax.eval_shape(lambda key: init_params(model, key, (32, 32, 3)), jax.random.key(0))
    assert num_params(shapes) == 188_810
    # Random weights drawn in numpy: the forward pass is what is under test, not the init.
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: 0.1 * rng.standard_normal(s.shape).astype(s.dtype), shapes)
    x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    logits = jax.jit(model.apply)(params, x)
    assert logits.shape == (3, 10)
    assert bool(jnp.isfinite(logits).all())


def test_mlp_parameter_count(mlp_and_params):
    # 2*32 + 32, 32*32 + 32, 32*2 + 2.
    assert num_params(mlp_and_params[1]) == 96 + 1_056 + 66


# --- body / head split -----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("model_and_params", "input_shape", "num_features"),
    [("cnn_and_params", (28, 28, 1), 128), ("mlp_and_params", (2,), 32)],
    ids=["cnn", "mlp"],
)
def test_features_then_head_equals_full_model(model_and_params, input_shape, num_features,
                                              request):
    model, params = request.getfixturevalue(model_and_params)
    assert set(params["params"]) == {"body", "head"}
    x = jax.random.normal(jax.random.key(1), (5, *input_shape))

    features = model.apply(params, x, method=model.features)
    assert features.shape == (5, num_features)
    logits = model.apply(params, x)
    np.testing.assert_allclose(apply_head(params, features), logits, rtol=1e-5, atol=1e-5)
    # Independent of apply_head: the head's affine map written out in numpy.
    head = jax.tree.map(np.asarray, params["params"]["head"])
    np.testing.assert_allclose(np.asarray(features) @ head["kernel"] + head["bias"],
                               logits, rtol=1e-5, atol=1e-5)


# --- dropout ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_dropout_is_random_in_training_and_off_in_evaluation(cnn_and_params):
    model, params = cnn_and_params
    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))

    def train_logits(seed):
        return model.apply(params, x, train=True, rngs={"dropout": jax.random.key(seed)})

    assert not np.allclose(train_logits(0), train_logits(1), atol=1e-3)
    np.testing.assert_array_equal(train_logits(0), train_logits(0))

    eval_logits = model.apply(params, x)
    np.testing.assert_array_equal(eval_logits, model.apply(params, x, train=False))
    # A dropout key is ignored when train=False.
    np.testing.assert_array_equal(
        eval_logits, model.apply(params, x, train=False, rngs={"dropout": jax.random.key(5)}))


def test_dropout_zeroes_or_rescales_features(cnn_and_params):
    """Inverted dropout at rate 0.5: each feature is 0 or twice its evaluation value."""
    model, params = cnn_and_params
    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
    eval_features = np.asarray(model.apply(params, x, method=model.features))
    train_features = np.asarray(model.apply(params, x, True, method=model.features,
                                            rngs={"dropout": jax.random.key(2)}))
    dropped = train_features == 0.0
    np.testing.assert_allclose(train_features[~dropped], 2.0 * eval_features[~dropped],
                               rtol=1e-5, atol=1e-6)
    active = eval_features > 0
    # About half of the active features are dropped (binomial, 4*128 draws at most).
    assert 0.3 < dropped[active].mean() < 0.7


# --- max_pool_2x2 ----------------------------------------------------------------------------

# Odd and even sides (7 -> 3, 6 -> 3) in one shape keeps the number of compilations down.
POOL_SHAPES = [(2, 7, 6, 3), (1, 4, 5, 2)]


@partial(jax.jit, static_argnums=0)
def value_jvp_and_vjp(pool, x, t, w):
    """pool(x), its JVP along t, and its VJP with w (= ∇_x Σ w * pool(x)), jitted once."""
    y, y_dot = jax.jvp(pool, (x,), (t,))
    _, vjp = jax.vjp(pool, x)
    return y, y_dot, vjp(w)[0]


def pool_inputs(shape, seed, ties):
    """x (with ties: ReLU of rounded normals, so all-zero windows and tied maxima), t, w."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    if ties:
        x = np.maximum(np.round(1.5 * x), 0.0)
    n, h, w, c = shape
    return (x.astype(np.float32), rng.standard_normal(shape).astype(np.float32),
            rng.standard_normal((n, h // 2, w // 2, c)).astype(np.float32))


@pytest.mark.parametrize("shape", POOL_SHAPES)
def test_max_pool_forward_matches_reference(shape):
    x, t, w = pool_inputs(shape, seed=0, ties=False)
    y, _, _ = value_jvp_and_vjp(max_pool_2x2, x, t, w)
    n, h, wd, c = shape
    assert y.shape == (n, h // 2, wd // 2, c)  # 7 -> 3: odd sides are floored
    np.testing.assert_array_equal(y, reference_pool(x))
    y_loop, _ = numpy_pool_and_grad(x, w)
    np.testing.assert_array_equal(y, y_loop)


@pytest.mark.parametrize("shape", POOL_SHAPES)
def test_max_pool_derivatives_with_ties_match_reference(shape):
    """Reverse and forward mode equal those JAX derives for reshape-and-max, and a loop."""
    x, t, w = pool_inputs(shape, seed=1, ties=True)
    assert num_tied_windows(x) > 0  # the input really has ties (incl. all-zero windows)
    y, y_dot, grad = value_jvp_and_vjp(max_pool_2x2, x, t, w)
    y_ref, y_dot_ref, grad_ref = value_jvp_and_vjp(reference_pool, x, t, w)
    _, grad_loop = numpy_pool_and_grad(x, w)

    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad, grad_loop, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y_dot, y_dot_ref, rtol=1e-6, atol=1e-6)
    # Cropped rows/columns of odd sides get no gradient.
    np.testing.assert_array_equal(grad[:, 2 * (shape[1] // 2):], 0.0)
    np.testing.assert_array_equal(grad[:, :, 2 * (shape[2] // 2):], 0.0)
    # Forward and reverse mode are adjoint: <J t, w> = <t, J^T w>.
    np.testing.assert_allclose((np.asarray(y_dot) * w).sum(), (t * np.asarray(grad)).sum(),
                               rtol=1e-5, atol=1e-5)


def test_max_pool_derivatives_match_finite_differences_float64():
    x, t, w = (a.astype(np.float64) for a in pool_inputs(POOL_SHAPES[0], seed=2, ties=False))
    with jax.enable_x64(True):
        y, jvp, grad = map(np.asarray, value_jvp_and_vjp(max_pool_2x2, x, t, w))
        eps = 1e-6  # the pool is piecewise linear, so central differences are exact
        fd_jvp = (np.asarray(max_pool_2x2(x + eps * t)) -
                  np.asarray(max_pool_2x2(x - eps * t))) / (2 * eps)

    assert y.dtype == jvp.dtype == grad.dtype == np.float64
    np.testing.assert_allclose(jvp, fd_jvp, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose((grad * t).sum(), (w * fd_jvp).sum(), rtol=1e-6, atol=1e-8)


def test_cnn_gradient_matches_cnn_with_reference_pool(cnn_and_params, monkeypatch):
    """The whole CNN's parameter gradient, ReLU ties included, equals the one through the
    reference pool (the custom JVP is a faster implementation, not a different function).

    At this init and input the three pools see 1,366, 2,664 and 492 windows with tied
    maxima (mostly all-zero after ReLU), so the tie rule matters here.
    """
    model, params = cnn_and_params
    x = jax.random.normal(jax.random.key(1), (3, 28, 28, 1))
    labels = jnp.array([0, 3, 7])

    def loss(params):
        logits = model.apply(params, x)
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).sum()

    grad = jax.jit(jax.grad(loss))(params)
    # The CNN calls relu_max_pool_2x2: swap in ReLU then the reference pool.
    monkeypatch.setattr(model_lib, "relu_max_pool_2x2",
                        lambda a: reference_pool(jax.nn.relu(a)))
    grad_reference = jax.jit(jax.grad(loss))(params)
    flat, _ = ravel_pytree(grad)
    flat_reference, _ = ravel_pytree(grad_reference)
    np.testing.assert_allclose(flat, flat_reference, rtol=1e-4, atol=1e-5)


# --- MLP -------------------------------------------------------------------------------------

def test_mlp_on_2d_inputs(mlp_and_params):
    model, params = mlp_and_params
    x = jax.random.normal(jax.random.key(1), (7, 2))
    logits = model.apply(params, x)
    assert logits.shape == (7, 2)
    # No dropout in the MLP: train=True is deterministic and equals evaluation.
    np.testing.assert_array_equal(model.apply(params, x, train=True), logits)
    # Independent forward pass: tanh(tanh(x W1 + b1) W2 + b2) W3 + b3 in numpy.
    p = jax.tree.map(np.asarray, params["params"])
    body = p["body"]
    h = np.tanh(np.asarray(x) @ body["Dense_0"]["kernel"] + body["Dense_0"]["bias"])
    h = np.tanh(h @ body["Dense_1"]["kernel"] + body["Dense_1"]["bias"])
    np.testing.assert_allclose(model.apply(params, x, method=model.features), h,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, h @ p["head"]["kernel"] + p["head"]["bias"],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", POOL_SHAPES)
def test_relu_max_pool_equals_the_composition_with_ties(shape):
    """relu_max_pool_2x2 = max_pool_2x2 ∘ relu in value, JVP and VJP.

    Rounded normals give negative and tied values; three windows are set by hand: all
    negative, a maximum of 0 tied beside negatives, and four tied positive maxima.
    """
    rng = np.random.default_rng(3)
    x = np.round(1.5 * rng.standard_normal(shape)).astype(np.float32)
    x[0, :2, :2] = -1.0
    x[0, 2:4, :2] = np.array([[0.0, -1.0], [-2.0, 0.0]])[..., None]
    x[0, :2, 2:4] = 2.0
    _, t, w = pool_inputs(shape, seed=4, ties=False)
    assert num_tied_windows(np.maximum(x, 0)) > 0
    y, y_dot, grad = value_jvp_and_vjp(relu_max_pool_2x2, x, t, w)
    composed = lambda a: max_pool_2x2(jax.nn.relu(a))
    y_ref, y_dot_ref, grad_ref = value_jvp_and_vjp(composed, x, t, w)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(y_dot, y_dot_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(grad)).sum() > 0   # not trivially zero


@pytest.mark.slow
@pytest.mark.parametrize("batch", [5, 19])    # one chunk; chunks of 8, 8 and 3
def test_chunked_filter_grad_conv_matches_plain_conv(batch):
    """Value, input gradient and filter gradient equal the plain convolution's."""
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (batch, 9, 9, 3))
    w = jax.random.normal(kw, (3, 3, 3, 4))
    numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    plain = partial(jax.lax.conv_general_dilated, window_strides=(1, 1), padding="SAME",
                    dimension_numbers=numbers)
    chunked = partial(model_lib.conv_chunked_filter_grad, window_strides=(1, 1),
                      padding="SAME", dimension_numbers=numbers)
    cotangent = jax.random.normal(kg, (batch, 9, 9, 4))
    y, vjp = jax.vjp(plain, x, w)
    y_chunked, vjp_chunked = jax.vjp(chunked, x, w)
    np.testing.assert_allclose(y_chunked, y, rtol=1e-6, atol=1e-6)
    for got, want in zip(vjp_chunked(cotangent), vjp(cotangent), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_cnn_training_gradient_matches_evaluation_gradient():
    """Without dropout, train=True (chunked filter gradients) and train=False (plain
    convolutions) are the same function: equal gradients on a batch of 20."""
    model = cnn(10, dropout_rate=0.0)
    params = init_params(model, jax.random.key(0), (28, 28, 1))
    x = jax.random.normal(jax.random.key(1), (20, 28, 28, 1))
    y = jnp.arange(20) % 10

    def loss(params, train):
        logits = model.apply(params, x, train=train)
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1).mean()

    train_grad = ravel_pytree(jax.grad(loss)(params, True))[0]
    eval_grad = ravel_pytree(jax.grad(loss)(params, False))[0]
    np.testing.assert_allclose(train_grad, eval_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", POOL_SHAPES)
def test_reverse_only_relu_max_pool_equals_the_composition_with_ties(shape):
    """The training form (custom VJP on strided window positions) has the same value and
    gradient as max_pool_2x2 ∘ relu, on the tie-heavy input above, odd sides included."""
    rng = np.random.default_rng(3)
    x = np.round(1.5 * rng.standard_normal(shape)).astype(np.float32)
    x[0, :2, :2] = 2.0                                # four tied positive maxima
    x[0, 2:4, :2] = np.array([[0.0, -1.0], [-2.0, 0.0]])[..., None]
    _, _, w = pool_inputs(shape, seed=5, ties=False)
    composed = lambda a: max_pool_2x2(jax.nn.relu(a))
    y, vjp = jax.vjp(model_lib.relu_max_pool_2x2_reverse, jnp.asarray(x))
    y_ref, vjp_ref = jax.vjp(composed, jnp.asarray(x))
    np.testing.assert_array_equal(y, y_ref)
    grad, grad_ref = vjp(jnp.asarray(w))[0], vjp_ref(jnp.asarray(w))[0]
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad[0, :2, :2], w[0, 0, 0] / 4 * np.ones((2, 2, shape[3])),
                               rtol=1e-6)            # the tied window's equal shares
    assert np.abs(np.asarray(grad)).sum() > 0


@pytest.mark.parametrize("base", ["plain", "chunked"])
def test_channel_padded_conv_equals_the_conv_it_wraps(base):
    """3 input channels are convolved as 4 (the zero channel adds nothing): the same value,
    input gradient and kernel gradient (kernel shape kept), with and without the training
    form's chunked filter gradient; forward-mode derivatives too (the curvature's)."""
    kx, kw, kg, kt = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(kx, (11, 9, 9, 3))
    w = jax.random.normal(kw, (3, 3, 3, 4))
    numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    inner = None if base == "plain" else model_lib.conv_chunked_filter_grad
    seen = []

    def spy(lhs, rhs, *args, **kwargs):
        seen.append((lhs.shape[-1], rhs.shape[2]))
        return (inner or jax.lax.conv_general_dilated)(lhs, rhs, *args, **kwargs)

    kwargs = {"window_strides": (1, 1), "padding": "SAME", "dimension_numbers": numbers}
    plain = partial(jax.lax.conv_general_dilated, **kwargs)
    padded = partial(model_lib.conv_padded_channels(spy, "xla"), **kwargs)
    cotangent = jax.random.normal(kg, (11, 9, 9, 4))
    y, vjp = jax.vjp(plain, x, w)
    y_padded, vjp_padded = jax.vjp(padded, x, w)
    assert seen and set(seen) == {(4, 4)}           # it did pad, to 4
    np.testing.assert_allclose(y_padded, y, rtol=1e-5, atol=1e-5)
    for got, want in zip(vjp_padded(cotangent), vjp(cotangent), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if base == "plain":
        tangent = jax.random.normal(kt, w.shape)
        np.testing.assert_allclose(jax.jvp(lambda w: padded(x, w), (w,), (tangent,))[1],
                                   jax.jvp(lambda w: plain(x, w), (w,), (tangent,))[1],
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_cnn_on_rgb_images_is_the_same_function_with_and_without_channel_padding(
        monkeypatch):
    """The seed CNN on 32x32x3 with the padded first conv gives the unpadded logits and
    gradients."""
    model = cnn(10, dropout_rate=0.0)
    params = init_params(model, jax.random.key(0), (32, 32, 3))
    x = jax.random.normal(jax.random.key(1), (9, 32, 32, 3))

    def logits_and_grad():
        return (model.apply(params, x),
                ravel_pytree(jax.grad(lambda p: model.apply(p, x, train=True).sum())(params))[0])

    padded = logits_and_grad()
    monkeypatch.setattr(batching, "CPU_PADDED_CHANNELS", {})
    unpadded = logits_and_grad()
    for got, want in zip(padded, unpadded, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
