"""Where one training step of the seed CNN spends its time, in jaxal and in PyTorch.

    python benchmarks/train_profile.py [--batch-sizes 32 64] \\
        [--torch-python /tmp/lt-venv/bin/python]

jaxal: each part of the step timed as its own jitted computation (median of 30 calls,
compile apart): every convolution's forward, input gradient and filter gradient (XLA's
own, and summed over batch chunks as ``jaxal.model.conv_chunked_filter_grad`` does), the
fused ReLU + max-pool forward and backward (the custom-JVP form and the reverse-only form
that training uses), the Adam update, the minibatch gather, and
the whole step (``jaxal.train``, on XLA's convolutions and, with the oneDNN extra installed,
on oneDNN's: ``jaxal.conv``, whose three kernels are timed too), so the parts can be set
against the whole. PyTorch
(with ``--torch-python``): ``torch.profiler``'s self CPU time per operator over 20 steps
(``benchmarks/torch_reference.py --profile``), in both memory layouts.

Writes ``benchmarks/results/train_profile.json`` and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from machine import cpu_info, describe
from timing import time_calls

from jaxal import conv
from jaxal.model import (
    cnn,
    conv_chunked_filter_grad,
    init_params,
    relu_max_pool_2x2,
    relu_max_pool_2x2_reverse,
)
from jaxal.runtime import configure_cpu
from jaxal.train import TrainConfig, labelled_indices, make_trainer

ROOT = Path(__file__).resolve().parents[1]
# (name, spatial side, input channels, output channels) of the seed CNN's convolutions.
CONVS = (("Conv_0", 28, 1, 32), ("Conv_1", 14, 32, 64), ("Conv_2", 7, 64, 64))
# The convolution kernels timed: XLA's, and oneDNN's where the extension is installed.
KERNELS = ("xla", "onednn") if conv.available() else ("xla",)


def ms(fn, *args, repeats: int = 30) -> float:
    """Median milliseconds of ``fn(*args)`` after one warm-up (compile) call."""
    return 1e3 * time_calls(lambda: fn(*args), repeats).seconds


def conv_parts(batch: int) -> list[dict]:
    return [conv_row(batch, *conv) for conv in CONVS]


def conv_row(batch: int, name: str, side: int, c_in: int, c_out: int) -> dict:
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (batch, side, side, c_in))
    w = 0.1 * jax.random.normal(kw, (3, 3, c_in, c_out))
    g = jax.random.normal(kg, (batch, side, side, c_out))
    numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    plain = partial(jax.lax.conv_general_dilated, window_strides=(1, 1), padding="SAME",
                    dimension_numbers=numbers)
    chunked = partial(conv_chunked_filter_grad, window_strides=(1, 1), padding="SAME",
                      dimension_numbers=numbers)
    row = {
        "layer": name, "input": [batch, side, side, c_in], "output_channels": c_out,
        "forward_ms": ms(jax.jit(plain), x, w),
        "input_grad_ms": ms(jax.jit(lambda x, w, g: jax.vjp(lambda x: plain(x, w), x)[1](g)),
                            x, w, g),
        "filter_grad_xla_ms": ms(jax.jit(
            lambda x, w, g: jax.vjp(lambda w: plain(x, w), w)[1](g)), x, w, g),
        "filter_grad_chunked_ms": ms(jax.jit(
            lambda x, w, g: jax.vjp(lambda w: chunked(x, w), w)[1](g)), x, w, g),
    }
    if conv.available():   # the oneDNN extension's kernels (jaxal.conv)
        onednn = partial(conv.conv_general_dilated, window_strides=(1, 1), padding="SAME",
                         dimension_numbers=numbers)
        row |= {
            "onednn_forward_ms": ms(jax.jit(onednn), x, w),
            "onednn_input_grad_ms": ms(jax.jit(
                lambda x, w, g: jax.vjp(lambda x: onednn(x, w), x)[1](g)), x, w, g),
            "onednn_filter_grad_ms": ms(jax.jit(
                lambda x, w, g: jax.vjp(lambda w: onednn(x, w), w)[1](g)), x, w, g)}
    return row


def other_parts(batch: int) -> dict:
    model = cnn(10)
    params = init_params(model, jax.random.key(0), (28, 28, 1))
    x_pool = jax.random.normal(jax.random.key(1), (59_000, 28, 28, 1))
    y_pool = jnp.zeros(59_000, jnp.int32)
    pooled = {}
    for name, side, _, c_out in CONVS:
        h = jax.random.normal(jax.random.key(2), (batch, side, side, c_out))
        g = jax.random.normal(jax.random.key(3), (batch, side // 2, side // 2, c_out))
        pooled[name] = {
            "forward_ms": ms(jax.jit(relu_max_pool_2x2), h),
            # forward + backward, as a training step runs them: the custom-JVP form
            # (transposed by JAX) and the reverse-only form the training step uses.
            "backward_jvp_form_ms": ms(jax.jit(
                lambda h, g: jax.vjp(relu_max_pool_2x2, h)[1](g)), h, g),
            "backward_reverse_form_ms": ms(jax.jit(
                lambda h, g: jax.vjp(relu_max_pool_2x2_reverse, h)[1](g)), h, g)}
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)
    adam = jax.jit(lambda g, s, p: optax.apply_updates(p, optimizer.update(g, s, p)[0]))
    labelled = jnp.zeros(59_000, bool).at[:200].set(True)
    idx, n = labelled_indices(labelled), labelled.sum()
    gather = jax.jit(lambda key, x, idx, n: x[idx[jax.random.randint(key, (batch,), 0, n)]])
    steps = {}
    for kernel in KERNELS:
        trainer = make_trainer(cnn(10, conv_kernel=kernel), TrainConfig(batch_size=batch),
                               capacity=220)
        steps[f"step_{kernel}_ms"] = ms(jax.jit(trainer.step), jax.random.key(0),
                                        trainer.init(params), x_pool, y_pool, idx, n)
    forward = jax.jit(lambda p, x: model.apply(p, x, train=True,
                                               rngs={"dropout": jax.random.key(0)}))
    return {**steps,
        "relu_max_pool": pooled,
        "adam_update_ms": ms(adam, params, opt_state, params),
        "minibatch_gather_ms": ms(gather, jax.random.key(0), x_pool, idx, n),
        "forward_ms": ms(forward, params, x_pool[:batch]),
    }


def torch_profile(python: str, batch_sizes) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.json"
        subprocess.run([python, str(ROOT / "benchmarks" / "torch_reference.py"), "--profile",
                        "--batch-sizes", *map(str, batch_sizes), "--out", str(out)],
                       check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def markdown(result: dict) -> str:
    lines = [describe(result["machine"]), ""]
    for b, part in result["jaxal"].items():
        o = part["other"]
        steps = ", ".join(f"{k.split('_')[1]} convolutions {v:.2f} ms"
                          for k, v in o.items() if k.startswith("step_"))
        onednn = "onednn_forward_ms" in part["convs"][0]
        lines += [f"### jaxal, batch {b}: whole step {steps} "
                  f"(forward alone {o['forward_ms']:.2f} ms)", "",
                  "| part | forward (ms) | input grad (ms) | filter grad XLA / chunked (ms) |"
                  + (" oneDNN forward / input grad / filter grad (ms) |" if onednn else "")
                  + " ReLU+pool fwd / fwd+bwd JVP form / reverse form (ms) |",
                  "|---|---|---|---|" + ("---|" if onednn else "") + "---|"]
        for c in part["convs"]:
            p = o["relu_max_pool"][c["layer"]]
            lines.append(f"| {c['layer']} {c['input']} -> {c['output_channels']} | "
                         f"{c['forward_ms']:.2f} | {c['input_grad_ms']:.2f} | "
                         f"{c['filter_grad_xla_ms']:.2f} / {c['filter_grad_chunked_ms']:.2f} | "
                         + (f"{c['onednn_forward_ms']:.2f} / {c['onednn_input_grad_ms']:.2f} / "
                            f"{c['onednn_filter_grad_ms']:.2f} | " if onednn else "")
                         + f"{p['forward_ms']:.2f} / {p['backward_jvp_form_ms']:.2f} / "
                         f"{p['backward_reverse_form_ms']:.2f} |")
        empty = "| |" if onednn else "|"
        lines += [f"| Adam update | {o['adam_update_ms']:.2f} | | {empty} |",
                  f"| minibatch gather | {o['minibatch_gather_ms']:.2f} | | {empty} |", ""]
    for key, ops in result.get("torch", {}).get("profile", {}).items():
        lines += [f"### PyTorch {key}: self CPU ms per step, top operators", "",
                  "| operator | ms/step |", "|---|---|"]
        lines += [f"| {op['name']} | {op['ms_per_step']:.2f} |" for op in ops[:12]]
        lines.append("")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[32, 64])
    p.add_argument("--torch-python", default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                        "train_profile.json"))
    args = p.parse_args()
    configure_cpu()
    result = {"machine": cpu_info(), "jax": jax.__version__,
              "onednn": conv.extension().onednn_version() if conv.available() else None,
              "jaxal": {b: {"convs": conv_parts(b), "other": other_parts(b)}
                        for b in args.batch_sizes}}
    if args.torch_python:
        result["torch"] = torch_profile(args.torch_python, args.batch_sizes)
    result["onednn_plans"] = conv.plans()   # the kernels oneDNN chose, per shape
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
