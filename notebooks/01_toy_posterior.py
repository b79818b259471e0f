# %% [markdown]
# # The Laplace posterior on a 2-D toy problem
#
# A small MLP is trained to its MAP estimate θ_MAP on the two-moons problem. The *plugin*
# predictive p(y | x, D) ≈ softmax(f(x; θ_MAP)) ignores that other weights explain the data
# almost as well; a Laplace approximation N(θ_MAP, Σ), Σ = (GGN + λ I)⁻¹, averages the
# network's predictions over them. This notebook draws the seed's Figures 2 and 3: the
# predictive probability of class 1 and the predictive entropy over the input plane, for
# the plugin and four Laplace posteriors:
#
# | column | posterior over | covariance Σ |
# |---|---|---|
# | plugin (MAP) | nothing: a point mass at θ_MAP | none |
# | full | all weights | dense (GGN + λ I)⁻¹ |
# | diagonal | all weights | (diag(GGN) + λ)⁻¹ |
# | isotropic | all weights | (trace(GGN)/P + λ)⁻¹ I |
# | last layer | the head; features fixed at θ_MAP | dense, over the head |
#
# The claim to check: away from the training data the plugin stays confident (entropy
# near 0), while the Laplace predictives become uncertain there. A last section shows why
# the predictive should integrate the *linearised* network rather than sample the network.
#
# Runs top to bottom as `python notebooks/01_toy_posterior.py`; with
# `JAXAL_NOTEBOOK_QUICK=1` it uses tiny settings (a smoke test, not good figures).

# %%
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxal.acquisition import entropy  # H[p] = -Σ_c p_c log p_c, in nats
from jaxal.data import toy_2d
from jaxal.model import init_params, mlp, num_params
from jaxal.posteriors import bind
from jaxal.posteriors.laplace import (
    LAPLACE,
    LaplaceOptions,
    fit_laplace,
    posterior_samples,
    prior_precision_of,
)
from jaxal.posteriors.plugin import PLUGIN, PointMass
from jaxal.predictive import PREDICTIVES
from jaxal.train import TrainConfig, make_trainer, train_map

QUICK = os.environ.get("JAXAL_NOTEBOOK_QUICK", "") not in ("", "0")
N_TRAIN = 60 if QUICK else 100         # training points
HIDDEN = (32,)                         # MLP hidden widths
STEPS = 300 if QUICK else 3000         # Adam steps to θ_MAP
SAMPLES = 30 if QUICK else 200         # posterior samples of the Monte Carlo predictive
GRID = 40 if QUICK else 120            # grid points per axis of the figures
PRIOR_PRECISION = 1.0                  # λ of the MAP objective (the start of the evidence fit)
print(f"{'quick' if QUICK else 'full'} mode: {N_TRAIN} points, {STEPS} steps, "
      f"{SAMPLES} samples, {GRID}x{GRID} grid")

# %% [markdown]
# ## Data and MAP training
#
# `toy_2d` draws two interleaved half circles with Gaussian noise. `make_trainer` builds
# the training step of the MAP objective (cross-entropy plus a Gaussian prior of
# precision λ); `train_map` runs it on the labelled points of a pool, here all of them.

# %%
x_np, y_np = toy_2d(0, N_TRAIN, kind="moons")
x, y = jnp.asarray(x_np), jnp.asarray(y_np)
labelled = jnp.ones(N_TRAIN, bool)

model = mlp(2, hidden=HIDDEN)
key_init, key_train, key_fit, key_predict = jax.random.split(jax.random.key(0), 4)
params0 = init_params(model, key_init, (2,))
train_config = TrainConfig(steps=STEPS, batch_size=32, learning_rate=1e-2,
                           prior_precision=PRIOR_PRECISION)
trainer = make_trainer(model, train_config, capacity=N_TRAIN)
trainer = trainer._replace(init=jax.jit(trainer.init), step=jax.jit(trainer.step),
                           labelled_nll=jax.jit(trainer.labelled_nll))
start = time.perf_counter()
params, train_info = train_map(key_train, trainer, params0, x, y, labelled)
accuracy = float((model.apply(params, x).argmax(-1) == y).mean())
print(f"MLP with {num_params(params)} parameters: trained in {time.perf_counter() - start:.1f}"
      f" s, training NLL {train_info.train_nll:.3f}, training accuracy {accuracy:.2f}")

