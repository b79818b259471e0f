"""Tests for jaxal.train: MAP fitting on a labelled subset of a fixed pool, static shapes."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import count_compilations
from jax.flatten_util import ravel_pytree

from jaxal.errors import ConfigError
from jaxal.model import init_params, mlp
from jaxal.objective import map_objective
from jaxal.train import (
    TrainConfig,
    check_train_config,
    labelled_indices,
    make_trainer,
    train_map,
    training_steps,
)

POOL_SIZE = 200
CAPACITY = 64
MODEL = mlp(2)


def blobs(num_points=POOL_SIZE, seed=0):
    """Two well separated Gaussian blobs at ±(2, 2): a linearly separable 2-D pool."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, num_points)
    x = np.where(y[:, None] == 1, 2.0, -2.0) + 0.5 * rng.standard_normal((num_points, 2))
    return x.astype(np.float32), y.astype(np.int32)


X_POOL, Y_POOL = blobs()


def labelled_mask(per_class):
    """``per_class`` labelled points of each class, never pool point 0.

    Pool point 0 stays unlabelled on purpose: ``labelled_indices`` pads with index 0.
    """
    mask = np.zeros(POOL_SIZE, bool)
    for c in (0, 1):
        mask[1 + np.flatnonzero(Y_POOL[1:] == c)[:per_class]] = True
    return mask


def jit_trainer(trainer):
    """Jit the trainer's functions as ``jaxal.loop.make_learner`` does."""
    return trainer._replace(init=jax.jit(trainer.init), step=jax.jit(trainer.step),
                            labelled_nll=jax.jit(trainer.labelled_nll))


def make_jitted_trainer(**config):
    config = {"steps": 200, "batch_size": 16, "learning_rate": 1e-2, **config}
    return jit_trainer(make_trainer(MODEL, TrainConfig(**config), CAPACITY))


def flat(params):
    return np.asarray(ravel_pytree(params)[0])


@pytest.fixture(scope="module")
def params0():
    return jax.jit(lambda key: init_params(MODEL, key, (2,)))(jax.random.key(0))


@pytest.fixture(scope="module")
def trainer():
    return make_jitted_trainer(prior_precision=1.0)


@pytest.fixture(scope="module")
def fitted(trainer, params0):
    """θ_MAP on 20 labels (10 per class), and its TrainInfo."""
    labelled = labelled_mask(10)
    params, info = train_map(jax.random.key(1), trainer, params0, jnp.asarray(X_POOL),
                             jnp.asarray(Y_POOL), jnp.asarray(labelled))
    return params, info, labelled


def test_labelled_indices_puts_labelled_points_first():
    labelled = jnp.array([False, True, False, True, True, False])
    np.testing.assert_array_equal(labelled_indices(labelled), [1, 3, 4, 0, 0, 0])


