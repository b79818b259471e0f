"""Per-layer curvature for jaxal's models: layer inputs and backpropagated GGN factors.

For a Dense or Conv layer with input a and output z = W a + b, every per-example GGN
quantity is built from the layer input a_n and the gradients g_nk = ∂(A_nᵀ f_n)_k / ∂z_n,
k = 1..C, of the C square-root factors of the softmax Hessian (see ``jaxal.curvature``):

    ∂(A_nᵀ f_n)_k / ∂W = a_n ⊗ g_nk   (Dense),   Σ_positions patch_n ⊗ g_nk   (Conv).

All g_nk come from one backward pass with C cotangents (``jax.vjp`` against zero
``perturbations`` on the layer outputs, vmapped over the C columns); no gradient with
respect to the weights is ever formed per example except the Conv kernel's, which is one
batched matmul per layer. The exact GGN diagonal is then Σ_n Σ_k (a_n ⊗ g_nk)², which for
a Dense layer factorises as Σ_n a_n² ⊗ Σ_k g_nk².

The models mark their layers with ``jaxal.model._layer``; Conv layers are 3x3, stride 1,
SAME padding, as in ``jaxal.model.CNNBody``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxal.chunks import chunk_array
from jaxal.curvature import example_weights, output_hessian_sqrt
from jaxal.model import Classifier


def layer_inputs_and_factor_grads(model: Classifier, params, x: jax.Array):
    """Layer inputs {name: [n, ...]} and factor gradients {name: [C, n, ...]}, for a chunk.

    Names are the layers' parameter names (``Conv_0``, ``Dense_0``, ``head``) with their
    parent path, e.g. ``("body", "Conv_0")``.
    """
    perturbations = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype),
        jax.eval_shape(lambda: model.init(jax.random.key(0), x))["perturbations"])

    def logits_fn(eps):
        logits, state = model.apply({"params": params["params"], "perturbations": eps}, x,
                                    mutable=["layer_inputs"])
        return logits, state["layer_inputs"]

    logits, vjp, inputs = jax.vjp(logits_fn, perturbations, has_aux=True)
    factors = output_hessian_sqrt(jax.nn.softmax(logits))             # [n, C, C]
    grads = jax.vmap(lambda ct: vjp(ct)[0])(jnp.moveaxis(factors, 2, 0))  # per column k
    return _by_layer(inputs, "_in"), _by_layer(grads, "_out")


def _by_layer(tree, suffix: str) -> dict[tuple[str, ...], jax.Array]:
    """{("body", "Conv_0"): leaf} from a tree whose leaves are named "<layer><suffix>"."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        names = tuple(p.key for p in path)
        out[(*names[:-1], names[-1].removesuffix(suffix))] = leaf
    return out


