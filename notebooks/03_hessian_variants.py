# %% [markdown]
# # Curvature variants: what they cost and what they keep
#
# A Laplace posterior N(θ_MAP, (C + λ I)⁻¹) needs a curvature C of the summed negative
# log-likelihood at θ_MAP. jaxal offers the exact Hessian and the generalised Gauss-Newton
# (GGN), stored in several structures:
#
# | structure | stores | numbers stored | jaxal (`jaxal.curvature`) |
# |---|---|---|---|
# | full | the dense P x P matrix | P² | `ggn_full`, `hessian_full` |
# | diagonal | its diagonal | P | `ggn_diagonal_layerwise`, `ggn_diagonal` |
# | isotropic | trace / P, one number | 1 | `ggn_isotropic` |
# | KFAC | per layer l, A_l ⊗ G_l ≈ its block | Σ_l (K_l+1)² + out_l² | `kfac_factors` |
# | last layer | the dense GGN of the head alone | ((d+1) C)² | `linear_head_ggn` |
#
# On an MLP small enough that every form fits (3 classes of 2-D points), we time each
# form, count what it stores, look at the matrices and their spectra, and measure how well
# the cheap forms approximate the full GGN, both as matrices and through the predictive
# variance they imply. Timings of the real-size CNN on MNIST (130,890 weights, where the
# dense forms no longer fit) are in `benchmarks/hessian_variants.py` and its table
# `benchmarks/results/hessian_variants.md`.
#
# Runs top to bottom as `python notebooks/03_hessian_variants.py`; with
# `JAXAL_NOTEBOOK_QUICK=1` it uses a tiny model and few points (a smoke test).

# %%
import os
import statistics
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from jax.flatten_util import ravel_pytree
from matplotlib.colors import SymLogNorm

from jaxal.curvature.ggn import ggn_diagonal, ggn_full, hessian_full
from jaxal.curvature.last_layer import linear_head_ggn
from jaxal.curvature.layerwise import ggn_diagonal_layerwise, kfac_factors, sampled_factors
from jaxal.model import apply_head, init_params, mlp, num_params
from jaxal.posteriors.laplace import (
    LaplaceOptions,
    fit_laplace,
    head_params,
    last_layer_logit_variance,
    posterior_covariance,
    weights_logit_variance,
)
from jaxal.train import TrainConfig, make_trainer, train_map

QUICK = os.environ.get("JAXAL_NOTEBOOK_QUICK", "") not in ("", "0")
N_TRAIN = 60 if QUICK else 300         # training points, 3 classes
HIDDEN = (8, 8) if QUICK else (32, 32)
STEPS = 300 if QUICK else 2000         # Adam steps to θ_MAP
REPEATS = 2 if QUICK else 5            # timed calls per form (median reported)
PRIOR_PRECISION = 1.0                  # λ, training and posterior
print(f"{'quick' if QUICK else 'full'} mode: {N_TRAIN} points, hidden {HIDDEN}, "
      f"{STEPS} steps, median of {REPEATS} calls")

# %% [markdown]
# ## A small problem and its MAP fit
#
# Three Gaussian blobs in the plane and an MLP with two tanh hidden layers, trained to
# θ_MAP with the same objective the AL loop uses (`make_trainer`, `train_map`).

# %%
rng = np.random.default_rng(0)
NUM_CLASSES = 3
centres = 2.0 * np.stack([np.cos(2 * np.pi * np.arange(3) / 3),
                          np.sin(2 * np.pi * np.arange(3) / 3)], axis=1)
y_np = np.arange(N_TRAIN) % NUM_CLASSES
x_np = (centres[y_np] + 0.8 * rng.standard_normal((N_TRAIN, 2))).astype(np.float32)
x, y = jnp.asarray(x_np), jnp.asarray(y_np, jnp.int32)

model = mlp(NUM_CLASSES, hidden=HIDDEN)
key_init, key_train, key_fit = jax.random.split(jax.random.key(0), 3)
train_config = TrainConfig(steps=STEPS, batch_size=32, learning_rate=1e-2,
                           prior_precision=PRIOR_PRECISION)