# %% [markdown]
# ## Laplace posteriors
#
# `fit_laplace` builds the generalised Gauss-Newton (GGN) curvature of the summed negative
# log-likelihood at θ_MAP in the requested structure and subset, and adds the prior
# precision λ. With `prior_fit="evidence"` λ is then moved to the maximiser of the Laplace
# evidence log p(D | λ), the curvature kept. The MLP has a few hundred weights, so even the
# dense all-weights covariance (P x P) is cheap.

# %%
POSTERIORS = {   # column title: (subset, structure)
    "full": ("all", "full"),
    "diagonal": ("all", "diag"),
    "isotropic": ("all", "iso"),
    "last layer": ("last-layer", "full"),
}


def laplace_options(subset: str, structure: str) -> LaplaceOptions:
    return LaplaceOptions(curvature="ggn", structure=structure, subset=subset,
                          samples=SAMPLES, prior_fit="evidence")


def laplace(subset: str, structure: str):
    """The Laplace record with these options bound: what the predictives read."""
    return bind(LAPLACE, laplace_options(subset, structure))


posteriors = {}
for title, (subset, structure) in POSTERIORS.items():
    options = laplace_options(subset, structure)
    start = time.perf_counter()
    fit = jax.jit(lambda key, p, o=options: fit_laplace(key, model, p, x, y, jnp.ones(N_TRAIN),
                                                         train_config.prior_precision, o))
    posteriors[title] = jax.block_until_ready(fit(key_fit, params))
    print(f"{title:>10}: λ = {float(prior_precision_of(posteriors[title])):6.3f} "
          f"(evidence), fitted in {time.perf_counter() - start:.1f} s (compile included)")

# %% [markdown]
# ## Predictives on a grid
#
# The predictive p(y | x, D) = E_θ[softmax(f(x; θ))] integrates the network over the
# posterior. We integrate the *linearised* network
# f_lin(x; θ) = f(x; θ_MAP) + J(x)(θ - θ_MAP), J(x) = ∂f(x; θ)/∂θ at θ_MAP, by Monte Carlo:
# θ_s are drawn from the posterior with jaxal's `posterior_samples`, and J(x)(θ_s - θ_MAP)
# is one Jacobian-vector product (`jax.linearize`). The GGN is exactly the curvature of
# this linearised model, so it is the predictive the posterior is built for (Immer et al.
# 2021, "Improving predictions of Bayesian neural nets via local linearization"). For the
# last layer the network is already linear in the head, and jaxal's own Monte Carlo
# predictive `PREDICTIVES["mc"]` is this predictive; we call it. jaxal's other two
# predictives are compared with it further down.

# %%
lo, hi = np.array([-3.0, -2.5]), np.array([3.0, 2.5])
g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], GRID), np.linspace(lo[1], hi[1], GRID))
grid = jnp.asarray(np.stack([g0.ravel(), g1.ravel()], axis=1), jnp.float32)


@jax.jit
def linearised_mc(key, posterior, inputs):
    """1/S Σ_s softmax(f(x; θ_MAP) + J(x)(θ_s - θ_MAP)), θ_s from an all-weights posterior."""
    flat, unravel = ravel_pytree(posterior.params)
    logits, jvp = jax.linearize(lambda theta: model.apply(unravel(theta), inputs), flat)
    samples = posterior_samples(key, posterior, SAMPLES)               # [s, p]
    return jax.lax.map(lambda t: jax.nn.softmax(logits + jvp(t - flat)), samples).mean(0)


def predictive(title: str, posterior, inputs):
    """The figure's predictive of one column (all columns but the plugin are Laplace)."""
    if title == "last layer":
        return PREDICTIVES["mc"].predict(key_predict, model, posterior, inputs,
                                         laplace(*POSTERIORS[title])).probs
    return linearised_mc(key_predict, posterior, inputs)


plugin = PointMass(params)
predictions = {"plugin (MAP)": PREDICTIVES["plugin"].predict(key_predict, model, plugin, grid,
                                                             PLUGIN).probs}
for title, posterior in posteriors.items():
    predictions[title] = predictive(title, posterior, grid)

