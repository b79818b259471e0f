"""Does the evidence taken at the tangent linear model's mode give the all-weights
KFAC-GLM Laplace a sane per-layer prior on MNIST? (issue 30, build item 2)

On N random balanced labels of the MNIST pool (10,000 images) the seed CNN is trained as
the loop trains it (500 Adam steps of 32, λ = 1, ``jaxal.train``); the all-weights KFAC
GGN Laplace is then fitted with two per-layer prior fits on the same curvature:

- ``evidence-layerwise`` (today's): argmax of the Laplace evidence taken at θ*, by Adam on
  log λ (``jaxal.loop.make_learner``'s fit, i.e. ``jaxal.posteriors.laplace.fit_laplace``);
- ``linear-mode-layerwise`` (new): MacKay's fixed point with the evidence taken at the
  tangent linear model's mode w̃ (``jaxal.posteriors.evidence``, Antorán et al. 2022).

Reported per prior fit: per layer λ_l, γ_l, 1/λ_l against the mean square weight (and of
w̃) from ``jaxal.posteriors.evidence.evidence_diagnosis``; the GLM logit posterior std against the
MAP's logit spread (first 1,000 test images); accuracy, NLL and ECE on the test images of
the MAP (plugin), the GLM predictive (100 weight samples) and the probit predictive;
seconds of each prior fit, compilation apart.

Why the linear-mode fit runs here as a Python loop over jitted Newton steps: the
library's ``fit_prior_precision_linear_mode`` (what ``fit_laplace`` calls, jitted by the
loop) is one program of nested ``lax.scan``s, and XLA:CPU runs the CNN's convolutions far
slower inside a while loop (measured on this machine: one Newton step of 10 CG steps on
220 images, 75 s in scans against 1.6 s unrolled). Its docstring gives the CPU form: per
λ, Newton steps of ``linear_mode(..., newton_steps=1, unroll=True)`` warm-started at the
last w̃ and preconditioned by diag((H + Λ)⁻¹), then ``log_marginal_likelihood_at_mode``
and ``mackay_update``, the λ of the best evidence kept. That is ``linear_mode_fit_cpu``
below; ``--check`` compares it with the library's function at tiny iteration counts.

The command that made benchmarks/results/linear_mode_evidence.{json,md}:

    nice -n 5 python benchmarks/linear_mode_evidence.py --test-size 2000

(``--test-size 2000``: the GLM predictive's 100 JVPs cost ~43 s per 1,000 test images on
the shared 2-core machine, 7 min per fit on all 10,000; the plugin is also reported on
all 10,000.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from common import RESULTS, mnist_pool, result_header
from timing import time_calls

from jaxal.runtime import configure_cpu

FITS = ("evidence-layerwise", "linear-mode-layerwise")
PREDICTIVES_REPORTED = ("plugin", "glm", "probit")
# (iterations, newton_steps, cg_steps): the library's defaults and the cheaper setting.
DEFAULT_SETTING = (10, 10, 50)
CHEAP_SETTING = (5, 5, 20)


def _compiled(fn, *args):
    """(``fn`` jitted and compiled ahead of time for ``args``, compile seconds)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def linear_mode_fit_cpu(post, model, params, x, y, weights, groups, iterations: int,
                        newton_steps: int, cg_steps: int) -> dict:
    """``jaxal.posteriors.evidence.fit_prior_precision_linear_mode`` in its CPU form (see the module
    doc): λ from ``post``'s own (per weight [p]), the same iterates and best-evidence
    rule. Returns {"lam" [p], "mode" (LinearMode at it), "trace", "seconds",
    "compile_seconds"}."""
    from jaxal.curvature import structure_of
    from jaxal.posteriors.evidence import (
        linear_mode,
        log_marginal_likelihood_at_mode,
        mackay_update,
        posterior_variance,
    )

    structure = structure_of(post)
    first = np.array([np.flatnonzero(groups == g)[0] for g in range(groups.max() + 1)])

    def newton(params, w, lam, preconditioner, x, y, weights):
        return linear_mode(model.apply, params, x, y, weights, lam, w, 1, cg_steps,
                           preconditioner, unroll=True)

    def at(post, lam):
        at_lam = structure.with_prior_precision(post, lam)
        return at_lam, posterior_variance(at_lam)

    def score(at_lam, mode):
        return (log_marginal_likelihood_at_mode(at_lam, mode),
                mackay_update(at_lam, mode.mode, groups))

    lam = jnp.broadcast_to(post.prior_precision, post.mean.shape)
    at_c, t_at = _compiled(at, post, lam)
    at_lam, variance = at_c(post, lam)
    newton_args = (params, post.mean, lam, variance, x, y, weights)
    newton_c, t_newton = _compiled(newton, *newton_args)
    score_c, t_score = _compiled(score, at_lam, jax.eval_shape(newton, *newton_args))

    start = time.perf_counter()
    w, best, trace = post.mean, (-np.inf, lam, None), []
    for _ in range(iterations + 1):
        at_lam, variance = at_c(post, lam)
        for _ in range(newton_steps):
            mode = newton_c(params, w, lam, variance, x, y, weights)
            w = mode.mode
        evidence, new = score_c(at_lam, mode)
        evidence = float(evidence)
        trace.append({"log_evidence": evidence, "gradient_norm": float(mode.gradient_norm),
                      "prior_precision": np.asarray(lam)[first].tolist()})
        if evidence > best[0]:   # NaN never wins
            best = (evidence, lam, mode)
        lam = new
    jax.block_until_ready(best[2])
    return {"lam": best[1], "mode": best[2], "trace": trace,
            "seconds": time.perf_counter() - start,
            "compile_seconds": t_at + t_newton + t_score}