def _conv_patches(a: jax.Array) -> jax.Array:
    """[n, h, w, cin] -> [n, h, w, 3*3*cin] in the kernel's (kh, kw, cin) order."""
    patches = jax.lax.conv_general_dilated_patches(
        a, (3, 3), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    n, h, w, _ = patches.shape
    cin = a.shape[-1]
    # conv_general_dilated_patches orders features (cin, kh, kw).
    return patches.reshape(n, h, w, cin, 3, 3).transpose(0, 1, 2, 4, 5, 3).reshape(
        n, h, w, 9 * cin)


def _layer_diagonal(a: jax.Array, g: jax.Array, w: jax.Array) -> dict[str, jax.Array]:
    """GGN diagonal of one layer's kernel and bias from inputs a and factor grads g."""
    if a.ndim == 2:   # Dense: Σ_n w_n a_n² ⊗ Σ_k g_nk²
        g2 = (g**2).sum(0)                                            # [n, dout]
        return {"kernel": jnp.einsum("n,ni,no->io", w, a**2, g2),
                "bias": jnp.einsum("n,no->o", w, g2)}
    patches = _conv_patches(a)                                        # [n, h, w, K]
    per_example = jnp.einsum("nhwK,cnhwo->cnKo", patches, g)         # [C, n, K, cout]
    kernel = jnp.einsum("n,cnKo->Ko", w, per_example**2)
    bias = jnp.einsum("n,cno->o", w, g.sum(axis=(2, 3))**2)
    cin = a.shape[-1]
    return {"kernel": kernel.reshape(3, 3, cin, -1), "bias": bias}


def ggn_diagonal_layerwise(model: Classifier, params, x: jax.Array,
                           weights: jax.Array | None = None, chunk_size: int = 250
                           ) -> jax.Array:
    """Exact GGN diagonal of all weights [P], raveled as ``ravel_pytree(params)``.

    Equals ``jaxal.curvature.ggn_diagonal(model.apply, ...)`` but costs one C-cotangent
    backward pass per chunk plus one batched matmul per Conv layer.
    """
    def chunk(x_chunk, w_chunk):
        inputs, grads = layer_inputs_and_factor_grads(model, params, x_chunk)
        diag = jax.tree.map(jnp.zeros_like, params["params"])
        for path, a in inputs.items():
            node = diag
            for p in path[:-1]:
                node = node[p]
            node[path[-1]] = _layer_diagonal(a, grads[path], w_chunk)
        return ravel_pytree({"params": diag})[0]

    return sum(chunk(x_i, w_i) for x_i, w_i in _unrolled_chunks(x, weights, chunk_size))


def _unrolled_chunks(x: jax.Array, weights: jax.Array | None, chunk_size: int):
    """(x_chunk, w_chunk) pairs, unrolled at trace time rather than scanned.

    XLA:CPU runs convolutions inside a while loop several times slower, and curvature is
    built on the labelled set, so there are few chunks.
    """
    size = min(chunk_size, x.shape[0])
    xs, ws = chunk_array(x, size), chunk_array(example_weights(x, weights), size)
    return [(xs[i], ws[i]) for i in range(xs.shape[0])]


def _augmented_rows(a: jax.Array) -> jax.Array:
    """Per-example rows [n, t, K+1] a layer multiplies: (patches or inputs, 1) per position."""
    rows = _conv_patches(a).reshape(a.shape[0], -1, 9 * a.shape[-1]) if a.ndim == 4 \
        else a[:, None, :]
    return jnp.concatenate([rows, jnp.ones_like(rows[..., :1])], axis=-1)


def kfac_factors(model: Classifier, params, x: jax.Array, weights: jax.Array | None = None,
                 chunk_size: int = 250) -> dict[tuple[str, ...], tuple[jax.Array, jax.Array]]:
    """Kronecker factors (A_l, G_l) per layer: GGN block of layer l ≈ A_l ⊗ G_l.

        A_l = 1/(N T) Σ_n Σ_t ã_nt ã_ntᵀ      [K+1, K+1]  (ã: input or patch, with a 1)
        G_l =        Σ_n Σ_t Σ_k g_ntk g_ntkᵀ  [out, out]

    over N (weighted) examples and T spatial positions (T = 1 for Dense: "KFAC-expand"
    for Conv). For a Dense layer and one example this is the exact GGN block. The
    block acts on vec of [kernel (as [K, out]); bias] in row-major order.
    """
    factors = {}
    for x_i, w_i in _unrolled_chunks(x, weights, chunk_size):
        inputs, grads = layer_inputs_and_factor_grads(model, params, x_i)
        for path, a in inputs.items():
            rows = _augmented_rows(a)                                   # [n, t, K+1]
            g = grads[path].reshape(grads[path].shape[0], a.shape[0], -1,
                                    grads[path].shape[-1])              # [C, n, t, out]
            a_sum = jnp.einsum("n,ntk,ntl->kl", w_i, rows, rows) / rows.shape[1]
            g_sum = jnp.einsum("n,cnto,cntp->op", w_i, g, g)
            old = factors.get(path, (0.0, 0.0))
            factors[path] = (old[0] + a_sum, old[1] + g_sum)
    n = example_weights(x, weights).sum()
    return {path: (a / n, g) for path, (a, g) in factors.items()}
