"""Tests for jaxal.conv: oneDNN's convolution (the optional extra) against XLA's.

Every value and derivative is checked against ``jax.lax.conv_general_dilated`` (XLA's
convolution, whose derivatives JAX derives itself) and against finite differences: the
forward pass, both gradients, forward mode, second order, ``vmap`` over inputs, over
filters and over both, ``jit``, the seed CNN on 1 and 3 channels, odd sides, batch 1, a
whole training run, stacked ensemble members and the per-layer curvature. The kernel
tests need the extension (``pip install -e ".[onednn]"``) and are skipped without it;
the choice of kernel and its refusals are tested either way.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from jax.test_util import check_grads

from jaxal import batching, conv
from jaxal.batching import over_members
from jaxal.curvature.layerwise import layer_inputs_and_factor_grads
from jaxal.errors import ConfigError
from jaxal.model import cnn, init_params
from jaxal.train import TrainConfig, labelled_indices, make_trainer

needs_onednn = pytest.mark.skipif(not conv.available(), reason=(
    f"jaxal's oneDNN extension is not installed ({conv.EXTRA})"))

# (input NHWC, filter HWIO, strides, padding): the seed CNN's three layers at batch 1
# and 3, odd sides, 3 channels, strides and uneven explicit padding.
CASES = [
    ((1, 28, 28, 1), (3, 3, 1, 32), (1, 1), "SAME"),
    ((3, 14, 14, 32), (3, 3, 32, 64), (1, 1), "SAME"),
    ((2, 7, 7, 64), (3, 3, 64, 64), (1, 1), "SAME"),
    ((3, 9, 7, 3), (3, 3, 3, 5), (1, 1), "SAME"),
    ((2, 11, 8, 4), (3, 2, 4, 6), (2, 3), "VALID"),
    ((1, 6, 5, 2), (2, 3, 2, 3), (2, 1), ((1, 2), (0, 1))),
    ((conv.ONEDNN_FORWARD_MAX_BATCH + 3, 5, 4, 2), (3, 3, 2, 3), (1, 1), "SAME"),
]
IDS = ["conv0-b1", "conv1-b3", "conv2-b2", "rgb-odd", "strided-valid", "explicit-pad",
       "forward-on-xla"]


def inputs(x_shape, w_shape, seed=0):
    kx, kw = jax.random.split(jax.random.key(seed))
    return (jax.random.normal(kx, x_shape),
            jax.random.normal(kw, w_shape) / np.sqrt(np.prod(w_shape[:3])))


def pair(w_shape, strides, padding):
    """(XLA's convolution, oneDNN's) for NHWC inputs and HWIO filters."""
    kwargs = {"window_strides": strides, "padding": padding,
              "dimension_numbers": ("NHWC", "HWIO", "NHWC")}
    return (lambda x, w: jax.lax.conv_general_dilated(x, w, **kwargs),
            lambda x, w: conv.conv_general_dilated(x, w, **kwargs))


def close(got, want, tol=1e-4):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        scale = max(1.0, float(jnp.abs(w).max()))
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * scale)


@needs_onednn
@pytest.mark.parametrize(("x_shape", "w_shape", "strides", "padding"), CASES, ids=IDS)
def test_value_gradients_and_forward_mode_equal_xla(x_shape, w_shape, strides, padding):
    """Forward, input and filter gradients (reverse mode), the JVP and a Hessian-vector
    product (forward over reverse) equal XLA's convolution's, jitted, and the program
    runs the oneDNN primitives (it did not fall back)."""
    xla, onednn = pair(w_shape, strides, padding)
    x, w = inputs(x_shape, w_shape)
    assert "jaxal_onednn_conv" in str(jax.make_jaxpr(onednn)(x, w))
    y = jax.jit(onednn)(x, w)
    close(y, xla(x, w), 1e-5)
    ct = jax.random.normal(jax.random.key(7), y.shape)
    grads = jax.jit(lambda x, w: jax.vjp(onednn, x, w)[1](ct))(x, w)
    close(grads, jax.vjp(xla, x, w)[1](ct))
    tangents = inputs(x_shape, w_shape, seed=1)
    close(jax.jit(lambda *a: jax.jvp(onednn, a[:2], a[2:])[1])(x, w, *tangents),
          jax.jvp(xla, (x, w), tangents)[1])

    def hvp(f):
        loss = lambda x, w: jnp.sum(jnp.tanh(f(x, w)) ** 2)
        return jax.jvp(jax.grad(loss, argnums=(0, 1)), (x, w), tangents)[1]

    close(jax.jit(lambda: hvp(onednn))(), hvp(xla))


@needs_onednn
@pytest.mark.parametrize(("x_shape", "w_shape", "strides", "padding"), CASES[3:], ids=IDS[3:])
def test_derivatives_match_finite_differences(x_shape, w_shape, strides, padding):
    """Both modes to second order against central differences (float32: loose)."""
    _, onednn = pair(w_shape, strides, padding)
    x, w = inputs(x_shape, w_shape)
    f = lambda x, w: jnp.sum(jnp.sin(onednn(x, w)))
    check_grads(f, (x, w), order=2, modes=("fwd", "rev"), eps=1e-2, atol=5e-2, rtol=5e-2)


@needs_onednn
def test_vmap_over_inputs_filters_and_examples_equals_xla():
    """Batched inputs (folded into the batch axis), batched filters (one at a time), both,
    and per-example filter gradients equal XLA's under vmap."""
    x_shape, w_shape, strides, padding = CASES[3]
    xla, onednn = pair(w_shape, strides, padding)
    x, w = inputs(x_shape, w_shape)
    xs, ws = jnp.stack([x, 2 * x, -x]), jnp.stack([w, -w, 0.5 * w])
    for axes, args in (((0, None), (xs, w)), ((None, 0), (x, ws)), ((0, 0), (xs, ws))):
        close(jax.jit(jax.vmap(onednn, axes))(*args), jax.vmap(xla, axes)(*args), 1e-5)
        loss = lambda f: lambda x, w: jnp.sum(f(x, w) ** 2)
        close(jax.vmap(jax.grad(loss(onednn), argnums=(0, 1)), axes)(*args),
              jax.vmap(jax.grad(loss(xla), argnums=(0, 1)), axes)(*args))
    per_example = lambda f: jax.vmap(jax.grad(lambda xi, w: jnp.sum(f(xi[None], w) ** 2),
                                              argnums=1), (0, None))(x, w)
    close(per_example(onednn), per_example(xla))