# %% [markdown]
# ## Figures 2 and 3: predictive probability and entropy
#
# Top row: the predictive probability of class 1, p(y = 1 | x, D); the black line is the
# decision boundary p = 0.5. Bottom row: the predictive entropy H[p(y | x, D)] in nats,
# from 0 (certain) to log 2 ≈ 0.69 (a coin flip). Training points are overlaid.

# %%
PROB_LEVELS = np.linspace(0.0, 1.0, 11)
ENTROPY_LEVELS = np.linspace(0.0, np.log(2.0), 11)


def plot_predictives(predictions: dict, suptitle: str):
    """Two rows (p(class 1), entropy) and one column per predictive, with the data."""
    fig, axes = plt.subplots(2, len(predictions), figsize=(3.2 * len(predictions) + 1.5, 6.4),
                             sharex=True, sharey=True, constrained_layout=True, squeeze=False)
    for col, (title, probs) in enumerate(predictions.items()):
        p1 = np.asarray(probs[:, 1]).reshape(GRID, GRID)
        ent = np.asarray(entropy(probs)).reshape(GRID, GRID)
        top, bottom = axes[0, col], axes[1, col]
        cs_prob = top.contourf(g0, g1, p1, levels=PROB_LEVELS, cmap="RdBu_r")
        if p1.min() < 0.5 < p1.max():
            top.contour(g0, g1, p1, levels=[0.5], colors="k", linewidths=1.0)
        cs_ent = bottom.contourf(g0, g1, ent, levels=ENTROPY_LEVELS, cmap="viridis")
        top.set_title(title)
        for ax in (top, bottom):
            for c, marker, colour in ((0, "o", "tab:blue"), (1, "s", "tab:red")):
                ax.scatter(*x_np[y_np == c].T, s=12, marker=marker, c=colour,
                           edgecolors="white", linewidths=0.5, label=f"training class {c}")
            ax.set_xlabel("$x_1$")
        if col == 0:
            top.set_ylabel("$x_2$")
            bottom.set_ylabel("$x_2$")
    fig.colorbar(cs_prob, ax=axes[0], label="p(y = 1 | x, D)", ticks=PROB_LEVELS[::2])
    fig.colorbar(cs_ent, ax=axes[1], label="predictive entropy (nats)",
                 ticks=ENTROPY_LEVELS[::2], format="%.2f")
    axes[0, 0].legend(loc="lower left", fontsize=7, framealpha=0.8)
    fig.suptitle(suptitle)
    return fig


plot_predictives(predictions, "Two moons, plugin vs Laplace (linearised predictive). Top: "
                 "p(class 1), black line p = 0.5. Bottom: predictive entropy")
if not QUICK:
    plt.show()

# %% [markdown]
# ## The claim in numbers
#
# Mean predictive entropy over the grid points far from every training point (more than
# 1 unit away), and over the training points themselves.

# %%
distance = np.min(np.linalg.norm(np.asarray(grid)[:, None] - x_np[None], axis=-1), axis=1)
far = distance > 1.0
print(f"{far.sum()} of {far.size} grid points are more than 1 unit from the data")
at_data = {"plugin (MAP)": PREDICTIVES["plugin"].predict(key_predict, model, plugin, x,
                                                         PLUGIN).probs}
for title, posterior in posteriors.items():
    at_data[title] = predictive(title, posterior, x)
far_entropy = {title: float(entropy(probs)[far].mean()) for title, probs in predictions.items()}
print(f"{'mean entropy (nats)':>20}  far from the data  on the training points")
for title, value in far_entropy.items():
    print(f"{title:>20}  {value:17.3f}  {float(entropy(at_data[title]).mean()):19.3f}")
for title in ("full", "diagonal", "isotropic"):
    assert far_entropy[title] > 1.5 * far_entropy["plugin (MAP)"], title