def library_check(post, model, params, x, y, weights, groups, setting) -> dict:
    """The library's ``fit_prior_precision_linear_mode`` (nested scans) against
    ``linear_mode_fit_cpu`` at the tiny ``setting``: λ per layer and seconds of each."""
    from jaxal.posteriors.evidence import fit_prior_precision_linear_mode

    iterations, newton_steps, cg_steps = setting
    library = partial(fit_prior_precision_linear_mode, logits_fn=model.apply, groups=groups,
                      iterations=iterations, newton_steps=newton_steps, cg_steps=cg_steps)
    fn = lambda post, params, x, y, weights: library(post, params=params, x=x, y=y,
                                                     weights=weights)[0]
    compiled, t_compile = _compiled(fn, post, params, x, y, weights)
    timed = time_calls(partial(compiled, post, params, x, y, weights), 0)
    lam_library, seconds = timed.out, timed.first_s
    cpu = linear_mode_fit_cpu(post, model, params, x, y, weights, groups, *setting)
    a, b = np.asarray(lam_library), np.asarray(cpu["lam"])
    return {"setting": list(setting), "library_seconds": seconds,
            "library_compile_seconds": t_compile, "cpu_form_seconds": cpu["seconds"],
            "cpu_form_compile_seconds": cpu["compile_seconds"],
            "max_relative_difference": float(np.max(np.abs(a - b) / np.abs(a)))}


def stable_effective_dimension(post) -> dict:
    """{layer path "a/b": γ_l = Σ_i h_i / (h_i + λ_l)} from the KFAC eigenvalues h = e_A e_Gᵀ
    (clipped at 0): the same γ as ``jaxal.posteriors.evidence.effective_dimension``'s
    Σ (1 - λ [(H + Λ)⁻¹]_ii), without its cancellation once λ_l ≫ h (float32)."""
    from jaxal.curvature import kfac

    lam = kfac.layer_prior_precision(post)
    out = {}
    for name, (_, ea, _, eg) in post.layers.items():
        h = jnp.clip(jnp.outer(ea, eg), 0.0)
        out["/".join(name)] = float(jnp.sum(h / (h + lam[name])))
    return out