def test_uncovered_calls_fall_back_to_xla():
    """Dilation, groups, float16 and NCHW run XLA's convolution, with its values."""
    x, w = inputs((2, 9, 9, 4), (3, 3, 2, 4))
    calls = [
        lambda x, w: conv.conv_general_dilated(x, w[:, :, :, :], (1, 1), "SAME",
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                               feature_group_count=2),
        lambda x, w: conv.conv_general_dilated(x[..., :2], w, (1, 1), "SAME",
                                               rhs_dilation=(2, 2),
                                               dimension_numbers=("NHWC", "HWIO", "NHWC")),
        lambda x, w: conv.conv_general_dilated(x[..., :2].astype(jnp.float16),
                                               w.astype(jnp.float16), (1, 1), "SAME",
                                               dimension_numbers=("NHWC", "HWIO", "NHWC")),
        lambda x, w: conv.conv_general_dilated(jnp.moveaxis(x[..., :2], 3, 1),
                                               jnp.transpose(w, (3, 2, 0, 1)), (1, 1), "SAME"),
    ]
    for call in calls:
        assert "jaxal_onednn" not in str(jax.make_jaxpr(call)(x, w))


def test_conv_kernel_reads_jaxal_conv_and_refuses_what_cannot_run(monkeypatch):
    """Default: oneDNN on CPU when installed, else XLA; JAXAL_CONV overrides; a wrong name
    and oneDNN without the extension are refused in one line naming the fix."""
    monkeypatch.delenv(batching.CONV_VARIABLE, raising=False)
    assert batching.conv_kernel() == ("onednn" if conv.available() else "xla")
    monkeypatch.setenv(batching.CONV_VARIABLE, "xla")
    assert batching.conv_kernel() == "xla"
    assert batching.kernel_choices() == {"conv": "xla"}
    assert batching.kernels_line() == "convolutions: XLA"
    monkeypatch.setenv(batching.CONV_VARIABLE, "mkl")
    with pytest.raises(ConfigError, match="JAXAL_CONV='mkl' is not a convolution kernel"):
        batching.conv_kernel()
    monkeypatch.setenv(batching.CONV_VARIABLE, "onednn")
    monkeypatch.setattr(conv, "extension", lambda: None)
    with pytest.raises(ConfigError) as refused:
        batching.conv_kernel()
    message = str(refused.value)
    assert "\n" not in message and 'pip install -e ".[onednn]"' in message


@needs_onednn
def test_kernel_choice_records_onednn(monkeypatch):
    monkeypatch.setenv(batching.CONV_VARIABLE, "onednn")
    choices = batching.kernel_choices()
    assert choices["conv"] == "onednn" and choices["onednn_version"].count(".") == 2
    assert batching.kernels_line().startswith("convolutions: oneDNN ")