# %% [markdown]
# The plugin is near certain away from the data, except along the extension of its decision
# boundary. The all-weights Laplace posteriors (full, diagonal, isotropic) are markedly more
# uncertain there (2.5 to 3 times the plugin's entropy with the full settings). The full one
# stays nearly as sharp as the plugin on the training points; the diagonal and isotropic
# ones, which drop the correlations between weights, are more uncertain on the data too.
# The last-layer posterior barely differs from the plugin on this model: the tanh features
# saturate away from the data, so a linear head on them sees bounded inputs and its logit
# variance stays bounded too; only weights inside the network can make the features, and
# hence the predictive, uncertain there.
#
# ## jaxal's other predictives
#
# jaxal's loop offers two other predictives for Laplace posteriors.
#
# **`mc`** draws θ_s ~ N(θ_MAP, Σ) and averages softmax(f(x; θ_s)) through the *network
# itself*, not its linearisation. The GGN is rank-deficient (rank ≤ N (C - 1) = N here,
# below P, and numerically lower still), so along the directions it leaves unconstrained
# the posterior variance is the prior's, 1/λ, and a network whose weights move that far is
# a different function, near the training points as much as away from them. Same
# posteriors, same λ:

# %%
network_mc = {}
for title, posterior in posteriors.items():
    record = laplace(*POSTERIORS[title])
    predict = jax.jit(lambda key, post, inputs, r=record:
                      PREDICTIVES["mc"].predict(key, model, post, inputs, r).probs)
    network_mc[title] = predict(key_predict, posterior, grid)
    on_data = predict(key_predict, posterior, x)
    print(f"{title:>10}, mc with {SAMPLES} samples: training accuracy "
          f"{float((on_data.argmax(-1) == y).mean()):.2f}, mean entropy on the training "
          f"points {float(entropy(on_data).mean()):.3f} nats")

plot_predictives(network_mc, f"The same posteriors, jaxal's mc predictive ({SAMPLES} samples "
                 "of the network). Top: p(class 1). Bottom: predictive entropy")
if not QUICK:
    plt.show()

# %% [markdown]
# Sampling all weights of the network blurs the predictive towards p = 0.5 everywhere, on
# the training points too, the dense posterior most (its unconstrained directions keep the
# whole prior variance): the uncertainty no longer tells the data from the empty plane.
# The last-layer column is unchanged, as sampling a linear head *is* the linearised
# predictive. With the all-weights `mc` predictive the evidence's λ is too small; jaxal's
# default prior fit, `val-nll`, picks λ by the validation NLL of the run's own predictive
# instead.
#
# **`probit`** replaces the Monte Carlo integral by a closed form: with σ²_c(x) the variance
# of logit c under the linearised model, p(y | x, D) ≈ softmax(f(x; θ_MAP) / √(1 + π/8 σ²)).
# jaxal has it for the last layer and for the all-weights diagonal, isotropic and KFAC
# posteriors (not for the dense all-weights covariance). It scales each logit by its own
# variance and ignores the correlation between the logits, so it is an approximation of the
# linearised predictive, not the same thing:

# %%
print(f"{'posterior':>10}  max |Δp(class 1)| vs linearised MC  mean entropy far from data "
      f"(probit / linearised MC)")
for title, posterior in posteriors.items():
    if title == "full":
        continue
    probs = PREDICTIVES["probit"].predict(key_predict, model, posterior, grid,
                                          laplace(*POSTERIORS[title])).probs
    gap = float(jnp.abs(probs[:, 1] - predictions[title][:, 1]).max())
    print(f"{title:>10}  {gap:34.3f}  {float(entropy(probs)[far].mean()):12.3f} / "
          f"{far_entropy[title]:.3f}")

# %% [markdown]
# ## Conclusion
#
# The plugin predictive extrapolates the MAP network's confident logits everywhere: far
# from both moons it is as sure of its answer as next to the training points. Integrating
# the linearised network over an all-weights Laplace posterior keeps the decision boundary
# where the data put it and raises the entropy where the data say nothing, which is what
# uncertainty-based acquisition needs. The dense posterior does so while staying sharp on
# the data; the diagonal and isotropic ones, which drop the correlations between weights,
# are less confident everywhere. A last-layer posterior can only be as uncertain as its
# features allow. How the predictive is computed matters as much as the posterior:
# sampling the whole network through a GGN posterior destroys the fit, and the per-class
# probit is a visible approximation on this problem. On the MNIST CNN only the last-layer,
# diagonal, isotropic and KFAC forms fit in memory; `notebooks/03_hessian_variants.py`
# compares their cost and accuracy.
