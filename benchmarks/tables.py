"""The result tables, from the result files alone: ``python benchmarks/tables.py`` rewrites
``benchmarks/results/<name>.md`` and every region of README.md and docs/*.md between

    <!-- table: <name> -->
    ...
    <!-- /table -->

with the table ``<name>`` of ``TABLES``, made from its result file(s)
``benchmarks/results/*.json`` (``--check``: change nothing, list what differs; exit 1 if
anything does). Each docs region opens with the command that made its result file.
``tests/test_tables.py`` checks that the committed files match. Every table is written by
``jaxal.apps.comparison.markdown_table``; its statistics are the library's. A benchmark script
writes its ``.md`` with ``write_table(name)`` once its JSON is written, so the table it
prints is the one this file makes.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

from common import RESULTS, STAND_IN, area, labels_to, mean_std, per_round, runs_of
from machine import describe

from jaxal.apps.comparison import labels_to_reach, markdown_table, target_header, targets_of
from jaxal.config import describe_protocol

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
REGION = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
TARGETS = targets_of("mnist")     # the protocol's: 90% / 95%


def _seeds(result: dict) -> list[int]:
    return sorted({int(k.rsplit("-seed", 1)[1]) for k in result["runs"]})


def posterior_curves(result: dict) -> str:
    """``benchmarks/posterior_curves.py``: per variant, labels to 90% / 95% (median over
    seeds), AUBC and its difference from random seed by seed, last-round test metrics,
    seconds per round and the last prior precision."""
    s, about, seeds = result["setting"], result["table"], _seeds(result)
    subset = about["subset_size"]
    head = (f"MNIST, pool {s['pool_size']}, {s['init_per_class']} labels per class to start + "
            f"{s['rounds']} rounds x {s['query_size']}, seed CNN 500 steps a fit (MC dropout: "
            f"{about['mc_dropout_steps']:,}; mc-dropout-500: 500); seeds {seeds}. Labels to "
            "reach: median over seeds. NLL, ECE: test set, last round. s/round: mean over "
            "rounds 1-20 (indicative: other jobs shared the 2 cores). `subset`: the query "
            f"scores {subset:,} random unlabelled pool points a round (--pool-subset), not all "
            "10,000. AUBC - random: the difference seed by seed (same initial labels, pool and "
            "weights), mean ± std over the seeds both have; the seeds differ more from each "
            "other than the methods within a seed.")
    random = {seed: area(r) for seed in seeds if (r := result["runs"].get(f"random-seed{seed}"))}
    rows = []
    for name, variant in about["variants"].items():
        runs = runs_of(result, name, seeds)
        if not runs:
            continue
        gains = [area(r) - random[seed] for seed in seeds
                 if (r := result["runs"].get(f"{name}-seed{seed}")) and seed in random]
        gain = ("—" if name == "random" or not gains else f"{statistics.mean(gains):+.3f}"
                + (f" ± {statistics.stdev(gains):.3f}" if len(gains) > 1 else ""))
        last = lambda key, runs=runs: statistics.mean(r[key][-1] for r in runs)
        per_round_s = partial(per_round, runs)
        rows.append([
            f"{name}{' (subset)' if variant['pool_subset'] else ''} ({len(runs)} seeds)",
            *(labels_to(runs, t) for t in TARGETS),
            mean_std(map(area, runs), True), gain, f"{last('test_accuracy'):.3f}",
            f"{last('test_nll'):.3f}", f"{last('test_ece'):.3f}", f"{per_round_s('query_s'):.1f}",
            f"{per_round_s('train_s'):.1f}", f"{per_round_s('posterior_s'):.1f}",
            f"{last('prior_precision'):.3g}"])
    return head + "\n\n" + markdown_table(
        ["variant", *(target_header(t, "mnist") for t in TARGETS), "AUBC (mean ± std)",
         "AUBC - random",
         "final acc", "NLL", "ECE", "query s", "train s", "posterior s", "λ (last)"], rows)


def cifar10_curves(result: dict) -> str:
    """``benchmarks/cifar10_curves.py curves``: accuracy at fixed budgets, AUBC and
    seconds per round per method; then each method against random budget by budget."""
    about, seeds = result["table"], _seeds(result)
    budgets, methods = about["budgets"], about["methods"]
    head = (f"{result['setting']['data']}. Protocol: {result['setting']['protocol']}; pool "
            "49,000, test 10,000. Accuracy: test set, mean ± std over the seeds run (one seed: "
            "no spread). AUBC: trapezoid over 1,000-11,000 labels / range. s/round: median "
            "over rounds 1-10 (indicative: two runs shared the 2 cores, one core each; the "
            "quiet figures are in cifar10_timing.md).")
    at = lambda r, b: r["test_accuracy"][r["labels"].index(b)]
    rows = []
    for method in methods:
        if not (runs := runs_of(result, method, seeds)):
            continue
        # Median over rounds: a round paused for a quiet timing does not count.
        per_round_s = partial(per_round, runs, over=statistics.median)
        rows.append([method, len(runs),
                     *(mean_std((at(r, b) for r in runs), False) for b in budgets),
                     mean_std((r["test_accuracy"][-1] for r in runs), False),
                     mean_std(map(area, runs), False), f"{per_round_s('train_s'):.0f}",
                     f"{per_round_s('query_s'):.1f}", f"{per_round_s('posterior_s'):.1f}"])
    table = markdown_table(["method", "seeds", *(f"acc @ {b:,}" for b in budgets),
                            "final acc (11k)", "AUBC", "train s", "query s", "posterior s"],
                           rows)
    # The target, budget by budget: accuracy minus random's (mean over the seeds
    # both ran) against the spread over seeds (the larger std); 'above' only past it.
    final = (*budgets, 11000)
    against = []
    for method in methods:
        shared = [s for s in seeds if f"{method}-seed{s}" in result["runs"]
                  and f"random-seed{s}" in result["runs"]]
        if method == "random" or not shared:
            continue
        cells = []
        for b in final:
            acc = {m: [at(result["runs"][f"{m}-seed{s}"], b) for s in shared]
                   for m in (method, "random")}
            diff = statistics.mean(acc[method]) - statistics.mean(acc["random"])
            if len(shared) < 2:
                cells.append(f"{diff:+.3f} (1 seed: no spread)")
                continue
            spread = max(statistics.stdev(acc[method]), statistics.stdev(acc["random"]))
            verdict = "above" if diff > spread else "below" if diff < -spread else "within"
            cells.append(f"{diff:+.3f} vs {spread:.3f}: {verdict}")
        against.append([method, len(shared), *cells])
    return "\n\n".join([
        head, table, "Against random (seeds both ran): accuracy difference, mean over seeds, "
        "and the spread over seeds (the larger of the two std); 'above' only where the "
        "difference exceeds the spread.",
        markdown_table(["method", "seeds", *(f"@ {b:,}" for b in final)], against)])


def posterior_timing(result: dict) -> str:
    """``benchmarks/posterior_curves.py --timing``: one BALD query per posterior, and the
    ensemble's training against one network's."""
    train = result["training_s"]
    rows = [[name, f"{r['pool_scored']:,}", f"{r['query_s']:.2f}", f"{r['query_compile_s']:.1f}"]
            for name, r in result["queries"].items()]
    return "\n\n".join([
        "One BALD query of 10 after one fit on 20 labels (median of 3, compile apart), and "
        "500 training steps of one network vs the ensemble (median of 3).",
        markdown_table(["posterior", "points scored", "query s", "query compile s"], rows),
        f"Training 500 steps: one network {train['one network']:.2f} s, ensemble of "
        f"{result['ensemble_size']} {train['ensemble']:.2f} s: {train['ratio']:.2f}x."])


def map_replay(result: dict, curves: dict) -> str:
    """``benchmarks/posterior_curves.py --map-replay``: each replayed run's AUBC through
    one network against its own predictive's, and against the same seed's random run of
    ``curves`` (the posterior curves' result)."""
    random = {key.rsplit("-seed", 1)[1]: area(r) for key, r in curves["runs"].items()
              if key.startswith("random-seed")}
    rows = []
    for key, r in result["rows"].items():
        seed = key.rsplit("-seed", 1)[1]
        reach = " / ".join(str(labels_to_reach(r["labels"], r["map_test_accuracy"], t) or "–")
                           for t in TARGETS)
        diff = (f"{r['map_aubc'] - random[seed]:+.3f}" if seed in random
                and not key.startswith("random-") else "—")
        recorded = "—" if r["recorded_aubc"] is None else f"{r['recorded_aubc']:.3f}"
        rows.append([key, reach, recorded, f"{r['map_aubc']:.3f}", diff])
    return ("Each run's queries replayed through the plugin learner (the run's own θ_MAP each "
            "round, softmax predictive): the AUBC of the network its labels trained, against "
            "the AUBC its own predictive recorded (for a plugin run the two must agree, up to "
            "training's run-to-run noise: XLA:CPU is not bitwise reproducible between "
            "processes). MAP - random: against the same seed's recorded random run.\n\n"
            + markdown_table(["run", "labels to 90% / 95% (MAP)", "AUBC, its predictive",
                              "AUBC, its MAP", "MAP - random"], rows))


def bald_noise(result: dict) -> str:
    """``benchmarks/posterior_curves.py --bald-noise``: BALD's Monte Carlo error against the
    spread of its scores, per run."""
    rows = [[name, r["round"], f"{r['points']:,}", f"{r['mean_bald']:.4f}",
             f"{r['top10_minus_median']:.4f}", f"{r['mc_se']:.4f}",
             "exact" if r["spread_over_se"] is None else f"{r['spread_over_se']:.1f}",
             f"{r['spearman_draws']:.3f}", f"{r['top10_overlap']}/10",
             f"{r['spearman_bald_entropy']:.3f}"] for name, r in result["rows"].items()]
    return (f"BALD from each run's last checkpoint, seed {result['seed']}: the unlabelled pool "
            "(subset variants: a fixed 2,000 of it) scored twice with independent posterior "
            "samples. MC se: rms(b₁ - b₂)/√2 per point. Spread: 10th highest score minus the "
            "median.\n\n" + markdown_table(
                ["variant", "round", "points", "mean BALD", "spread", "MC se", "spread / se",
                 "Spearman, two draws", "top-10 overlap", "Spearman with entropy"], rows))


def evidence_diagnosis(result: dict) -> str:
    """``benchmarks/posterior_curves.py --evidence-diagnosis``: per run and layer, the
    evidence's λ against the weights; the GLM logits' posterior std against the MAP's."""
    parts = ["Evidence-fitted prior precision, from a run's last checkpoint. Per layer: mean "
             "square weight θ²/P against the prior variance 1/λ; λ||θ||² (= γ, the effective "
             "number of parameters the data determine, at the evidence's optimum) and, for "
             "KFAC, γ from the Kronecker eigenvalues. Logits on 1,000 test points: the MAP's "
             "spread over classes against the linearised posterior std sqrt(diag J Σ Jᵀ)."]
    for name, r in result["rows"].items():
        rows = [[layer, f"{v['weights']:,}", f"{v['mean_square_weight']:.2e}",
                 f"{v['prior_variance']:.3g}", f"{v['prior_precision']:.3g}",
                 f"{v['lambda_norm2']:.1f}",
                 "—" if v["gamma_spectral"] is None else f"{v['gamma_spectral']:.1f}"]
                for layer, v in r["layers"].items()]
        parts += [f"**{name}** (round {r['round']}, {r['labels']} labels): MAP logit std "
                  f"{r['map_logit_std']:.2f}, GLM logit posterior std {r['glm_logit_std']:.2f}; "
                  f"test accuracy (1,000) MAP {r['map_accuracy']:.3f}, predictive "
                  f"{r['predictive_accuracy']:.3f}",
                  markdown_table(["layer", "weights", "θ²/P", "1/λ", "λ", "λ‖θ‖²",
                                  "γ (spectral)"], rows)]
    return "\n\n".join(parts)


def cifar10_layers(layers: dict) -> str:
    """The seed CNN's forward pass by stage, MNIST's shape against CIFAR-10's, and their
    sum (``cifar10_curves.py layers``)."""
    stages = layers["rows"]
    total = {k: sum(r[k] for r in stages if not r["mnist"].endswith("unpadded"))
             for k in ("mnist_us", "cifar10_us", "mnist_flops", "cifar10_flops")}
    rows = [[f"{r['mnist']} / {r['cifar10']}", f"{r['mnist_us']:.1f}", f"{r['cifar10_us']:.1f}",
             f"{r['cifar10_us'] / r['mnist_us']:.2f}",
             f"{r['cifar10_flops'] / r['mnist_flops']:.2f}",
             f"{r['mnist_flops'] / r['mnist_us'] / 1e3:.1f}",
             f"{r['cifar10_flops'] / r['cifar10_us'] / 1e3:.1f}"]
            for r in [*stages, {"mnist": "forward (sum)", "cifar10": "", **total}]]
    return markdown_table(["stage (MNIST / CIFAR-10 shape)", "MNIST µs/image",
                           "CIFAR-10 µs/image", "time ratio", "FLOPs ratio", "MNIST GFLOP/s",
                           "CIFAR-10 GFLOP/s"], rows)


def cifar10_timing(timing: dict) -> str:
    """``benchmarks/cifar10_curves.py round|layers|noise|ceiling``: what of them has run."""
    protocol = (timing["ceiling"]["protocol"] if "ceiling" in timing
                else describe_protocol("cifar10"))
    parts = [f"{STAND_IN}, {protocol}."]
    if "round" in timing:
        rows = [[m, f"{r['round_s']:.0f}", f"{r['train_s']:.0f} ({r['train_steps']})",
                 f"{r['query_s']:.1f}", f"{r['posterior_s']:.1f}", f"{r['eval_s']:.1f}"]
                for m, r in timing["round"]["rows"].items()]
        parts += ["One AL round from 10,000 labels (query 1,000, train on 11,000, posterior, "
                  f"evaluation), quiet machine: {timing['round']['machine']}.",
                  markdown_table(["method", "round s", "train s (steps)", "query s",
                                  "posterior s", "eval s"], rows)]
    if "layers" in timing:
        parts += ["The seed CNN's forward pass by stage, 4,096 images a call, MNIST's shape "
                  f"against CIFAR-10's ({timing['layers']['machine']}):",
                  cifar10_layers(timing["layers"])]
        if "train_step_ms" in timing["layers"]:
            ms = timing["layers"]["train_step_ms"]
            parts.append(f"One training step (minibatch of 128, augmented): {ms['padded']:.1f} "
                         f"ms with the first conv padded to 4 channels, {ms['unpadded']:.1f} ms "
                         f"without ({ms['padded'] / ms['unpadded']:.2f}x).")
    if "fit_noise" in timing:
        rows = [[f"{int(labels):,}", len(acc), ", ".join(f"{a:.3f}" for a in acc),
                 mean_std(acc), f"{max(acc) - min(acc):.3f}"]
                for labels, acc in timing["fit_noise"]["rows"].items()]
        parts += ["The protocol's fit repeated on one uniformly drawn labelled set (same "
                  "initial weights, other training keys): test accuracy of each fit.",
                  markdown_table(["labels", "fits", "test accuracy, each", "mean ± std",
                                  "max - min"], rows)]
    if "ceiling" in timing:
        c = timing["ceiling"]
        parts.append(f"Ceiling: the seed CNN trained with the protocol's schedule on the whole "
                     f"pool ({c['labels']:,} labels, {c['steps']} steps): test accuracy "
                     f"{c['accuracy']:.3f}, {c['train_s']:.0f} s training ({c['machine']}).")
    return "\n\n".join(parts)


POOL_METHODS = ("margin", "badge", "ll-laplace-bald")


def cifar10_pool(timing: dict, key: str = "pool") -> str:
    """``benchmarks/cifar10_curves.py pool [--chunk-size N]`` (``timing[key]``): one query
    over the whole pool, CIFAR-10 stand-in against MNIST; against the reference version's
    jaxal where it was timed too."""
    pool = timing[key]
    rows = pool["rows"]
    chunk = key.removeprefix("pool-chunk") if key != "pool" else "4096"
    per_method = []
    for method in POOL_METHODS:
        m, c = rows[f"mnist/{method}"], rows[f"cifar10/{method}"]
        per_method.append([method, f"{m['us_per_image']:.0f}", f"{c['us_per_image']:.0f}",
                           f"{c['us_per_image'] / m['us_per_image']:.2f}",
                           f"{c['forward_flops'] / m['forward_flops']:.2f}",
                           f"{m['peak_mb']:.0f}", f"{c['peak_mb']:.0f}"])
    parts = [f"One query over the whole pool, {pool['machine']} (quiet); MNIST: 10 queried of "
             f"59,000; {STAND_IN}: 1,000 of 49,000. µs/image: median of 3, compile apart; "
             "FLOPs: the CNN's forward pass per image; peak MB: memory the query adds to the "
             f"process; {chunk} images a chunk.",
             markdown_table(["method", "MNIST µs/image", "CIFAR-10 stand-in µs/image", "ratio",
                             "forward FLOPs ratio", "MNIST peak MB",
                             "CIFAR-10 stand-in peak MB"], per_method)]
    if "reference" in pool:
        against = [[k, f"{r['us_per_image']:.0f}", f"{r['reference_us_per_image']:.0f}",
                    f"{r['us_per_image'] / r['reference_us_per_image']:.2f}",
                    f"{r['peak_mb']:.0f}", f"{r['reference_peak_mb']:.0f}"]
                   for k, r in rows.items()]
        parts += [f"Against the jaxal of commit {pool['reference'][:80]!r} (time and peak MB of "
                  "this version and that one's, same sitting):",
                  markdown_table(["dataset/method", "µs/image now", "before", "ratio",
                                  "peak MB now", "before"], against)]
    return "\n\n".join(parts)


def scaling(result: dict) -> str:
    """``benchmarks/scaling.py``: the pool passes and one AL round on 1, 2, 4, 8 devices."""
    rows, base = result["rows"], result["rows"][0]
    kind = "GPU" if rows[0]["backend"] != "cpu" else (
        "forced host devices sharing the same cores: overhead, not speed-up")
    ratio = lambda r, key: f"{r[key]['s'] / base[key]['s']:.2f}"
    table = [[f"{r['devices']} {r['backend']}",
              f"{r['pool_scoring']['images_per_s']:,.0f} ({ratio(r, 'pool_scoring')})",
              f"{r['mc100_bald']['images_per_s']:,.0f} ({ratio(r, 'mc100_bald')})",
              f"{r['al_round']['s']:.1f} ({ratio(r, 'al_round')})",
              f"{r['al_round']['query_s']:.1f} / {r['al_round']['train_s']:.1f} / "
              f"{r['al_round']['eval_s']:.1f}"] for r in rows]
    return (f"Pool passes split over devices ({describe(result['machine'])}; {kind}). Median "
            "of 3, compile apart; x: time relative to the first row.\n\n" + markdown_table(
                ["devices", "pool scoring img/s (x)", "MC-100 BALD img/s (x)",
                 "AL round s (x)", "query / train / eval s"], table))


def scaling_seeds(result: dict) -> str:
    """``benchmarks/scaling.py --seeds``: a comparison's seeds one after another against one
    vmapped program."""
    return (f"{result['seeds']} seeds of an MNIST run (pool 2,000, {result['rounds']} rounds "
            f"of 10, {result['steps']} training steps a fit, entropy), "
            f"{describe(result['machine'])}, one process; wall time with compilation.\n\n"
            + markdown_table(["seeds form", "s"],
                             [[form, f"{s:.1f}"] for form, s in result["seconds"].items()]))


def marglik(result: dict) -> str:
    """``benchmarks/marglik.py``: per N, per prior fit and layer, λ, γ and the prior
    variance against the mean square weight; then the logit stds, the test metrics of the
    MAP, GLM and probit predictives and the training seconds against plain training."""
    lines = [f"Online marginal-likelihood training against the post-hoc evidence fit, "
             f"all-weights KFAC GGN Laplace on MNIST (seed CNN, {result['steps']} Adam steps "
             f"of 32). {result['machine']}. Test metrics on the first "
             f"{result['test_size']:,} test images; logit stds on the first 1,000. "
             "F/B/K: λ updated every F steps from step B on, K Adam steps on log λ each. "
             "train s: compilation apart; x plain: against the evidence-layerwise row's "
             "training (λ = 1) in the same sitting.", ""]
    by_size: dict = {}
    for row in result["rows"]:
        by_size.setdefault((row["seed"], row["labels"]), []).append(row)
    metrics = lambda t: f"{t['accuracy']:.4f} / {t['nll']:.3f} / {t['ece']:.3f}"
    for (seed, labels), rows in by_size.items():
        plain = next((r for r in rows if r["name"] == "evidence-layerwise"), None)
        layers = [[row["name"], layer.replace("'", ""), f"{v['num_weights']:,.0f}",
                   f"{v['prior_precision']:.3g}", f"{v['effective_dimension']:.1f}",
                   f"{v['prior_variance']:.3g}", f"{v['mean_square_weight']:.3g}",
                   f"{v['variance_ratio']:.3g}"]
                  for row in rows for layer, v in row["diagnosis"]["layers"].items()]
        summary = [[row["name"], f"{row['diagnosis']['map_logit_std']:.2f}",
                    f"{row['diagnosis']['glm_logit_std']:.2f}",
                    *(metrics(row["test"][p]) for p in ("plugin", "glm", "probit")),
                    f"{row['train_seconds']:.1f}",
                    "—" if plain is None
                    else f"{row['train_seconds'] / plain['train_seconds']:.2f}x",
                    f"{row['fit_seconds']:.2f}"] for row in rows]
        lines += [f"### N = {labels} (seed {seed})", "",
                  markdown_table(["prior", "layer", "P", "λ", "γ", "1/λ", "θ²/P",
                                  "(1/λ)/(θ²/P)"], layers), "",
                  markdown_table(["prior", "MAP logit spread", "GLM logit std",
                                  "MAP acc / NLL / ECE", "GLM acc / NLL / ECE",
                                  "probit acc / NLL / ECE", "train s", "x plain", "fit s"],
                                 summary), ""]
    return "\n".join(lines).rstrip("\n")


def marglik_memory(result: dict) -> str:
    """``benchmarks/marglik.py --peak-rss``: each prior fit's peak RSS after training and
    after the Laplace fit, one process per row, with and without jaxal's malloc tuning."""
    rows = [[r["name"], "on" if r["malloc_tuning"] else "off (JAXAL_MALLOC_TUNING=0)",
             f"{r['loaded_mib']:,.0f}", f"{r['train_peak_mib']:,.0f}",
             f"{r['fit_peak_mib']:,.0f}", f"{r['train_s']:.0f}", f"{r['fit_s']:.1f}"]
            for r in result["rows"]]
    n = result["rows"][0]["labels"]
    return "\n".join([
        f"Peak RSS (MiB) of the all-weights KFAC GGN Laplace's prior fits on the seed CNN, "
        f"trained {result['steps']} Adam steps on {n:,} MNIST labels and fitted on them, "
        f"each row in its own process. {result['machine']}. Seconds include compilation.", "",
        markdown_table(["prior", "malloc tuning", "data loaded", "after training",
                        "after the fit", "train s", "fit s"], rows)])


def label_server(result: dict) -> str:
    """``benchmarks/label_server.py``: the labelling page's first load and the median and
    95th percentile of each action's answer time, against issue 32's targets."""
    setting = result["setting"]
    rows = [[name, f"{s['median_ms']:.1f}", f"{s['p95_ms']:.1f}", f"{s['max_ms']:.1f}"]
            for name, s in result["actions"].items()]
    return "\n".join([
        f"The labelling page with a folder of {setting['images']:,} PNGs "
        f"({setting['labelled']:,} labelled, a batch of {setting['query_size']}), served by "
        f"uvicorn on 127.0.0.1 and timed with httpx over loopback, {setting['repeats']} times "
        f"each; {result['machine']['model']}, {result['machine']['cpus']} cpus. An action is "
        "its request and the /api/state the page fetches after it; the next image is read, "
        "hashed and resized afresh.", "",
        f"First page load with the session warm (page, script, style, state, first image): "
        f"**{result['first_load_ms']:.0f} ms** (target: under 1,000 ms). The folder's first "
        f"read, once per session: {result['seconds']['first_read_of_folder']:.1f} s.", "",
        markdown_table(["action", "median ms", "95th percentile ms", "max ms"], rows), "",
        "Target: an action under 100 ms."])


def al_round_pairs(result: dict) -> str:
    """``benchmarks/al_round.py --training-pairs K``: per batch size and kernel, jaxal's
    and PyTorch's images/s pair by pair, the median ratio and train_map's compile time."""
    tp = result["training_pairs"]
    torch_versions = tp["torch"][0]["versions"]
    lines = [f"{describe(result['machine'])}; jax {result['versions']['jax']}, torch "
             f"{torch_versions['torch']} ({torch_versions['cpu_capability']}); training "
             f"{tp['steps']} steps a measurement through `train_map`, PyTorch's best layout "
             "(mean of the runs just before and after each jaxal run)", "",
             "| batch, kernel | form | jaxal images/s, pair by pair | PyTorch images/s | "
             "ratios | median ratio | compile (s) |", "|---|---|---|---|---|---|---|"]
    forms = {(r["batch_size"], r["conv"]): r["form"] for rows in tp["jaxal"] for r in rows}
    # The first pair's: later pairs find the programs compiled.
    compiles = {(r["batch_size"], r["conv"]): f"{r['train_map_compile_s']:.1f}"
                for r in tp["jaxal"][0] if "train_map_compile_s" in r}
    for key, r in tp["ratios"].items():
        b, conv = key[1:].split("_", 1)
        pairs = r["pairs"]
        lines.append(f"| {b}, {conv} | {forms[(int(b), conv)]} | "
                     + ", ".join(f"{q['jaxal']:,.0f}" for q in pairs) + " | "
                     + ", ".join(f"{q['torch']:,.0f}" for q in pairs) + " | "
                     + ", ".join(f"{q['ratio']:.2f}" for q in pairs)
                     + f" | {r['median']:.2f}x | {compiles.get((int(b), conv), '–')} |")
    return "\n".join(lines)


class Table(NamedTuple):
    """A result table: ``make`` renders it from the result file ``results/<result>.json``
    (default: the table's name) and those of ``needs``, which ``command`` writes."""
    make: Callable[..., str]
    command: str
    result: str = ""
    needs: tuple[str, ...] = ()


_CURVES = "python benchmarks/posterior_curves.py --data-dir ../shared/data/tfds"
_CIFAR10 = "python benchmarks/cifar10_curves.py {} --data-dir ../shared/data/cifar10-standin/tfds"
_POOL = _CIFAR10.format("pool") + " --mnist-data-dir ../shared/data/tfds"
# name -> its table: one per results/<name>.md, and per docs region naming it.
TABLES: dict[str, Table] = {
    "posterior_curves": Table(posterior_curves, f"{_CURVES} [--stage 1|2]"),
    "cifar10_curves": Table(cifar10_curves, _CIFAR10.format("curves")),
    "posterior_timing": Table(posterior_timing, f"{_CURVES} --timing"),
    "map_replay": Table(map_replay, f"{_CURVES} --map-replay --variants ... --seeds 0 1 2",
                        needs=("posterior_curves",)),
    "bald_noise": Table(bald_noise, f"{_CURVES} --bald-noise --variants ..."),
    "evidence_diagnosis": Table(evidence_diagnosis,
                                f"{_CURVES} --evidence-diagnosis --variants ..."),
    "cifar10_timing": Table(cifar10_timing, _CIFAR10.format("round|layers|noise|ceiling")),
    "cifar10_pool": Table(cifar10_pool, f"{_POOL} [--reference-src DIR]",
                          result="cifar10_timing"),
    "cifar10_pool-chunk512": Table(partial(cifar10_pool, key="pool-chunk512"),
                                   f"{_POOL} --chunk-size 512", result="cifar10_timing"),
    "marglik": Table(marglik, "python benchmarks/marglik.py --sizes 20 50 220 "
                              "--test-size 1000 --settings 50/100/10 25/50/10"),
    "marglik_memory": Table(marglik_memory, "python benchmarks/marglik.py --peak-rss "
                                            "--data-dir ../shared/data/tfds"),
    "scaling": Table(scaling, "python benchmarks/scaling.py --data-dir ../shared/data/tfds"),
    "label_server": Table(label_server, "python benchmarks/label_server.py"),
    "al_round_pairs": Table(al_round_pairs, "python benchmarks/al_round.py --data-dir "
                            "../shared/data/tfds --torch-python /tmp/lt-venv/bin/python "
                            "--conv-kernels onednn --training-pairs 3 "
                            "--out benchmarks/results/al_round_pairs.json"),
    "scaling_seeds": Table(scaling_seeds,
                           "python benchmarks/scaling.py --seeds --data-dir ../shared/data/tfds"),
}


def table_of(name: str, results: Path = RESULTS) -> str:
    """The table ``name`` from its result files, as ``results/<name>.md`` holds it."""
    if name not in TABLES:
        raise ValueError(f"no table {name!r}; the tables are {', '.join(TABLES)} "
                         "(benchmarks/tables.py TABLES)")
    table = TABLES[name]
    read = lambda stem: json.loads((results / f"{stem}.json").read_text())
    return table.make(read(table.result or name), *map(read, table.needs))


def write_table(name: str, results: Path = RESULTS) -> str:
    """Write ``results/<name>.md`` from the result files (what a benchmark script calls
    once its result file is written); return the table."""
    text = table_of(name, results)
    (results / f"{name}.md").write_text(text + "\n")
    return text


def region_of(name: str, results: Path = RESULTS) -> str:
    """A docs region's body: the command that made the result, then its table."""
    text, table = table_of(name, results), TABLES[name]
    return (f"Made by `{table.command}` (result: "
            f"`benchmarks/results/{table.result or name}.json`); table by "
            f"`python benchmarks/tables.py`.\n\n{text}\n")


def rewrite(text: str, results: Path = RESULTS) -> str:
    """``text`` with every marked region's body replaced by its table."""
    return REGION.sub(lambda m: m.group(1) + region_of(m.group("name"), results) + m.group(4),
                      text)


def expected_files(results: Path = RESULTS, docs=DOCS) -> dict[Path, str]:
    """Every file the tables make, with the text it should hold."""
    files = {results / f"{name}.md": table_of(name, results) + "\n" for name in TABLES}
    files.update({path: rewrite(path.read_text(), results) for path in docs})
    return files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true",
                   help="write nothing; list the files whose tables differ (exit 1 if any)")
    args = p.parse_args(argv)
    expected = expected_files()
    stale = [path for path, text in expected.items()
             if not path.exists() or path.read_text() != text]
    for path in stale:
        if args.check:
            print(f"{path.relative_to(ROOT)}: differs from its result file", file=sys.stderr)
        else:
            path.write_text(expected[path])
            print(f"rewrote {path.relative_to(ROOT)}")
    return int(args.check and bool(stale))


if __name__ == "__main__":
    sys.exit(main())
