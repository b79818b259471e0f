"""MNIST learning curves of posteriors x acquisitions: does a Bayesian posterior give better
queries? (the Bayesian-acquisition issue's benchmark)

    python benchmarks/posterior_curves.py [--data-dir ../shared/data/tfds] [--seeds 0 1 2]
        [--variants random margin plugin-entropy ...] [--stage 1|2] [--table-only]

Protocol (Kirsch et al. 2019's MNIST one, on jaxal's split): a seeded pool of 10,000
training images, 2 balanced initial labels per class, 20 rounds of 10 queries, the seed
CNN trained 500 steps from scratch each round, 3 seeds. Every variant of a seed shares the
initial labels, pool, validation split and initial weights. A variant is a posterior, a
predictive, a prior-precision fit and an acquisition (``VARIANTS``); ``--stage 1`` runs the
first table of the issue, ``--stage 2`` BatchBALD and power-sampled BALD for the posteriors
named by ``--stage2-posteriors``.

Reported per variant: labels to reach 90% / 95% test accuracy (median over seeds, "not
reached" within 220 labels), AUBC (trapezoid over labels / label range, mean ± std over
seeds), final accuracy, test NLL and ECE at the last round, seconds per round for the
query, training and posterior fit (compilation included in round 0/1; only indicative when
other jobs share the machine), and the prior precision at the last round. Resumable:
finished runs are kept in ``results/posterior_curves.json`` (its table: ``tables.py``) and
a killed run resumes from its checkpoint in ``results/curves/posterior_curves/runs/
<variant>-seed<k>/`` (``jaxal.apps.comparison.run_comparison``; before, ``curves/post-*``).
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

from common import RESULTS, read_result, run_curves, write_json
from tables import posterior_curves as table
from tables import write_table
from timing import time_calls

from jaxal.apps.comparison import Run, aubc
from jaxal.apps.experiment import ExperimentConfig
from jaxal.config import LaplaceOptions, ModelConfig, TrainConfig
from jaxal.loop import ALConfig
from jaxal.runtime import configure_cpu

# Posteriors whose pool pass is too slow for the whole 10,000 on 2 cores score a fresh
# random subset of this many unlabelled points each round (``--pool-subset``).
SUBSET = 2000
# Their test and validation metrics use this many posterior samples (the query keeps 100):
# 100 passes over the 11,000 evaluation images would dominate a round.
EVAL_SAMPLES = 20
# Training steps of the MC dropout network a round (the others: 500, TrainConfig's default).
MC_DROPOUT_STEPS = 2000


def _laplace(predictive: str, **laplace) -> dict:
    return {"posterior": "laplace", "predictive": predictive,
            "posterior_options": LaplaceOptions(**laplace)}


# The posteriors of the table; each is crossed with entropy and BALD (plugin: entropy).
POSTERIORS = {
    "plugin": {"posterior": "plugin", "predictive": "plugin"},
    # Today's default Laplace: last-layer full GGN, λ by validation NLL (probit; MC-100
    # for BALD).
    "ll-laplace": _laplace("probit", prior_fit="val-nll"),
    # Last-layer full GGN, scalar evidence λ, linearised (GLM) predictive.
    "ll-glm-evidence": _laplace("glm", prior_fit="evidence"),
    # The control for MC dropout's rows, which score a 2,000-point subset: today's default
    # Laplace on the same subset (a fresh random subset spreads a top-10 batch by itself).
    "ll-laplace-subset": {**_laplace("probit", prior_fit="val-nll"), "pool_subset": SUBSET},
    # All weights, KFAC GGN, one evidence λ per layer, GLM predictive (2,000-point subset).
    "kfac-glm-layerwise": {**_laplace("glm", structure="kfac", subset="all",
                                      prior_fit="evidence-layerwise"),
                           "pool_subset": SUBSET, "eval_samples": EVAL_SAMPLES},
    # All weights, KFAC GGN, one λ per layer learned in training by online marginal
    # likelihood (jaxal.posteriors.marglik; F/B/K 50/100/10, benchmarks/marglik.py), GLM predictive.
    "kfac-glm-marglik": {**_laplace("glm", structure="kfac", subset="all",
                                    prior_fit="marglik-layerwise"),
                         "pool_subset": SUBSET, "eval_samples": EVAL_SAMPLES},
    # The ablation of the prior's scale: all weights, KFAC GGN, one λ chosen each round by
    # the GLM predictive's validation NLL (the grid of today's default Laplace), GLM
    # predictive. Is the learned prior the trouble, or the all-weights posterior's shape?
    "kfac-glm-valnll": {**_laplace("glm", structure="kfac", subset="all", prior_fit="val-nll"),
                        "pool_subset": SUBSET, "eval_samples": EVAL_SAMPLES},
    # The same with the GLM predictive sampled per point in logit space, N(f(x), J Σ Jᵀ)
    # (glm-logits): one backward pass per chunk instead of 100 JVPs; not for BatchBALD.
    "kfac-glm-logits-layerwise": {**_laplace("glm-logits", structure="kfac", subset="all",
                                             prior_fit="evidence-layerwise"),
                                  "pool_subset": SUBSET, "eval_samples": EVAL_SAMPLES},
    # All weights, diagonal GGN, one evidence λ per layer, GLM predictive.
    "diag-glm-layerwise": {**_laplace("glm", structure="diag", subset="all",
                                      prior_fit="evidence-layerwise"),
                           "pool_subset": SUBSET, "eval_samples": EVAL_SAMPLES},
    # Consistent MC dropout, Kirsch et al.'s placement (after each conv block and before
    # the last layer) and rate 0.5, 100 masks, trained MC_DROPOUT_STEPS: with the others'
    # 500 steps the dropout network underfits (``mc-dropout-500``, kept for the record:
    # 0.865 test accuracy on 220 random labels against 0.915 after 2,000 steps).
    "mc-dropout": {"posterior": "mc-dropout", "predictive": "mc",
                   "model": ModelConfig(dropout=0.5),
                   "train": TrainConfig(steps=MC_DROPOUT_STEPS), "pool_subset": SUBSET,
                   "eval_samples": EVAL_SAMPLES},
    "mc-dropout-500": {"posterior": "mc-dropout", "predictive": "mc",
                       "model": ModelConfig(dropout=0.5), "pool_subset": SUBSET,
                       "eval_samples": EVAL_SAMPLES},
    # A deep ensemble of 5, trained as one vmapped program.
    "ensemble": {"posterior": "ensemble", "predictive": "mc"},
}


def _variants() -> dict[str, dict]:
    variants = {"random": {"acquisition": "random"}, "margin": {"acquisition": "margin"},
                "plugin-entropy": {**POSTERIORS["plugin"], "acquisition": "entropy"},
                # The control for power-sampled BALD: is its gain the posterior's or the
                # stochastic batch's? (Kirsch et al. 2023 sample entropy too.)
                "plugin-entropy-power": {**POSTERIORS["plugin"], "acquisition": "entropy",
                                         "batch": "power"}}
    for name, fields in POSTERIORS.items():
        if name == "plugin":
            continue
        variants[f"{name}-entropy"] = {**fields, "acquisition": "entropy"}
        sampled = {**fields, "acquisition": "bald"}
        if fields.get("predictive") == "probit":
            sampled["predictive"] = "mc"
        variants[f"{name}-bald"] = sampled
        if fields.get("predictive") != "glm-logits":   # no joint samples
            variants[f"{name}-batchbald"] = {**sampled, "acquisition": "batchbald"}
        variants[f"{name}-bald-power"] = {**sampled, "batch": "power"}
    return variants


VARIANTS = _variants()
STAGE1 = ["random", "margin", "plugin-entropy"] + [
    f"{p}-{a}" for p in POSTERIORS
    if p not in ("plugin", "diag-glm-layerwise", "kfac-glm-logits-layerwise", "mc-dropout-500",
                 "ll-laplace-subset")
    for a in ("entropy", "bald")]


def stage2(posteriors) -> list[str]:
    return [f"{p}-{a}" for p in posteriors for a in ("batchbald", "bald-power")]


def al_config(name: str, args) -> ALConfig:
    return ALConfig(rounds=args.rounds, query_size=args.query_size,
                    init_per_class=args.init_per_class, **VARIANTS[name])


DEFAULT_SETTING = {"pool_size": 10_000, "rounds": 20, "query_size": 10, "init_per_class": 2}


def setting_of(args) -> dict:
    return {k: getattr(args, k) for k in DEFAULT_SETTING}


def stem(args) -> str:
    """The results' file stem: the protocol's ``posterior_curves``; another setting (a short
    trial, --rounds 2) gets files and run directories of its own, so that it can neither
    overwrite the protocol's finished runs nor resume from their checkpoints."""
    setting = setting_of(args)
    if setting == DEFAULT_SETTING:
        return "posterior_curves"
    return "posterior_curves-" + "-".join(f"{k}{v}" for k, v in setting.items())