trainer = make_trainer(model, train_config, capacity=N_TRAIN)
trainer = trainer._replace(init=jax.jit(trainer.init), step=jax.jit(trainer.step),
                           labelled_nll=jax.jit(trainer.labelled_nll))
params, train_info = train_map(key_train, trainer, init_params(model, key_init, (2,)), x, y,
                               jnp.ones(N_TRAIN, bool))
flat_params, unravel = ravel_pytree(params)
P = num_params(params)
accuracy = float((model.apply(params, x).argmax(-1) == y).mean())
print(f"MLP {HIDDEN}: P = {P} parameters, training NLL {train_info.train_nll:.3f}, "
      f"accuracy {accuracy:.2f}")

# Where each layer's [kernel; bias] block sits in the raveled parameter vector.
position = unravel(jnp.arange(P, dtype=jnp.float32))["params"]


def layer_index(path: tuple[str, ...]) -> np.ndarray:
    """Raveled indices of a layer's [kernel; bias], row-major [K+1, out]: KFAC's order."""
    node = position
    for part in path:
        node = node[part]
    kernel = np.asarray(node["kernel"]).reshape(-1, node["bias"].size)
    return np.concatenate([kernel, np.asarray(node["bias"])[None]]).astype(int).ravel()


# %% [markdown]
# ## Cost of each form
#
# Each form is one jitted function of (θ, x, y). We compile it ahead of time
# (`jax.jit(f).lower(...).compile()`, timed apart), call it once more to warm up, and
# report the median of a few calls, each waited for with `jax.block_until_ready`. Memory:
# the bytes of the curvature arrays a posterior keeps, and XLA's own estimate of the
# temporaries the computation needs (`compiled.memory_analysis()`).
#
# The GGN forms need C - 1 backward passes per example (the softmax Hessian has rank
# C - 1); the diagonal comes either from per-example vector-Jacobian products over all
# parameters (`curvature.ggn.ggn_diagonal`) or layer by layer from layer inputs and
# output gradients (`curvature.layerwise.ggn_diagonal_layerwise`, what `fit_laplace` uses);
# "sampled" replaces the C - 1 exact columns by one sampled label per example (`ggn-mc`).
# The exact Hessian is `jax.hessian` of the loss: P forward-over-reverse passes.

# %%
def features_of(p, inputs):
    return model.apply(p, inputs, method=model.features)


FORMS = {
    "Hessian, full": lambda p, x, y: hessian_full(model.apply, p, x, y),
    "GGN, full": lambda p, x, y: ggn_full(model.apply, p, x, y),
    "GGN, diagonal (per example)": lambda p, x, y: ggn_diagonal(model.apply, p, x, y),
    "GGN, diagonal (layerwise)": lambda p, x, y: ggn_diagonal_layerwise(model, p, x),
    "GGN, diagonal (sampled)": lambda p, x, y: ggn_diagonal_layerwise(
        model, p, x, factors_fn=sampled_factors(key_fit)),
    "GGN, isotropic": lambda p, x, y: ggn_diagonal_layerwise(model, p, x).mean(),
    "GGN, KFAC": lambda p, x, y: kfac_factors(model, p, x),
    "GGN, last layer full": lambda p, x, y: linear_head_ggn(head_params(p),
                                                            features_of(p, x)),
}


def human(num_bytes: float) -> str:
    """Bytes in B / KiB / MiB."""
    for unit in ("B", "KiB", "MiB"):
        if num_bytes < 1024 or unit == "MiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError


def measure(fn, *args):
    """(output, compile s, median run s, stored bytes, XLA temporary bytes)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    out = jax.block_until_ready(compiled(*args))
    runs = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - start)
    stored = sum(leaf.nbytes for leaf in jax.tree.leaves(out))
    return out, compile_s, statistics.median(runs), stored, \
        compiled.memory_analysis().temp_size_in_bytes


curvatures, costs = {}, {}
print(f"{'form':<28} {'compile s':>9} {'run ms':>9} {'stored':>10} {'XLA temp':>10}")
for name, fn in FORMS.items():
    curvatures[name], *costs[name] = measure(fn, params, x, y)
    compile_s, run_s, stored, temp = costs[name]
    print(f"{name:<28} {compile_s:9.2f} {1e3 * run_s:9.2f} {human(stored):>10} "
          f"{human(temp):>10}")
eigh_out, eigh_compile, eigh_run, _, _ = measure(jnp.linalg.eigh, curvatures["GGN, full"])
print(f"(a full posterior also needs the eigendecomposition of the P x P matrix: "
      f"{1e3 * eigh_run:.1f} ms, compile {eigh_compile:.2f} s)")

# %%
names = list(costs)
fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
ypos = np.arange(len(names))
ax_time.barh(ypos - 0.2, [1e3 * costs[n][1] for n in names], 0.4, label="run (median)")
ax_time.barh(ypos + 0.2, [1e3 * costs[n][0] for n in names], 0.4, label="compile")
ax_time.set(xscale="log", xlabel="milliseconds (log scale)",
            title=f"Time to build the curvature (N = {N_TRAIN}, P = {P})")
ax_mem.barh(ypos - 0.2, [costs[n][2] for n in names], 0.4, label="stored curvature")
ax_mem.barh(ypos + 0.2, [max(costs[n][3], 1) for n in names], 0.4,
            label="XLA temporaries (estimate)")
ax_mem.set(xscale="log", xlabel="bytes (log scale)", title="Memory")
for ax in (ax_time, ax_mem):
    ax.set_yticks(ypos, names if ax is ax_time else [""] * len(names))
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize=8)
if not QUICK:
    plt.show()

# %% [markdown]
# On a model this small the layerwise forms (diagonal, isotropic, KFAC, sampled) run in
# well under a millisecond, about one backward pass, and their compilation dominates. The
# dense forms cost more, the exact Hessian (P forward-over-reverse passes) the most, with
# the largest temporaries. What scales is the stored size: P² numbers for the dense forms
# against P (diagonal), 1 (isotropic) and the sum of the squared layer widths (KFAC). On
# the CNN (P = 130,890) a dense P x P matrix would take 68.5 GB, which is why jaxal refuses
# it there; the exact Hessian is out of reach for the same reason.
#
# ## What the full GGN looks like
#
# The full GGN as an image (symmetric log colour scale) beside its block-diagonal KFAC
# approximation (assembled densely here, only for the picture), and the diagonal, which
# is all the diagonal form keeps, with KFAC's diagonal and the isotropic form's single
# value. Lines separate the layers in the raveled parameter order (within a layer: bias,
# then kernel).

# %%
ggn = np.asarray(curvatures["GGN, full"], np.float64)
hessian = np.asarray(curvatures["Hessian, full"], np.float64)
diagonal = np.asarray(curvatures["GGN, diagonal (layerwise)"], np.float64)
isotropic = float(curvatures["GGN, isotropic"])
kfac = np.zeros_like(ggn)
for path, (a, g) in curvatures["GGN, KFAC"].items():
    index = layer_index(path)
    kfac[np.ix_(index, index)] = np.kron(np.asarray(a), np.asarray(g))
np.testing.assert_allclose(diagonal, np.diag(ggn), rtol=1e-3, atol=1e-4 * np.abs(ggn).max())

edges = np.cumsum([0] + [sum(leaf.size for leaf in jax.tree.leaves(layer))
                         for layer in (params["params"]["body"][k]
                                       for k in sorted(params["params"]["body"]))]
                  + [sum(leaf.size for leaf in jax.tree.leaves(params["params"]["head"]))])
scale = np.abs(ggn).max()
norm = SymLogNorm(linthresh=1e-4 * scale, vmin=-scale, vmax=scale)
fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), constrained_layout=True,
                         gridspec_kw={"width_ratios": [1, 1, 1.4]})
for ax, (title, matrix) in zip(axes[:2], (("full GGN", ggn), ("KFAC (block diagonal)", kfac)),
                               strict=True):
    image = ax.imshow(matrix, cmap="RdBu_r", norm=norm, interpolation="nearest")
    for e in edges[1:-1]:
        ax.axhline(e - 0.5, color="k", lw=0.5)
        ax.axvline(e - 0.5, color="k", lw=0.5)
    ax.set(title=f"{title} [{P} x {P}]", xlabel="parameter index", ylabel="parameter index")
fig.colorbar(image, ax=axes[:2], label="curvature entry (symmetric log scale)", shrink=0.85)
ax = axes[2]
index = np.arange(P)
ax.plot(index, diagonal, ".", ms=3, label="GGN diagonal (the diagonal form)")
ax.plot(index, np.diag(kfac), ".", ms=2, alpha=0.6, label="KFAC's diagonal")
ax.axhline(isotropic, color="k", ls="--", lw=1, label="isotropic: trace / P")
for e in edges[1:-1]:
    ax.axvline(e - 0.5, color="gray", lw=0.5)
ax.set(yscale="log", xlabel="parameter index", ylabel="curvature (log scale)",
       title="Diagonal entries")
ax.legend(fontsize=8)
fig.suptitle("GGN of the summed NLL at θ_MAP; layers: Dense_0 | Dense_1 | head")
if not QUICK:
    plt.show()

# %% [markdown]
# ## Hessian and GGN spectra
#
# The Hessian of the loss is the GGN plus a term weighted by the residuals,
# Σ_n Σ_c (p_nc - y_nc) ∂²f_nc/∂θ². That term vanishes only where the fit is exact, so the
# Hessian is indefinite at θ_MAP, while the GGN is positive semi-definite by construction,
# of rank at most N (C - 1). jaxal clips negative Hessian eigenvalues to 0 before adding
# the prior.

# %%
# In float64: float32 rounding alone puts eigenvalues of either sign near 1e-7 x the largest.
with jax.enable_x64(True):
    params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    x64 = jnp.asarray(x_np, jnp.float64)
    ggn_eig = np.linalg.eigvalsh(np.asarray(ggn_full(model.apply, params64, x64)))[::-1]
    h64 = np.asarray(hessian_full(model.apply, params64, x64, y))
    hessian_eig = np.linalg.eigvalsh(0.5 * (h64 + h64.T))[::-1]
floor = 1e-12 * ggn_eig[0]          # below this, float64 eigenvalues are rounding noise
negative = hessian_eig < -floor
print(f"GGN: largest eigenvalue {ggn_eig[0]:.3g}, {(ggn_eig > floor).sum()} of {P} above "
      f"1e-12 x the largest (rank <= N (C - 1) = {N_TRAIN * (NUM_CLASSES - 1)}), smallest "
      f"{ggn_eig[-1]:.2g}")
print(f"Hessian: {negative.sum()} of {P} eigenvalues below -1e-12 x the largest, the most "
      f"negative {hessian_eig.min():.3g}; relative Frobenius distance to the GGN "
      f"{np.linalg.norm(hessian - ggn) / np.linalg.norm(ggn):.3f}")

fig, ax = plt.subplots(figsize=(8, 4.2), constrained_layout=True)
rank = np.arange(1, P + 1)
ax.plot(rank, np.where(ggn_eig > floor, ggn_eig, np.nan), label="GGN")
ax.plot(rank, np.where(hessian_eig > floor, hessian_eig, np.nan), "--",
        label="Hessian, eigenvalues > 0")
ax.plot(rank[negative], -hessian_eig[negative], "rx", ms=3,
        label="Hessian, eigenvalues < 0 (|λ| shown)")
ax.axhline(PRIOR_PRECISION, color="gray", lw=0.8, ls=":",
           label=f"prior precision λ = {PRIOR_PRECISION:g}")
ax.set(yscale="log", ylim=(floor, None), xlabel="eigenvalue rank (largest first)",
       ylabel="eigenvalue (log scale)",
       title="Eigenvalues at θ_MAP (float64; below 1e-12 x the largest omitted)")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
if not QUICK:
    plt.show()

# %% [markdown]
# Only the largest eigenvalues agree. Below them the GGN's spectrum falls steeply: with
# saturated tanh units, many directions are barely seen by the data (the tiny diagonal
# entries above), far fewer than N (C - 1) are numerically non-zero, and the posterior
# variance along them is the prior's, 1/λ. The Hessian's residual term adds eigenvalues of
# both signs, up to about ten in magnitude with the full settings, above the prior
# precision: a Hessian posterior is narrower than the GGN one along its positive
# directions, and along the negative ones, clipped to 0, it is the prior.
#
# ## How well the cheap forms approximate the full GGN
#
# As matrices: the relative Frobenius error ‖C_approx - GGN‖ / ‖GGN‖, for the curvature and
# for the posterior covariance (C + λ I)⁻¹ it implies. Through predictions: the variance of
# the logits under the linearised network, diag(J Σ Jᵀ), on a few inputs near and far from
# the data. Adding the same number to every logit leaves the softmax unchanged, the GGN
# has no curvature along the weights that do so, and the prior alone sets their variance;
# we therefore report the variance of the *centred* logits f_c - mean_c' f_c', averaged
# over classes, which is what the predictive probabilities see. It is computed from the
# dense covariances above, and checked against the posteriors jaxal fits (`fit_laplace`, λ
# fixed) and, for the diagonal, isotropic and KFAC ones, against jaxal's layerwise logit
# variance (`posterior.weights_logit_variance`, which never forms Σ).

# %%
def relative_error(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.linalg.norm(approx - exact) / np.linalg.norm(exact))


def covariance(curvature: np.ndarray) -> np.ndarray:
    return np.linalg.inv(curvature + PRIOR_PRECISION * np.eye(P))


APPROXIMATIONS = {"Hessian (eigenvalues clipped at 0)": None, "KFAC": kfac,
                  "diagonal": np.diag(diagonal), "isotropic": isotropic * np.eye(P)}
e, v = np.linalg.eigh(0.5 * (hessian + hessian.T))
APPROXIMATIONS["Hessian (eigenvalues clipped at 0)"] = (v * np.maximum(e, 0)) @ v.T
ggn_cov = covariance(ggn)
print(f"{'vs the full GGN':<36} {'curvature error':>15} {'covariance error':>16}")
for name, approx in APPROXIMATIONS.items():
    print(f"{name:<36} {relative_error(approx, ggn):15.3f} "
          f"{relative_error(covariance(approx), ggn_cov):16.3f}")

# %%
points = {"class 0 centre": centres[0], "class 1 centre": centres[1],
          "between classes": centres[:2].mean(0), "far, (6, 0)": np.array([6.0, 0.0]),
          "far, (-4, 6)": np.array([-4.0, 6.0])}
x_test = jnp.asarray(np.stack(list(points.values())), jnp.float32)
jac = np.asarray(jax.jacfwd(lambda t: model.apply(unravel(t), x_test))(flat_params),
                 np.float64)                                            # [n, c, p]
centring = np.eye(NUM_CLASSES) - 1.0 / NUM_CLASSES
# The last layer's Jacobian, over the head's parameters with the features fixed.
head_flat, head_unravel = ravel_pytree(head_params(params))
features = features_of(params, x_test)
head_jac = np.asarray(jax.jacfwd(lambda t: apply_head(head_unravel(t), features))(head_flat),
                      np.float64)


def centred_logit_variance(jacobian: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Mean over classes of Var[f_c - mean_c' f_c'] under N(θ_MAP, cov), [n]."""
    centred = np.einsum("dc,ncp->ndp", centring, jacobian)
    return np.einsum("ncp,pq,ncq->nc", centred, cov, centred).mean(-1)