def evaluators(model, record, chunk_size: int) -> dict:
    """{predictive: jitted (key, posterior, x, y) -> (nll, accuracy, entropy, ece)}."""
    from jaxal.loop import evaluate
    from jaxal.predictive import PREDICTIVES

    return {name: jax.jit(partial(evaluate, model=model, chunk_size=chunk_size,
                                  predict=partial(PREDICTIVES[name].predict, posterior=record)))
            for name in PREDICTIVES_REPORTED}


def metrics_of(evaluate_fns, key, posterior, x, y) -> dict:
    out = {}
    for name, fn in evaluate_fns.items():
        timed = time_calls(partial(fn, key, posterior=posterior, x=x, y=y), 0)
        (nll, accuracy, _, ece), seconds = timed.out, timed.first_s
        out[name] = {"accuracy": float(accuracy), "nll": float(nll), "ece": float(ece),
                     "seconds": seconds}
    return out


def one_size(args, seed: int, num_labels: int, data, x_test, y_test, evaluate_fns,
             rows: list, record_json) -> None:
    """Train θ*, fit both priors on the same KFAC curvature, diagnose and evaluate."""
    from jaxal.config import ALConfig, LaplaceOptions
    from jaxal.curvature import structure_of
    from jaxal.loop import initial_labelled, make_learner
    from jaxal.model import cnn
    from jaxal.objective import log_likelihood
    from jaxal.posteriors.evidence import evidence_diagnosis
    from jaxal.posteriors.laplace import fit_prior_precision, layer_groups, with_prior_precision
    from jaxal.train import labelled_indices

    model = cnn(data.num_classes)
    key = jax.random.fold_in(jax.random.key(seed), num_labels)
    key_labels, key_init, key_train, key_fit, key_eval = jax.random.split(key, 5)
    labelled = initial_labelled(key_labels, np.asarray(data.pool_y), data.num_classes,
                                num_labels // data.num_classes)
    options = LaplaceOptions(structure="kfac", subset="all", prior_fit="evidence-layerwise",
                             samples=100)
    config = ALConfig(posterior="laplace", predictive="glm", posterior_options=options,
                      chunk_size=args.chunk_size)
    learner = make_learner(model, config, data.pool_x.shape[1:], data.num_classes,
                           capacity=num_labels)
    params0 = learner.init(key_init)
    timed = time_calls(lambda: learner.train(key_train, params=params0, x_pool=data.pool_x,
                                             y_pool=data.pool_y, labelled=labelled), 0)
    (params, train_info), t_train = timed.out, timed.first_s
    fit_args = (key_fit, params, data.pool_x, data.pool_y, labelled, data.val_x, data.val_y)
    timed = time_calls(partial(learner.fit, *fit_args), 1)
    evidence_post, t_fit_first, t_fit = timed.out, timed.first_s, timed.seconds
    row = {"seed": seed, "labels": num_labels, "train_seconds": t_train,
           "train_nll": float(train_info.train_nll),
           "learner_fit_seconds": {"first": t_fit_first, "second": t_fit}, "fits": {}}
    rows.append(row)

    # The labelled set itself (all rows real), the curvature at λ = 1 per weight.
    idx = labelled_indices(labelled)[:num_labels]
    x, y = data.pool_x[idx], data.pool_y[idx]
    weights = jnp.ones(num_labels, x.dtype)
    inner = evidence_post.weights
    groups, names = layer_groups(params)
    at_one = structure_of(inner).with_prior_precision(inner, jnp.ones_like(inner.mean))
    ll = log_likelihood(model.apply(params, x), y, weights)
    evidence_fit = jax.jit(lambda post, ll: fit_prior_precision(post, ll, init=1.0,
                                                                groups=groups))
    timed = time_calls(partial(evidence_fit, at_one, ll), 1)
    lam_evidence, t_first, t_evidence = timed.out, timed.first_s, timed.seconds
    row["fits"]["evidence-layerwise"] = {
        "prior_fit_seconds": t_evidence, "prior_fit_compile_and_run_seconds": t_first,
        "matches_learner_fit": bool(np.allclose(lam_evidence, inner.prior_precision,
                                                rtol=1e-4))}

    diagnose_fn = jax.jit(lambda params, post, x, mode: evidence_diagnosis(
        model, params, post, x, "all", mode))

    def report(name, posterior, mode=None):
        entry = row["fits"][name]
        entry["diagnosis"] = diagnose_fn(params, posterior.weights, x_test[:1000],
                                         mode).as_dict(names)
        stable = stable_effective_dimension(posterior.weights)
        for layer, v in entry["diagnosis"]["layers"].items():
            v["gamma_stable"] = next((g for k, g in stable.items()
                                      if layer.endswith("".join(f"['{p}']"
                                                                for p in k.split("/")))),
                                     None)
        entry["test"] = metrics_of(evaluate_fns, key_eval, posterior, x_test, y_test)
        print(name, entry["diagnosis"]["glm_logit_std"], entry["test"], flush=True)
        record_json()

    report("evidence-layerwise", evidence_post)
    if args.check and num_labels == min(args.sizes):
        row["library_check"] = library_check(at_one, model, params, x, y, weights, groups,
                                             (1, 1, 2))
        print("library check", row["library_check"], flush=True)
    settings = {"cheap": CHEAP_SETTING}
    if num_labels == args.defaults_at:
        settings["default"] = DEFAULT_SETTING
    for label, setting in settings.items():
        fit = linear_mode_fit_cpu(at_one, model, params, x, y, weights, groups, *setting)
        name = f"linear-mode-layerwise ({label} {'/'.join(map(str, setting))})"
        row["fits"][name] = {"setting": list(setting), "prior_fit_seconds": fit["seconds"],
                             "compile_seconds": fit["compile_seconds"],
                             "time_over_evidence_layerwise": fit["seconds"] / t_evidence,
                             "mode_gradient_norm": float(fit["mode"].gradient_norm),
                             "trace": fit["trace"]}
        print(name, f"{fit['seconds']:.1f} s", fit["trace"][-1], flush=True)
        record_json()
        report(name, with_prior_precision(evidence_post, fit["lam"]), fit["mode"].mode)
    row["map_full_test"] = metrics_of({"plugin": evaluate_fns["plugin"]}, key_eval,
                                      evidence_post, data.test_x, data.test_y)["plugin"]
    record_json()


def table(result: dict) -> str:
    lines = [f"Linear-mode evidence against today's evidence fit, all-weights KFAC GGN "
             f"Laplace on MNIST (seed CNN, 500 Adam steps, λ = 1). {result['machine']}. "
             f"Test metrics on the first {result['test_size']:,} test images (the MAP's "
             f"accuracy on all 10,000 in each heading); logit stds on the first 1,000. "
             f"Command: "
             f"`{result['command']}`.", ""]
    for row in result["rows"]:
        lines += [f"### N = {row['labels']} (seed {row['seed']}), train NLL "
                  f"{row['train_nll']:.3f}, MAP accuracy on 10,000: "
                  f"{row.get('map_full_test', {}).get('accuracy', float('nan')):.4f}", "",
                  "| prior fit | layer | P | λ | γ | γ (stable) | 1/λ | θ²/P | (1/λ)/(θ²/P) "
                  "| w̃²/P |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, fit in row["fits"].items():
            if "diagnosis" not in fit:
                continue
            for layer, v in fit["diagnosis"]["layers"].items():
                mode = v.get("mean_square_mode")
                lines.append(
                    f"| {name} | {layer} | {v['num_weights']:,} | "
                    f"{v['prior_precision']:.3g} | {v['effective_dimension']:.1f} | "
                    f"{'—' if v['gamma_stable'] is None else format(v['gamma_stable'], '.3g')} | "
                    f"{v['prior_variance']:.3g} | {v['mean_square_weight']:.3g} | "
                    f"{v['variance_ratio']:.3g} | "
                    f"{'—' if mode is None else format(mode, '.3g')} |")
        lines += ["", "| prior fit | MAP logit spread | GLM logit std | MAP acc / NLL / ECE "
                  "| GLM acc / NLL / ECE | probit acc / NLL / ECE | prior fit s (compile s) "
                  "| x evidence-layerwise | ‖∇‖ at w̃ |", "|---|---|---|---|---|---|---|---|---|"]
        for name, fit in row["fits"].items():
            if "test" not in fit:
                continue
            d, t = fit["diagnosis"], fit["test"]
            cells = [f"{t[p]['accuracy']:.4f} / {t[p]['nll']:.3f} / {t[p]['ece']:.3f}"
                     for p in PREDICTIVES_REPORTED]
            compile_s = fit.get("compile_seconds")
            seconds = (f"{fit['prior_fit_seconds']:.2f}"
                       + ("" if compile_s is None else f" ({compile_s:.0f})"))
            ratio = fit.get("time_over_evidence_layerwise", 1.0)
            grad = fit.get("mode_gradient_norm")
            lines.append(f"| {name} | {d['map_logit_std']:.2f} | {d['glm_logit_std']:.2f} | "
                         f"{' | '.join(cells)} | {seconds} | {ratio:.0f}x | "
                         f"{'—' if grad is None else format(grad, '.2g')} |")
        if "library_check" in row:
            c = row["library_check"]
            lines += ["", f"Library `fit_prior_precision_linear_mode` (nested scans) against "
                      f"this script's CPU form at (iterations, Newton, CG) = "
                      f"{tuple(c['setting'])}: λ max relative difference "
                      f"{c['max_relative_difference']:.1e}; {c['library_seconds']:.1f} s "
                      f"against {c['cpu_form_seconds']:.2f} s (compile "
                      f"{c['library_compile_seconds']:.0f} s and "
                      f"{c['cpu_form_compile_seconds']:.0f} s)."]
        lines.append("")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seeds", type=int, nargs="*", default=[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[20, 120, 220])
    p.add_argument("--test-size", type=int, default=10000,
                   help="test images the predictives are evaluated on (the first ones)")
    p.add_argument("--chunk-size", type=int, default=250)
    p.add_argument("--defaults-at", type=int, default=220,
                   help="N at which the linear-mode fit also runs at the library's "
                        "defaults (10 MacKay x 10 Newton x 50 CG); 0: nowhere")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the library-against-CPU-form check at the smallest N")
    args = p.parse_args()
    configure_cpu()   # as jaxal's CLIs run; before JAX's first computation

    from jaxal.components import POSTERIORS
    from jaxal.config import LaplaceOptions
    from jaxal.model import cnn
    from jaxal.posteriors import bind

    data, x_test, y_test = mnist_pool(args.data_dir, args.test_size)
    record = bind(POSTERIORS["laplace"], LaplaceOptions(structure="kfac", subset="all",
                                                        samples=100))
    evaluate_fns = evaluators(cnn(data.num_classes), record, args.chunk_size)
    result = result_header("linear_mode_evidence.py", sys.argv[1:], int(x_test.shape[0]))
    RESULTS.mkdir(parents=True, exist_ok=True)

    def record_json():
        (RESULTS / "linear_mode_evidence.json").write_text(
            json.dumps(result, indent=1, default=float))

    for seed in args.seeds:
        for num_labels in args.sizes:
            one_size(args, seed, num_labels, data, x_test, y_test, evaluate_fns,
                     result["rows"], record_json)
            (RESULTS / "linear_mode_evidence.md").write_text(table(result))
    print(table(result))


if __name__ == "__main__":
    main()