@pytest.mark.slow
def test_training_fits_the_labelled_points(fitted, params0):
    params, info, labelled = fitted
    assert info.loss.shape == (200,)
    assert np.mean(info.loss[-10:]) < 0.2 * info.loss[0]

    # train_nll is the mean NLL over the labelled points, checked against numpy.
    logits = np.asarray(MODEL.apply(params, X_POOL[labelled]), np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    nll = -log_probs[np.arange(labelled.sum()), Y_POOL[labelled]].mean()
    np.testing.assert_allclose(info.train_nll, nll, rtol=1e-4, atol=1e-6)
    assert info.train_nll < 0.05
    assert (logits.argmax(axis=1) == Y_POOL[labelled]).all()

    # The (sum-scaled) MAP objective on the labelled set went down a lot; measured above its
    # θ-independent part, the prior's normaliser -P/2 log(λ/2π) (λ = 1).
    constant = -0.5 * flat(params0).size * math.log(1.0 / (2 * math.pi))

    def objective(params):
        return float(map_objective(params, MODEL.apply(params, X_POOL[labelled]),
                                   jnp.asarray(Y_POOL[labelled]), 1.0)) - constant

    assert 0 < objective(params) < 0.2 * objective(params0)
    # Separable blobs: the fit generalises to the unlabelled pool.
    accuracy = (MODEL.apply(params, X_POOL).argmax(axis=1) == Y_POOL).mean()
    assert accuracy > 0.95


def test_training_never_reads_unlabelled_points(trainer, fitted, params0):
    """Garbage labels and inputs at unlabelled points leave θ_MAP bit-for-bit unchanged.

    (``labelled_nll`` does read pool point 0 as padding, with weight 0: see the next test.)
    """
    params, info, labelled = fitted
    y_garbage = np.where(labelled, Y_POOL, 1 - Y_POOL)  # flipped labels
    x_garbage = np.where(labelled[:, None], X_POOL, 100.0 - X_POOL)
    params_garbage, info_garbage = train_map(
        jax.random.key(1), trainer, params0, jnp.asarray(x_garbage), jnp.asarray(y_garbage),
        jnp.asarray(labelled))
    np.testing.assert_array_equal(flat(params_garbage), flat(params))
    np.testing.assert_array_equal(info_garbage.loss, info.loss)
    np.testing.assert_allclose(info_garbage.train_nll, info.train_nll, rtol=1e-6)


def test_labelled_nll_ignores_out_of_range_labels_of_unlabelled_points(params0):
    """Unjitted, as the library defines it: XLA happens to hide the NaN under jit."""
    labelled = labelled_mask(10)
    assert not labelled[0]
    hidden = np.where(labelled, Y_POOL, 2)  # "unknown" sentinel: num_classes
    trainer = make_trainer(MODEL, TrainConfig(), CAPACITY)
    idx = labelled_indices(jnp.asarray(labelled))
    num_labelled = jnp.asarray(labelled.sum())
    nll = trainer.labelled_nll(params0, jnp.asarray(X_POOL), jnp.asarray(Y_POOL), idx,
                               num_labelled)
    nll_hidden = trainer.labelled_nll(params0, jnp.asarray(X_POOL), jnp.asarray(hidden), idx,
                                      num_labelled)
    np.testing.assert_allclose(nll_hidden, nll, rtol=1e-6)


def test_strong_prior_shrinks_parameters_to_zero(params0):
    labelled = jnp.asarray(labelled_mask(10))

    def fit(prior_precision):
        trainer = make_jitted_trainer(prior_precision=prior_precision)
        return train_map(jax.random.key(1), trainer, params0, jnp.asarray(X_POOL),
                         jnp.asarray(Y_POOL), labelled)

    params_free, _ = fit(0.0)
    params_shrunk, info_shrunk = fit(1e4)
    norm_free, norm_shrunk = np.linalg.norm(flat(params_free)), np.linalg.norm(flat(params_shrunk))
    assert norm_shrunk < 0.1 * norm_free
    assert norm_shrunk < 0.1 * np.linalg.norm(flat(params0))
    # θ ≈ 0 means logits ≈ 0: the predictive is uniform over the 2 classes.
    assert abs(info_shrunk.train_nll - math.log(2)) < 0.05


def test_same_key_same_params_different_key_different_params(trainer, fitted, params0):
    params, info, labelled = fitted
    args = (params0, jnp.asarray(X_POOL), jnp.asarray(Y_POOL), jnp.asarray(labelled))
    params_again, info_again = train_map(jax.random.key(1), trainer, *args)
    np.testing.assert_array_equal(flat(params_again), flat(params))
    np.testing.assert_array_equal(info_again.loss, info.loss)
    params_other, _ = train_map(jax.random.key(2), trainer, *args)
    assert np.abs(flat(params_other) - flat(params)).max() > 1e-3


def test_more_labels_do_not_recompile(trainer, fitted, params0):
    """The labelled set is a mask over a fixed pool: one compilation serves every size.

    ``fitted`` has trained with 20 labels, compiling everything ``train_map`` runs; training
    again with 30 and 40 labels must not compile anything.
    """
    x_pool, y_pool = jnp.asarray(X_POOL), jnp.asarray(Y_POOL)
    compiles = []
    with count_compilations() as fresh:
        jax.jit(lambda a: a * 3 + 1)(x_pool)  # a fresh function: the counter must see it
    compiles.append(fresh.count)
    for per_class in (15, 20):  # 30, 40 labels
        labelled = jnp.asarray(labelled_mask(per_class))  # device_put: no compilation
        with count_compilations() as compiled:
            params, info = train_map(jax.random.key(per_class), trainer, params0, x_pool,
                                     y_pool, labelled)
            jax.block_until_ready(params)
        compiles.append(compiled.count)
        assert np.isfinite(info.train_nll)

    assert compiles == [1, 0, 0]


@pytest.mark.parametrize(("epochs", "num_train", "expected"), [
    (None, 7, 200),          # no schedule: the fixed step count
    (10.0, 20, 100),         # ceil(10 * 20 / 16) = 13 -> the floor
    (50.0, 40, 125),         # ceil(50 * 40 / 16) = 125, inside the bounds
    (0.1, 30, 100),          # 0.1 * 30 / 16 is not an integer: the floor again
    (1000.0, 64, 1000),      # 4,000 steps -> the cap
    (3.0, 80, 100),          # 15 steps -> the floor
])
def test_training_steps_follow_epochs(epochs, num_train, expected):
    config = TrainConfig(steps=200, batch_size=16, epochs=epochs, min_steps=100,
                         max_steps=1000)
    assert training_steps(config, num_train) == expected


def test_training_steps_exact_epochs_do_not_round_up():
    # 0.1 * 30 is 3.0000000000000004 in floats: exactly 3 steps, not 4.
    config = TrainConfig(batch_size=1, epochs=0.1, min_steps=1, max_steps=10)
    assert training_steps(config, 30) == 3


def test_epoch_schedule_grows_with_the_labelled_set_without_recompiling(params0):
    """Each fit takes ceil(epochs · N / batch) steps; a bigger set compiles nothing new."""
    trainer = make_jitted_trainer(epochs=40.0, min_steps=20, max_steps=1000)
    small, large = labelled_mask(4), labelled_mask(20)
    _, info = train_map(jax.random.key(0), trainer, params0, X_POOL, Y_POOL, small)
    assert info.loss.shape == (20,)                  # 40 * 8 / 16 = 20 = the floor
    with count_compilations() as compiled:
        _, info = train_map(jax.random.key(0), trainer, params0, X_POOL, Y_POOL, large)
    assert info.loss.shape == (100,)                 # 40 * 40 / 16
    assert compiled.count == 0


@pytest.mark.parametrize(("config", "fix"), [
    (dict(epochs=0.0), "epochs must be a finite number > 0"),
    (dict(epochs=math.inf), "epochs must be a finite number > 0"),
    (dict(epochs=5.0, min_steps=0), "min steps must be > 0"),
    (dict(min_steps=50, max_steps=10), "max steps (10) must be >= min steps (50)"),
    (dict(epochs=5.0, min_steps=50, max_steps=10), "max steps (10) must be >= min steps"),
])
def test_bad_epoch_schedules_are_refused(config, fix):
    with pytest.raises(ConfigError, match=re.escape(fix)):
        check_train_config(TrainConfig(**config))


@pytest.mark.parametrize("epochs", [None, 40.0])
def test_python_loop_and_one_fori_loop_train_the_same(params0, monkeypatch, epochs):
    """CPU's form (Python loop around the jitted step) and GPU/TPU's (one lax.fori_loop
    program) take the same steps with the same keys: the same θ_MAP and losses; the loop
    form serves a new step count of the epoch schedule without compiling again."""
    import jaxal.batching

    config = {"steps": 60} if epochs is None else {"epochs": epochs, "min_steps": 20,
                                                   "max_steps": 1000}
    trainer = make_jitted_trainer(prior_precision=1.0, **config)
    got = {}
    for form in jaxal.batching.TRAIN_FORMS:
        monkeypatch.setattr(jaxal.batching, "default_train_form", lambda conv, f=form: f)
        got[form] = train_map(jax.random.key(3), trainer, params0, X_POOL, Y_POOL,
                              labelled_mask(4))
    (p_py, info_py), (p_loop, info_loop) = got["python"], got["loop"]
    assert info_loop.loss.shape == info_py.loss.shape == ((60,) if epochs is None else (20,))
    np.testing.assert_allclose(info_loop.loss, info_py.loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(flat(p_loop), flat(p_py), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(info_loop.train_nll, info_py.train_nll, rtol=1e-4)
    if epochs is not None:
        with count_compilations() as compiled:
            _, info = train_map(jax.random.key(3), trainer, params0, X_POOL, Y_POOL,
                                labelled_mask(20))
        assert info.loss.shape == (100,) and compiled.count == 0


def test_loop_form_reported_in_pieces_trains_the_same(params0, monkeypatch):
    """With a progress listener the one-loop form runs its steps in pieces of the same
    program: the same θ_MAP and losses as one call, bit for bit, reported in order up to
    the step count, and no compilation for the pieces."""
    import jaxal.batching
    from jaxal.train import PROGRESS_PIECES, progress_bounds, training_progress

    monkeypatch.setattr(jaxal.batching, "default_train_form", lambda conv: "loop")
    trainer = make_jitted_trainer(prior_precision=1.0, steps=45)
    whole = train_map(jax.random.key(3), trainer, params0, X_POOL, Y_POOL, labelled_mask(4))
    seen = []
    with count_compilations() as compiled, training_progress(lambda d, n: seen.append((d, n))):
        pieces = train_map(jax.random.key(3), trainer, params0, X_POOL, Y_POOL,
                           labelled_mask(4))
    assert compiled.count == 0
    np.testing.assert_array_equal(flat(pieces[0]), flat(whole[0]))
    np.testing.assert_array_equal(pieces[1].loss, whole[1].loss)
    done = [d for d, n in seen]
    assert all(n == 45 for _, n in seen) and done[0] == 0 and done[-1] == 45
    assert done == sorted(done) and len(done) == PROGRESS_PIECES + 1
    assert progress_bounds(3) == [0, 1, 2, 3] and progress_bounds(45)[-1] == 45


def test_train_form_follows_the_convolution_kernel():
    """On CPU: one fori_loop program when the convolutions run on oneDNN (custom calls,
    as fast inside a loop), a Python loop for XLA's convolutions or no convolutions; the
    trainer carries its model's kernel."""
    from jaxal.batching import default_train_form
    from jaxal.model import cnn

    assert default_train_form("onednn") == "loop"
    assert default_train_form("xla") == default_train_form(None) == "python"
    assert make_trainer(MODEL, TrainConfig(), CAPACITY).conv is None
    assert make_trainer(cnn(10, conv_kernel="xla"), TrainConfig(), CAPACITY).conv == "xla"
    assert make_trainer(cnn(10, conv_kernel="onednn"), TrainConfig(),
                        CAPACITY).conv == "onednn"


def test_random_crop_flip_is_a_padded_crop_flipped_or_not():
    """Each output image is the zero-padded input cropped at some offset in [0, 8]², then
    flipped left-right or not; offsets and flips vary over the batch; keyed."""
    from jaxal.train import random_crop_flip

    x = jax.random.normal(jax.random.key(0), (64, 6, 5, 2))
    out = np.asarray(random_crop_flip(jax.random.key(1), x))
    assert out.shape == x.shape
    padded = np.pad(np.asarray(x), ((0, 0), (4, 4), (4, 4), (0, 0)))
    found = []
    for n in range(64):
        matches = [(i, j, f) for i in range(9) for j in range(9) for f in (False, True)
                   if np.array_equal(out[n], (lambda c: c[:, ::-1] if f else c)(
                       padded[n, i:i + 6, j:j + 5]))]
        assert matches, n
        found.append(matches[0])
    assert {f for *_, f in found} == {False, True}
    assert len({(i, j) for i, j, _ in found}) > 10
    np.testing.assert_array_equal(np.asarray(random_crop_flip(jax.random.key(1), x)), out)
    assert not np.array_equal(np.asarray(random_crop_flip(jax.random.key(2), x)), out)


@pytest.mark.slow
def test_augmented_training_steps_see_other_images_and_toy_inputs_refuse_it():
    """The same step key trains on other (augmented) images with augment on; a run on
    non-image inputs refuses augmentation before any training, naming the fix."""
    from jaxal.config import ALConfig
    from jaxal.errors import ConfigError as LoopConfigError
    from jaxal.loop import make_learner
    from jaxal.model import cnn

    model = cnn(3, channels=(2,), hidden=4)
    params = init_params(model, jax.random.key(0), (8, 8, 1))
    x = jax.random.normal(jax.random.key(1), (20, 8, 8, 1))
    y = jnp.arange(20) % 3
    steps = {}
    for augment in (False, True):
        trainer = make_trainer(model, TrainConfig(batch_size=8, augment=augment), 20)
        state, _ = trainer.step(jax.random.key(2), trainer.init(params), x, y,
                                jnp.arange(20), jnp.asarray(20))
        steps[augment] = flat(state.params)
    assert not np.allclose(steps[False], steps[True])
    with pytest.raises(LoopConfigError, match=r"--augment crops and flips images.*\(2,\)"):
        make_learner(mlp(2), ALConfig(train=TrainConfig(augment=True)), (2,), 2)