STRUCTURES = {"full": ("all", "full"), "KFAC": ("all", "kfac"), "diagonal": ("all", "diag"),
              "isotropic": ("all", "iso"), "last layer": ("last-layer", "full")}
DENSE = {"full": ggn, "KFAC": kfac, "diagonal": np.diag(diagonal),
         "isotropic": isotropic * np.eye(P)}
variances = {"Hessian (clipped)": centred_logit_variance(
    jac, covariance(APPROXIMATIONS["Hessian (eigenvalues clipped at 0)"]))}
for name, (subset, structure) in STRUCTURES.items():
    options = LaplaceOptions(curvature="ggn", structure=structure, subset=subset,
                             prior_fit="none")
    post = fit_laplace(key_fit, model, params, x, y, jnp.ones(N_TRAIN),
                       train_config.prior_precision, options)
    if subset == "last-layer":
        cov = np.asarray(posterior_covariance(post.head), np.float64)
        jaxal_var = last_layer_logit_variance(post, features)
        variances[name] = centred_logit_variance(head_jac, cov)
        dense_var = np.einsum("ncp,pq,ncq->nc", head_jac, cov, head_jac)
    else:
        cov = covariance(DENSE[name])
        jaxal_var = (np.einsum("ncp,pq,ncq->nc", jac, np.asarray(
            posterior_covariance(post.weights), np.float64), jac) if structure == "full"
            else weights_logit_variance(model, post, x_test))
        variances[name] = centred_logit_variance(jac, cov)
        dense_var = np.einsum("ncp,pq,ncq->nc", jac, cov, jac)
    # The dense computation here agrees with the posterior jaxal fits (and, for diagonal,
    # isotropic and KFAC, with its layerwise variance, which never forms Σ).
    np.testing.assert_allclose(np.asarray(jaxal_var), dense_var, rtol=2e-3, atol=1e-5)