def comparison_dir(args) -> Path:
    """The comparison dir of the runs: run dirs ``runs/<variant>-seed<k>`` in it."""
    return RESULTS / "curves" / stem(args)


def run_dir(args, key: str) -> Path:
    return comparison_dir(args) / "runs" / key


def run(args, names) -> dict:
    """Run (or resume) ``names`` x ``--seeds`` into ``results/<stem>.json``; the file also
    holds what its table needs of the variants (their order, which score a subset)."""
    out = RESULTS / f"{stem(args)}.json"
    runs = [Run(name, seed, ExperimentConfig(dataset="mnist", seed=seed,
                                             pool_size=args.pool_size, data_dir=args.data_dir,
                                             al=al_config(name, args)))
            for seed in args.seeds for name in names]
    result = (read_result(out, setting_of(args)) if args.table_only else
              run_curves(out, setting_of(args), runs, comparison_dir(args)))
    result["table"] = {"variants": {name: {"pool_subset": v.get("pool_subset")}
                                    for name, v in VARIANTS.items()},
                       "subset_size": SUBSET, "mc_dropout_steps": MC_DROPOUT_STEPS}
    write_json(out, result)
    return result


def figure(result: dict, seeds, names, path: Path) -> None:
    """Test accuracy against labels, mean over the seeds with ± 1 std shaded, one line per
    variant (the README's figure)."""
    import matplotlib
    matplotlib.use("Agg")   # no display; this script owns its figure
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name in names:
        runs = [r for seed in seeds if (r := result["runs"].get(f"{name}-seed{seed}"))]
        if not runs:
            continue
        labels = np.asarray(runs[0]["labels"])
        acc = np.asarray([r["test_accuracy"] for r in runs])
        mean, std = acc.mean(0), acc.std(0)
        dashed = name in ("random", "margin")
        (line,) = ax.plot(labels, mean, "--" if dashed else "-",
                          label=f"{name} ({len(runs)})")
        ax.fill_between(labels, mean - std, mean + std, color=line.get_color(), alpha=0.12)
    s = result["setting"]
    ax.set(xlabel="labels", ylabel="test accuracy", ylim=(0.5, 1.0),
           title=f"MNIST, pool {s['pool_size']:,}, {s['query_size']} a round (seeds)")
    ax.axhline(0.9, color="grey", lw=0.5)
    ax.axhline(0.95, color="grey", lw=0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def timing(args) -> None:
    """Seconds of one query (pool pass + selection of 10 by BALD) on a 2,000-point pool
    subset for every posterior after one fit on 20 labels, compile apart (median of 3);
    and the ensemble's training against one network's (500 steps each, same sitting)."""
    import jax
    from machine import cpu_info

    from jaxal.apps.experiment import load_split, to_device
    from jaxal.components import EnsembleOptions
    from jaxal.loop import init_state, make_learner
    from jaxal.model import build_model

    # --variants times only those queries, merged into the last table (the training
    # figures kept); compare forms timed in the same sitting only.
    out = RESULTS / "posterior_timing.json"
    old = json.loads(out.read_text()) if args.variants and out.exists() else None
    rows = dict(old["queries"]) if old else {}
    for name in args.variants or [f"{p}-bald" for p in POSTERIORS if p != "plugin"]:
        al = al_config(name, args)._replace(rounds=1)
        split = load_split(ExperimentConfig(dataset="mnist", seed=0, pool_size=args.pool_size,
                                            data_dir=args.data_dir, al=al))
        data = to_device(split)
        model = build_model("mnist", split.num_classes, al)
        learner = make_learner(model, al, split.pool_x.shape[1:], split.num_classes)
        start = time.perf_counter()
        state, info = init_state(jax.random.key(0), learner, data)
        first = time.perf_counter() - start
        query = partial(learner.query, jax.random.key(1), state.posterior, data.pool_x,
                        state.labelled)
        timed = time_calls(query, 3)
        rows[name] = {"query_s": timed.seconds,
                      "query_compile_s": timed.first_s - timed.seconds,
                      "pool_scored": (al.pool_subset or args.pool_size),
                      "round0_train_s": info.timings.train, "round0_s": first}
        print(name, rows[name], flush=True)
    # Training: one network against M stacked ones, 500 steps on 20 labels each.
    train = dict(old["training_s"]) if old else {}
    for name, fields in () if old else (("one network", {}), ("ensemble", {"posterior": "ensemble",
                                                             "predictive": "mc"})):
        al = ALConfig(rounds=0, **fields)
        split = load_split(ExperimentConfig(dataset="mnist", seed=0, pool_size=args.pool_size,
                                            data_dir=args.data_dir, al=al))
        data = to_device(split)
        learner = make_learner(build_model("mnist", 10, al), al, split.pool_x.shape[1:], 10)
        init_state(jax.random.key(0), learner, data)          # compiles
        params0 = learner.init(jax.random.key(1))
        labelled = init_state(jax.random.key(2), learner, data)[0].labelled
        # Three calls after the compiling one (each its own key, as before).
        fit = partial(learner.train, params=params0, x_pool=data.pool_x, y_pool=data.pool_y,
                      labelled=labelled)
        keys = iter([3, 0, 1, 2])
        train[name] = time_calls(lambda fit=fit, keys=keys: fit(jax.random.key(next(keys))),
                                 3).seconds
    if old is None:
        train["ratio"] = train["ensemble"] / train["one network"]
    result = {"machine": cpu_info(), "queries": rows, "training_s": train,
              "ensemble_size": EnsembleOptions().size}
    write_json(out, result)
    print(write_table("posterior_timing"))


def _last_state(name: str, args, seed: int):
    """(model, run config, device data, state) of the last finished round of a variant's
    run, or None if it has no checkpoint."""
    import numpy as np

    from jaxal.apps.experiment import load_split, run_config_dict, to_device
    from jaxal.apps.results import CHECKPOINT, load_checkpoint, state_template
    from jaxal.loop import make_learner
    from jaxal.model import build_model
    from jaxal.sharding import use_devices

    config = ExperimentConfig(dataset="mnist", seed=seed, pool_size=args.pool_size,
                              data_dir=args.data_dir, al=al_config(name, args))
    with use_devices(config.devices) as devices:
        split = load_split(config)
        data = to_device(split)
        model = build_model(config.dataset, split.num_classes, config.al)
        learner = make_learner(model, config.al, split.pool_x.shape[1:], split.num_classes)
        out_dir = run_dir(args, f"{name}-seed{seed}")
        # The run's own config as it wrote it: runs from before a config field was
        # renamed (conv_dropout -> dropout) hold the same state under the old name.
        written = run_config_dict(config, split, devices)["experiment"]
        if (out_dir / CHECKPOINT).exists():
            with np.load(out_dir / CHECKPOINT, allow_pickle=False) as arrays:
                written = json.loads(arrays["manifest"].tobytes())["config"]
        resumed = load_checkpoint(out_dir, state_template(learner, data), written)
    return None if resumed is None else (model, config.al, data, resumed[0])


def _last_states(args, seed: int):
    """(variant, its ``_last_state``) for each of ``--variants`` that has a checkpoint of
    ``seed``; the others are named and skipped."""
    for name in args.variants:
        if (last := _last_state(name, args, seed)) is None:
            print(f"{name}: no checkpoint of seed {seed}; skipped")
            continue
        yield name, last


def _bald_and_entropy(predict, x):
    """jaxal's BALD and predictive-entropy scores [n] of the points x, from their
    ``predict(x_chunk)`` (a PredictiveOutput with sample_probs), 500 points at a time."""
    import numpy as np

    from jaxal.acquisition import bald, predictive_entropy

    outs = [predict(x[start:start + 500]) for start in range(0, x.shape[0], 500)]
    return (np.concatenate([bald(None, out) for out in outs]),
            np.concatenate([predictive_entropy(None, out) for out in outs]))


def map_replay(args) -> dict:
    """Are a run's queries good, apart from its predictive?

    For each ``--variants`` run and seed, replays its labelled sets (the initial labels,
    then each round's queried ``pool_index`` from ``queries.jsonl``) through the plugin
    learner with the variant's own model and training: the same keys as the run
    (``run_rounds``: round r fits with ``split(fold_in(key_rounds, r))[1]``) and the same
    initial weights, so each round's θ_MAP is the run's own, evaluated by its softmax.
    A row's test accuracy is then its predictive's, the replay's that of the network its
    queries trained. For a plugin run the two are the same network: the replay must
    reproduce the run's recorded curve (a check of the replay itself). It does up to
    training's own run-to-run noise: XLA:CPU's training is not bitwise reproducible
    between processes (thread placement), and a few hundred steps on tens of labels
    amplify the last bit (plugin-entropy-power seed 0: 0.895 replayed, 0.891 recorded;
    round 0 replays to the 0.5527 that random, margin and plugin-entropy recorded).
    """
    import jax
    import numpy as np

    from jaxal.apps.experiment import load_split, to_device
    from jaxal.loop import fit_and_evaluate, init_state, make_learner
    from jaxal.model import build_model
    from jaxal.sharding import use_devices

    out = RESULTS / "map_replay.json"
    rows = json.loads(out.read_text())["rows"] if out.exists() else {}
    recorded_runs = json.loads(RESULTS.joinpath(f"{stem(args)}.json").read_text())["runs"]
    splits = {}      # seed -> (split, device data): loaded once, shared by its variants
    for seed in args.seeds:
        for name in args.variants:
            queries = run_dir(args, f"{name}-seed{seed}") / "queries.jsonl"
            if f"{name}-seed{seed}" in rows:      # replayed before: the same keys, the same
                continue                          # labels (delete the row to replay again)
            if not queries.exists():
                print(f"{name}: no queries of seed {seed}; skipped")
                continue
            # By round: a resumed run may have written a round twice.
            by_round = {(q := json.loads(line))["round"]: q["pool_index"]
                        for line in queries.read_text().splitlines() if line.strip()}
            if len(by_round) < args.rounds:
                print(f"{name}: seed {seed} has {len(by_round)} of {args.rounds} rounds; "
                      "skipped until it finishes")
                continue
            batches = [by_round[r] for r in sorted(by_round)]
            fields = {k: v for k, v in VARIANTS[name].items() if k in ("model", "train")}
            al = ALConfig(rounds=args.rounds, query_size=args.query_size,
                          init_per_class=args.init_per_class, acquisition="random", **fields)
            config = ExperimentConfig(dataset="mnist", seed=seed, pool_size=args.pool_size,
                                      data_dir=args.data_dir, al=al)
            with use_devices(config.devices):
                if seed not in splits:
                    split = load_split(config)
                    splits[seed] = (split, to_device(split))
                split, data = splits[seed]
                model = build_model(config.dataset, split.num_classes, al)
                learner = make_learner(model, al, split.pool_x.shape[1:], split.num_classes)
                key_init, key_rounds = jax.random.split(jax.random.key(seed))
                state, info = init_state(key_init, learner, data)
                accuracy, labels, labelled = ([info.metrics.test_accuracy],
                                              [info.num_labels], state.labelled)
                for r, batch in enumerate(batches, start=1):
                    labelled = labelled.at[np.asarray(batch)].set(True)
                    _, key_fit = jax.random.split(jax.random.fold_in(key_rounds, r))
                    _, _, metrics, _ = fit_and_evaluate(
                        key_fit, learner, data, learner.init(state.init_key), labelled)
                    accuracy.append(metrics.test_accuracy)
                    labels.append(int(labelled.sum()))
                    print(f"{name}-seed{seed} round {r}: {labels[-1]} labels, MAP test "
                          f"accuracy {accuracy[-1]:.4f}", flush=True)
            recorded = recorded_runs.get(f"{name}-seed{seed}")
            rows[f"{name}-seed{seed}"] = {
                "labels": labels, "map_test_accuracy": accuracy,
                "map_aubc": aubc(labels, accuracy),
                "recorded_aubc": (aubc(recorded["labels"], recorded["test_accuracy"])
                                  if recorded else None)}
            write_json(out, {"rows": rows})
    # Random's recorded curve is its MAP's (plugin predictive): the table compares
    # against it, from the protocol's posterior_curves.json.
    print(write_table("map_replay"))
    return rows


def bald_noise(args) -> dict:
    """Is a finished run's BALD ranking signal or Monte Carlo noise?

    From the last checkpoint of each ``--variants`` run (seed ``--seeds[0]``), the BALD
    scores I(y; θ | x) = H(E_s p_s) - E_s H(p_s) of the unlabelled pool (a fixed 2,000 of
    it for subset variants) are estimated twice, with two independent posterior-sample
    keys (the S samples of the run's query). The per-point Monte Carlo standard error is
    rms(b₁ - b₂) / √2. Reported: the mean score, the spread the ranking reads (10th
    highest minus the median) over that error, the Spearman correlation of the two
    draws' scores and the overlap of their top 10 (the batch a query picks), and the
    Spearman correlation of BALD with predictive entropy (how much BALD ranks unlike
    entropy). An ensemble's samples are its members: two draws agree exactly.
    """
    import jax
    import numpy as np
    from scipy.stats import spearmanr

    from jaxal.components import POSTERIORS
    from jaxal.posteriors import bind
    from jaxal.predictive import PREDICTIVES

    seed, rows = args.seeds[0], {}
    for name, (model, config, data, state) in _last_states(args, seed):
        unlabelled = np.flatnonzero(~np.asarray(state.labelled))
        if config.pool_subset is not None:
            unlabelled = np.sort(np.random.default_rng(seed).choice(
                unlabelled, config.pool_subset, replace=False))
        # The run's posterior record with its options (the query's S samples).
        posterior = bind(POSTERIORS[config.posterior], config.options("posterior"))
        predict = jax.jit(partial(PREDICTIVES[config.predictive].predict, model=model,
                                  state=state.posterior, posterior=posterior))
        x = data.pool_x[unlabelled]
        (b1, e1), (b2, _) = (
            _bald_and_entropy(lambda x_chunk, k=k, f=predict: f(k, x=x_chunk), x)
            for k in jax.random.split(jax.random.key(seed + 1)))
        se = float(np.sqrt(np.mean((b1 - b2) ** 2) / 2))
        order1, order2 = np.argsort(-b1), np.argsort(-b2)
        spread = float(b1[order1[9]] - np.median(b1))
        rows[name] = {
            "round": int(state.round), "points": int(unlabelled.size),
            "mean_bald": float(b1.mean()), "top10_minus_median": spread, "mc_se": se,
            "spread_over_se": spread / se if se > 0 else None,
            "spearman_draws": float(spearmanr(b1, b2).statistic),
            "top10_overlap": len(set(order1[:10]) & set(order2[:10])),
            "spearman_bald_entropy": float(spearmanr(b1, e1).statistic)}
        print(name, rows[name], flush=True)
    result = {"seed": seed, "rows": rows}
    write_json(RESULTS / "bald_noise.json", result)
    print(write_table("bald_noise"))
    return result


def evidence_diagnosis(args) -> dict:
    """Why does the evidence-fitted λ ruin the GLM predictive? From the last checkpoint of
    each ``--variants`` run (seed ``--seeds[0]``), per layer l of its Laplace posterior:
    P_l weights, their mean square θ_l²/P_l against the prior variance 1/λ_l, and
    λ_l ||θ_l||², which at the evidence's optimum equals the effective number of
    parameters the data determine, γ_l = Σ_i h_i / (h_i + λ_l) (MacKay 1992; for KFAC
    the h_i are the Kronecker eigenvalues, printed next to it as a check that the fit
    converged). On 1,000 test points: the MAP logits' spread over classes (std), the
    linearised logits' posterior std sqrt(diag J Σ Jᵀ) (mean over points and classes), and
    the test accuracy of the MAP against the run's predictive (its samples).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.flatten_util import ravel_pytree

    from jaxal.components import POSTERIORS
    from jaxal.curvature import kfac
    from jaxal.posteriors import bind
    from jaxal.posteriors.laplace import (
        LastLayerLaplace,
        head_params,
        laplace_logit_variance,
        layer_groups,
    )
    from jaxal.predictive import PREDICTIVES

    seed, rows = args.seeds[0], {}
    for name, (model, config, data, state) in _last_states(args, seed):
        post = state.posterior
        inner = post.head if isinstance(post, LastLayerLaplace) else post.weights
        theta = head_params(post.params) if isinstance(post, LastLayerLaplace) else post.params
        group, names = layer_groups(theta)
        flat = np.asarray(ravel_pytree(theta)[0])
        lam = np.broadcast_to(np.asarray(inner.prior_precision), flat.shape)
        spectral = {}
        if isinstance(inner, kfac.KFACLaplace):
            spectral = {jax.tree_util.keystr(tuple(jax.tree_util.DictKey(k) for k in path)):
                        float(gamma) for path, gamma in kfac.effective_parameters(inner).items()}
        layers = {}
        for i, layer in enumerate(names):
            w = flat[group == i]
            lam_l = float(lam[group == i][0])
            layers[layer] = {"weights": int(w.size), "mean_square_weight": float(np.mean(w ** 2)),
                             "prior_variance": 1.0 / lam_l, "prior_precision": lam_l,
                             "lambda_norm2": lam_l * float(np.sum(w ** 2)),
                             "gamma_spectral": next((g for k, g in spectral.items()
                                                     if layer.endswith(k)), None)}
        x, y = data.test_x[:1000], np.asarray(data.test_y[:1000])
        options = config.options("posterior")
        logits, variance = laplace_logit_variance(model, post, x, options)
        probs = PREDICTIVES[config.predictive].predict(
            jax.random.key(seed + 1), model=model, state=post, x=x,
            posterior=bind(POSTERIORS[config.posterior], options)).probs
        rows[f"{name}-seed{seed}-round{int(state.round)}"] = row = {
            "round": int(state.round), "labels": int(np.asarray(state.labelled).sum()),
            "layers": layers,
            "map_logit_std": float(jnp.std(logits, axis=-1).mean()),
            "glm_logit_std": float(jnp.sqrt(variance).mean()),
            "map_accuracy": float(np.mean(np.asarray(logits).argmax(-1) == y)),
            "predictive_accuracy": float(np.mean(np.asarray(probs).argmax(-1) == y))}
        print(name, row, flush=True)
    # Rows of earlier calls (other runs, seeds or rounds) are kept: ours win.
    out = RESULTS / "evidence_diagnosis.json"
    old = json.loads(out.read_text())["rows"] if out.exists() else {}
    result = {"rows": {**old, **rows}}
    write_json(out, result)
    print(write_table("evidence_diagnosis"))
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--stage", type=int, choices=(1, 2), default=1)
    # The two best BALD posteriors of stage 1 (AUBC; benchmarks/results/posterior_curves.md).
    p.add_argument("--stage2-posteriors", nargs="*", default=["ensemble", "mc-dropout"])
    p.add_argument("--variants", nargs="*", default=None, choices=sorted(VARIANTS),
                   help="run these instead of the stage's list")
    # The protocol's setting (Kirsch et al.); any other writes to its own files.
    for field, value in DEFAULT_SETTING.items():
        p.add_argument(f"--{field.replace('_', '-')}", type=int, default=value)
    p.add_argument("--table-only", action="store_true", help="rewrite the table, run nothing")
    p.add_argument("--timing", action="store_true",
                   help="time one query per posterior and the ensemble's training instead "
                        "(needs a quiet machine)")
    p.add_argument("--bald-noise", action="store_true",
                   help="from the finished runs of --variants (first seed): BALD's Monte "
                        "Carlo error against the spread of its scores")
    p.add_argument("--evidence-diagnosis", action="store_true",
                   help="from the finished runs of --variants (first seed): the evidence's "
                        "λ per layer against the weights, and the GLM logits' posterior std")
    p.add_argument("--map-replay", action="store_true",
                   help="replay the queries of --variants (each of --seeds) through the "
                        "plugin learner: the test accuracy of the network their labels "
                        "trained, apart from the run's predictive")
    args = p.parse_args()
    if args.evidence_diagnosis and not args.variants:
        p.error("--evidence-diagnosis reads finished runs: name them, e.g. --variants "
                "ll-glm-evidence-bald")
    if args.map_replay and not args.variants:
        p.error("--map-replay reads finished runs' queries: name them, e.g. --variants "
                "random kfac-glm-layerwise-bald")
    if args.bald_noise and not args.variants:
        p.error("--bald-noise reads finished runs: name them, e.g. --variants ll-laplace-bald "
                "ensemble-bald")
    configure_cpu()
    if args.evidence_diagnosis:
        evidence_diagnosis(args)
        return
    if args.bald_noise:
        bald_noise(args)
        return
    if args.map_replay:
        map_replay(args)
        return
    if args.timing:
        timing(args)
        return
    names = args.variants or (STAGE1 if args.stage == 1 else stage2(args.stage2_posteriors))
    result = run(args, names)
    every = [n for n in VARIANTS if any(k.startswith(f"{n}-seed") for k in result["runs"])]
    text = table(result)
    (RESULTS / f"{stem(args)}.md").write_text(text + "\n")
    figure(result, args.seeds, every, RESULTS / f"{stem(args)}.png")
    print(text)


if __name__ == "__main__":
    main()
