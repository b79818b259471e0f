"""MAP training with optax on a labelled subset of a fixed pool, with static shapes.

The labelled set grows every AL round, but nothing here has a shape that depends on its
size: the pool is fixed, the labelled set is a boolean mask over it, and every step draws a
fixed-size minibatch uniformly (with replacement) from the labelled points. One compiled
training function therefore serves every round.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxal import batching
from jaxal.config import TrainConfig as TrainConfig  # re-exported
from jaxal.errors import ConfigError
from jaxal.model import Classifier, conv_kernel_of
from jaxal.objective import log_likelihood, minibatch_objective

OPTIMIZERS = {
    "adam": optax.adam,
    "sgd": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
}


def check_train_config(config: TrainConfig) -> None:
    """Raise ConfigError, naming the fix, for a training config that cannot work."""
    def need(ok: bool, message: str):
        if not ok:
            raise ConfigError(message)

    need(config.steps > 0, f"training steps must be > 0 (got {config.steps})")
    need(config.batch_size > 0, f"batch size must be > 0 (got {config.batch_size})")
    # inf passes a "> 0" check and trains to NaN.
    need(math.isfinite(config.learning_rate) and config.learning_rate > 0,
         f"learning rate must be a finite number > 0 (got {config.learning_rate})")
    need(math.isfinite(config.prior_precision) and config.prior_precision >= 0,
         f"prior precision must be a finite number >= 0 (got {config.prior_precision})")
    if config.epochs is not None:
        need(math.isfinite(config.epochs) and config.epochs > 0,
             f"epochs must be a finite number > 0 (got {config.epochs}); or train a fixed "
             "number of --steps")
    need(config.min_steps > 0, f"min steps must be > 0 (got {config.min_steps})")
    need(config.max_steps >= config.min_steps,
         f"max steps ({config.max_steps}) must be >= min steps ({config.min_steps}); raise "
         "--max-steps or lower --min-steps")
    need(config.optimizer in OPTIMIZERS,
         f"unknown optimizer {config.optimizer!r}; choose one of {sorted(OPTIMIZERS)}")


def training_steps(config: TrainConfig, num_train: int) -> int:
    """Optimiser steps of one MAP fit on ``num_train`` points.

    ``config.steps`` when ``config.epochs`` is None, else
    ``clip(ceil(epochs · num_train / batch_size), min_steps, max_steps)``.
    """
    if config.epochs is None:
        return config.steps
    # round() first: 0.1 * 30 is 3.0000000000000004, whose ceil would add a step.
    steps = math.ceil(round(config.epochs * num_train / config.batch_size, 9))
    return int(min(max(steps, config.min_steps), config.max_steps))


class TrainInfo(NamedTuple):
    loss: np.ndarray       # [steps] minibatch objective L(θ)/N per step (see training_steps)
    train_nll: float       # mean NLL of the final θ on the whole labelled set (no dropout)


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    # The objective's prior precision: None, the config's one λ; else a scalar or one per
    # weight [P] that training itself learns (``Hyper``: online marginal likelihood).
    prior_precision: Any = None
    hyper: Any = None           # the ``Hyper`` update's own state (None without one)


class Hyper(NamedTuple):
    """A periodic update of the training state's hyperparameters between optimiser steps
    (online marginal-likelihood training: ``jaxal.posteriors.marglik``).

    After every ``every``-th step from step ``burn_in`` on (counting steps done from 1:
    done >= burn_in and done % every == 0), ``update(key, state, x_pool, y_pool,
    labelled_idx, num_labelled) -> state`` runs on the labelled set; static shapes, so
    one compilation serves every call.
    """

    every: int
    burn_in: int
    update: Callable

    def due(self, done):
        """Whether the update runs after ``done`` steps (an int, or traced in a loop)."""
        return (done >= self.burn_in) & (done % self.every == 0)


class Trainer(NamedTuple):
    """A bundle of pure functions for MAP fitting (jit each once; see ``make_trainer``).

    init(params) -> TrainState
    step(key, state, x_pool, y_pool, labelled_idx, num_labelled) -> (state, loss)
    labelled_nll(params, x_pool, y_pool, labelled_idx, num_labelled) -> mean NLL
    result(state) -> params: what a fit returns (the loop's params; default state.params)
    hyper: a ``Hyper`` update between steps, or None
    restart(previous, fresh) -> params: the next round's starting point when it retrains
      from scratch, from the last round's result and a fresh initialisation (None: fresh)
    conv: the kernel the model's convolutions run on (None: it has none); it picks how
      ``train_map`` iterates the steps (``batching.default_train_form``)
    """

    config: TrainConfig
    init: Callable
    step: Callable
    labelled_nll: Callable
    result: Callable = lambda state: state.params
    hyper: Hyper | None = None
    restart: Callable | None = None
    conv: str | None = None


def labelled_indices(labelled: jax.Array) -> jax.Array:
    """Indices of the labelled points first, in a buffer of the pool's (static) length."""
    return jnp.nonzero(labelled, size=labelled.shape[0], fill_value=0)[0]


def labelled_buffer(labelled_idx: jax.Array, num_labelled: jax.Array, capacity: int
                    ) -> tuple[jax.Array, jax.Array]:
    """(idx int [capacity], valid bool [capacity]): the labelled set in a buffer of static
    size, from ``labelled_indices``' output. Padding rows repeat the first labelled point
    (with ``valid`` False, weight 0), never an unlabelled one: unlabelled labels may be
    unknown (out of range), and 0 * NaN is NaN."""
    valid = jnp.arange(capacity) < num_labelled
    return jnp.where(valid, labelled_idx[:capacity], labelled_idx[0]), valid


def random_crop_flip(key: jax.Array, x: jax.Array, pad: int = 4) -> jax.Array:
    """The standard CIFAR augmentation of a minibatch x [n, H, W, C]: each image zero-padded
    by ``pad`` on every side, cropped back to H x W at a uniform offset in [0, 2 pad]², and
    flipped left-right with probability 1/2. Static shapes; one key for the batch."""
    n, h, w, c = x.shape
    key_y, key_x, key_flip = jax.random.split(key, 3)
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = jax.random.randint(key_y, (n,), 0, 2 * pad + 1)
    dx = jax.random.randint(key_x, (n,), 0, 2 * pad + 1)
    crops = jax.vmap(lambda img, i, j: jax.lax.dynamic_slice(img, (i, j, 0), (h, w, c)))(
        padded, dy, dx)
    flip = jax.random.bernoulli(key_flip, 0.5, (n,))
    return jnp.where(flip[:, None, None, None], crops[:, :, ::-1], crops)


def make_trainer(model: Classifier, config: TrainConfig, capacity: int) -> Trainer:
    """MAP training functions for ``model``; ``capacity`` bounds the labelled-set size.

    Every step draws ``batch_size`` labelled pool points uniformly with replacement and
    takes one optimiser step on the minibatch objective of ``jaxal.objective``.
    """
    optimizer = OPTIMIZERS[config.optimizer](config.learning_rate)

    def init(params) -> TrainState:
        return TrainState(params, optimizer.init(params))

    def step(key, state: TrainState, x_pool, y_pool, labelled_idx, num_labelled):
        key_batch, key_dropout = jax.random.split(key)
        pick = jax.random.randint(key_batch, (config.batch_size,), 0, num_labelled)
        idx = labelled_idx[pick]
        x = x_pool[idx]
        if config.augment:   # its own key: runs without augmentation draw as before
            x = random_crop_flip(jax.random.fold_in(key, 2), x)

        prior_precision = (config.prior_precision if state.prior_precision is None
                           else state.prior_precision)

        def loss_fn(params):
            logits = model.apply(params, x, train=True, rngs={"dropout": key_dropout})
            return minibatch_objective(params, logits, y_pool[idx], prior_precision,
                                       num_labelled.astype(logits.dtype))

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return state._replace(params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state), loss

    def labelled_nll(params, x_pool, y_pool, labelled_idx, num_labelled):
        idx, valid = labelled_buffer(labelled_idx, num_labelled, capacity)
        logits = model.apply(params, x_pool[idx])
        return -log_likelihood(logits, y_pool[idx], valid.astype(logits.dtype)) / num_labelled

    return Trainer(config, init, step, labelled_nll, conv=conv_kernel_of(model))


# Jitted: an eager fold_in costs ~0.2 ms a call (primitive dispatch), 2% of a training
# step at batch 32; through jit's fast path ~0.03 ms. Same keys.
_fold_in = jax.jit(jax.random.fold_in)


# Who hears of training's progress (``training_progress``); None: nobody, the default.
_progress: contextvars.ContextVar[Callable[[int, int], None] | None] = \
    contextvars.ContextVar("jaxal_training_progress", default=None)


@contextlib.contextmanager
def training_progress(report: Callable[[int, int], None]) -> Iterator[None]:
    """Call ``report(steps done, steps)`` as ``train_map`` trains in this thread (or
    context): about a hundred times a fit (each waits for its step, so the count is what
    has run; the one-loop form then runs its steps in ``PROGRESS_PIECES`` calls of the
    same program, which changes no result). For a progress bar
    (``jaxal.apps.label_server``); without it training never waits."""
    token = _progress.set(report)
    try:
        yield
    finally:
        _progress.reset(token)


def train_map(key: jax.Array, trainer: Trainer, params, x_pool: jax.Array,
              y_pool: jax.Array, labelled: jax.Array,
              pseudo_labels: jax.Array | None = None) -> tuple[Any, TrainInfo]:
    """Fit θ_MAP on the labelled points of the pool, starting from ``params``.

    On CPU with XLA's convolutions the loop over steps stays in Python around a jitted
    step: XLA:CPU runs the CNN's convolutions ~12x slower inside a ``lax.scan``/while
    loop than as a top-level computation (measured: 190 vs 2,400 images/s), and dispatch
    costs ~0.1 ms a step. On GPU and TPU, and on CPU with oneDNN's convolutions, the
    steps run in one ``lax.fori_loop`` (``jaxal.batching.default_train_form``).

    Args:
      key: PRNG key; step t uses ``fold_in(key, t)`` for its minibatch and dropout.
      trainer: from ``make_trainer``, with ``init``/``step``/``labelled_nll`` jitted.
      params: initial parameters (a fresh init, or the previous round's for a warm start).
      x_pool: [n, ...] pool inputs; y_pool: int [n] labels (only labelled ones are read).
      labelled: bool [n] mask of the labelled set.
      pseudo_labels: optional int [n], the model's labels of unlabelled points to train on
        as well (CEAL), -1 elsewhere. They count in N of the objective; ``train_nll``
        stays the NLL of the true labels.

    Returns:
      (θ_MAP, TrainInfo).
    """
    labelled_idx = labelled_indices(labelled)
    num_labelled = labelled.sum()
    train_idx, num_train, y_train = labelled_idx, num_labelled, y_pool
    if pseudo_labels is not None:
        extra = (pseudo_labels >= 0) & ~labelled
        y_train = jnp.where(extra, pseudo_labels, y_pool).astype(y_pool.dtype)
        train_idx = labelled_indices(labelled | extra)
        num_train = num_labelled + extra.sum()
    # The step count is a Python int (one host read of the set size per fit): the loop
    # runs in Python, so a round with more steps compiles nothing new.
    steps = training_steps(trainer.config, int(num_train))
    state = trainer.init(params)
    report = _progress.get()
    if batching.default_train_form(trainer.conv) == "loop":
        # One program for every step count up to the schedule's largest: no recompile.
        # With a listener it runs in pieces (steps [start, stop) each: the same steps and
        # keys, so the same result), each reported when it has run.
        losses = _loss_buffer(trainer, _step_buffer(trainer.config), key, state, x_pool,
                              y_train, train_idx, num_train)
        bounds = [0, steps] if report is None else progress_bounds(steps)
        if report is not None:
            report(0, steps)
        for start, stop in itertools.pairwise(bounds):
            state, losses = _steps_in_one_loop(trainer, key, state, losses, x_pool,
                                               y_train, train_idx, num_train, start, stop)
            if report is not None:
                jax.block_until_ready(losses)
                report(stop, steps)
        losses = np.asarray(jax.device_get(losses))[:steps]
    else:
        losses = []
        hyper = trainer.hyper
        for t in range(steps):
            state, loss = trainer.step(_fold_in(key, t), state, x_pool, y_train,
                                       train_idx, num_train)
            losses.append(loss)
            if report is not None and ((t + 1) % max(steps // 100, 1) == 0 or t + 1 == steps):
                jax.block_until_ready(loss)     # what has run, not what was dispatched
                report(t + 1, steps)
            if hyper is not None and hyper.due(t + 1):
                state = hyper.update(_hyper_key(key, t), state, x_pool, y_train,
                                     train_idx, num_train)
        # device_get, not jnp.stack: a stack of a new length would compile a new concat.
        losses = np.asarray(jax.device_get(losses))
    params = trainer.result(state)
    nll = trainer.labelled_nll(params, x_pool, y_pool, labelled_idx, num_labelled)
    return params, TrainInfo(losses, float(nll))


def hyper_key(key: jax.Array, t) -> jax.Array:
    """The key of a ``Hyper`` update after step t: step t's own key folded with 3 (the step
    splits its key in two and folds in 2 for augmentation)."""
    return jax.random.fold_in(jax.random.fold_in(key, t), 3)


_hyper_key = jax.jit(hyper_key)


def _step_buffer(config: TrainConfig) -> int:
    """Losses one fit can record: its fixed steps, or the epoch schedule's cap."""
    return config.steps if config.epochs is None else max(config.min_steps, config.max_steps)


# How many calls the one-loop form splits a fit into when its progress is reported.
PROGRESS_PIECES = 20


def progress_bounds(steps: int) -> list[int]:
    """Step bounds [0, ..., steps] of at most ``PROGRESS_PIECES`` near-equal pieces."""
    pieces = max(min(PROGRESS_PIECES, steps), 1)
    return sorted({round(i * steps / pieces) for i in range(pieces + 1)})


@partial(jax.jit, static_argnames=("trainer", "buffer"))
def _loss_buffer(trainer: Trainer, buffer: int, key, state, x_pool, y_train, train_idx,
                 num_train):
    """Zeros [buffer, ...] for the losses of the one-loop form (a step's loss shape)."""
    loss_shape = jax.eval_shape(trainer.step, key, state, x_pool, y_train, train_idx,
                                num_train)[1]
    return jnp.zeros((buffer, *loss_shape.shape), loss_shape.dtype)


@partial(jax.jit, static_argnames=("trainer",))
def _steps_in_one_loop(trainer: Trainer, key, state, losses, x_pool, y_train, train_idx,
                       num_train, start, stop):
    """Training steps ``start`` to ``stop`` - 1 (traced: any range within ``losses``'
    buffer, one program) in one ``lax.fori_loop``, step t keyed ``fold_in(key, t)`` as in
    the Python loop, its loss written to ``losses[t]``."""

    def body(t, carry):
        state, losses = carry
        state, loss = trainer.step(jax.random.fold_in(key, t), state, x_pool, y_train,
                                   train_idx, num_train)
        if trainer.hyper is not None:
            state = jax.lax.cond(
                trainer.hyper.due(t + 1),
                lambda s: trainer.hyper.update(hyper_key(key, t), s, x_pool,
                                               y_train, train_idx, num_train),
                lambda s: s, state)
        return state, losses.at[t].set(loss)

    return jax.lax.fori_loop(start, stop, body, (state, losses))