print(f"{'centred logit variance':<22}" + "".join(f"{n:>18}" for n in variances))
for i, label in enumerate(points):
    print(f"{label:<22}" + "".join(f"{variances[n][i]:18.3g}" for n in variances))

fig, ax = plt.subplots(figsize=(10, 4.2), constrained_layout=True)
width = 0.8 / len(variances)
for k, (name, var) in enumerate(variances.items()):
    ax.bar(np.arange(len(points)) + (k - (len(variances) - 1) / 2) * width, var, width,
           label=name)
ax.set(xticks=np.arange(len(points)), xticklabels=list(points), yscale="log",
       xlabel="input", ylabel="centred logit variance (log scale)",
       title=f"Predictive uncertainty of the linearised network under each posterior, "
             f"λ = {PRIOR_PRECISION:g}")
ax.legend(title="posterior", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
ax.grid(axis="y", alpha=0.3)
if not QUICK:
    plt.show()

# %% [markdown]
# ## Conclusion
#
# - **Cost.** The dense forms store P² numbers and the exact Hessian needs P passes; they
#   are for small models or the last layer. The diagonal, isotropic and KFAC forms store
#   O(P) numbers and cost about one backward pass with C - 1 cotangents, and the sampled
#   GGN needs one cotangent instead of C - 1. `benchmarks/hessian_variants.py` times them
#   on the real CNN.
# - **Hessian vs GGN.** They share only the leading eigenvalues; the Hessian's residual
#   term adds eigenvalues of both signs, large enough to matter next to the prior, at a
#   much higher cost and with a clipping step to stay a valid posterior. jaxal's default is
#   the GGN.
# - **Approximations.** As matrices, the diagonal and isotropic forms miss almost all of
#   the GGN's Frobenius norm, which lies off the diagonal; KFAC misses the blocks between
#   layers and misjudges the scale of the top directions, so its curvature error is large
#   too, but its covariance, which is what the predictive uses, is by far the closest to
#   the full one (with the full settings: 0.09 relative error against 0.24 to 0.30 for the
#   others, the clipped Hessian included). Through the linearised predictive, the full and
#   KFAC posteriors agree: little variance between and at the classes, several times more
#   far away. The diagonal and isotropic posteriors inflate the variance everywhere, about
#   tenfold, and flatten the contrast between near and far that an acquisition function
#   ranks by. The last-layer posterior, with the features fixed, gives the smallest
#   variances and the weakest growth away from the data.