def train(kernel: str, input_shape, steps: int = 6, members: int = 0):
    """The seed CNN after ``steps`` training steps (dropout on) on ``kernel``; with
    ``members``, that many stacked members trained vmapped."""
    model = cnn(10, conv_kernel=kernel)
    trainer = make_trainer(model, TrainConfig(batch_size=5), capacity=16)
    x = jax.random.normal(jax.random.key(1), (16, *input_shape))
    y = jnp.arange(16) % 10
    labelled = jnp.ones(16, bool)
    idx, n = labelled_indices(labelled), labelled.sum()
    if members:
        keys = jax.random.split(jax.random.key(0), members)
        state = jax.vmap(lambda k: trainer.init(init_params(model, k, input_shape)))(keys)
        step = jax.jit(over_members(trainer.step, (0, 0, None, None, None, None), members,
                                    "vmap"))
        for t in range(steps):
            state, _ = step(jax.random.split(jax.random.key(100 + t), members), state, x, y,
                            idx, n)
    else:
        state = trainer.init(init_params(model, jax.random.key(0), input_shape))
        step = jax.jit(trainer.step)
        program = str(jax.make_jaxpr(step)(jax.random.key(0), state, x, y, idx, n))
        assert ("jaxal_onednn_conv_filter_grad" in program) == (kernel == "onednn")
        for t in range(steps):
            state, _ = step(jax.random.key(100 + t), state, x, y, idx, n)
    return state.params


@needs_onednn
@pytest.mark.parametrize("input_shape", [(12, 12, 1), (11, 9, 3)], ids=["1ch", "3ch-odd"])
def test_training_run_equals_xla(input_shape):
    """The seed CNN trained on oneDNN's convolutions (jit, dropout, Adam) ends where XLA's
    does, on 1 and 3 input channels (odd sides)."""
    got = ravel_pytree(train("onednn", input_shape))[0]
    want = ravel_pytree(train("xla", input_shape))[0]
    assert float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)) < 1e-4
    # Adam scales each step to about lr whatever the gradient's size, so a weight whose
    # gradient is at float32's rounding level may move differently: at most 1 in 1000.
    assert float(jnp.mean(jnp.abs(got - want) > 1e-5)) < 1e-3


@needs_onednn
@pytest.mark.slow
def test_vmapped_ensemble_training_equals_xla():
    """Stacked members trained under vmap (filters batched: one member at a time)."""
    got = ravel_pytree(train("onednn", (10, 10, 1), steps=3, members=2))[0]
    want = ravel_pytree(train("xla", (10, 10, 1), steps=3, members=2))[0]
    assert float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)) < 1e-4
    assert float(jnp.mean(jnp.abs(got - want) > 1e-5)) < 1e-3


@needs_onednn
def test_layerwise_curvature_equals_xla():
    """The per-layer curvature's inputs and factor gradients (a vjp vmapped over C-1
    cotangents: input gradients folded into one call) equal XLA's."""
    x = jax.random.normal(jax.random.key(1), (4, 10, 10, 1))
    out = {}
    for kernel in ("xla", "onednn"):
        model = cnn(10, conv_kernel=kernel)
        params = init_params(model, jax.random.key(0), (10, 10, 1))
        out[kernel] = jax.jit(lambda p, m=model: layer_inputs_and_factor_grads(m, p, x))(
            params)
    close(out["onednn"], out["xla"])


@pytest.mark.slow
def test_importing_jaxal_does_not_load_the_extension():
    code = ("import importlib, pkgutil, sys, jaxal\n"
            "for m in pkgutil.walk_packages(jaxal.__path__, 'jaxal.'):\n"
            "    importlib.import_module(m.name)\n"
            "print('jaxal_onednn' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("value", "fix"), [
    ("onednn", 'needs jaxal\'s oneDNN extension: pip install -e ".[onednn]"'),
    ("fast", "JAXAL_CONV='fast' is not a convolution kernel; set it to one of"),
], ids=["onednn-missing", "unknown"])
def test_run_refuses_a_kernel_it_cannot_use_at_start(value, fix, monkeypatch, tmp_path,
                                                      capfd):
    """``python -m jaxal.run`` refuses at start, one line, exit code 2, nothing written."""
    from jaxal.cli.run import main

    monkeypatch.setenv(batching.CONV_VARIABLE, value)
    monkeypatch.setattr(conv, "extension", lambda: None)   # as without the extra
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(["--dataset", "moons", "--rounds", "1", "--pool-size", "100", "--val-size",
              "20", "--steps", "5", "--out", str(out)])
    err = capfd.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert fix in err[0]
    assert not (out / "config.json").exists()


@pytest.mark.slow
def test_run_records_its_convolution_kernel(monkeypatch, tmp_path, capfd):
    """config.json records the kernel chosen, and the run's first line shows it."""
    from jaxal.cli.run import main

    monkeypatch.setenv(batching.CONV_VARIABLE, "xla")
    out = tmp_path / "run"
    main(["--dataset", "moons", "--rounds", "1", "--pool-size", "100", "--val-size", "20",
          "--steps", "5", "--out", str(out)])
    first = capfd.readouterr().out.splitlines()[0]
    assert first.startswith("devices: ") and first.endswith("; convolutions: XLA")
    assert json.loads((out / "config.json").read_text())["kernels"] == {"conv": "xla"}
