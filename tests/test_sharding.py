"""Data parallelism (``jaxal.sharding``): the same queries and metrics on 1 and on 4 forced
host devices, a run resumed on another device count, pools smaller than the device count,
and ``--devices`` refused with the devices listed.

The device count of a process is fixed when JAX starts, so the 4-device side runs in a
subprocess (``XLA_FLAGS=--xla_force_host_platform_device_count=4``) and this process is
the 1-device reference.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxal.apps.experiment import run_experiment
from jaxal.apps.results import read_metrics, read_queries
from jaxal.components import EnsembleOptions, MCDropoutOptions
from jaxal.config import ALConfig, ExperimentConfig, LaplaceOptions, TrainConfig

HERE = Path(__file__).parent
FOUR = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu"}
TIMINGS = ("score_s", "train_s", "posterior_s", "eval_s")


def configs(mnist_dir: str) -> dict[str, ExperimentConfig]:
    """Runs whose pool passes cover scoring with posterior samples, random scores,
    features (BADGE) and BatchBALD; pools and chunks that are not multiples of 4."""
    train = TrainConfig(steps=30, batch_size=8)
    small = dict(rounds=2, query_size=5, init_per_class=2, chunk_size=50, train=train)
    return {
        "moons-bald": ExperimentConfig(
            dataset="moons", seed=1, val_size=50, pool_size=203, al=ALConfig(
                acquisition="bald", posterior="laplace", predictive="mc",
                posterior_options=LaplaceOptions(samples=16, prior_fit="val-nll",
                                      prior_precision_grid=(0.1, 1.0, 10.0)), **small)),
        "moons-random": ExperimentConfig(dataset="moons", seed=2, val_size=50, pool_size=203,
                                         al=ALConfig(acquisition="random", **small)),
        "moons-batchbald": ExperimentConfig(
            dataset="moons", seed=3, val_size=50, pool_size=203, al=ALConfig(
                acquisition="batchbald", posterior="laplace", predictive="mc",
                posterior_options=LaplaceOptions(samples=16, prior_fit="none", prior_precision=1.0),
                **small)),
        "mnist-badge": ExperimentConfig(
            dataset="mnist", seed=0, val_size=60, pool_size=150, data_dir=mnist_dir,
            al=ALConfig(acquisition="badge", **{**small, "rounds": 1, "chunk_size": 70})),
    }


def results(out: Path):
    metrics = [{k: v for k, v in row.items() if k not in TIMINGS} for row in read_metrics(out)]
    return metrics, read_queries(out)


def assert_same(records_a: list[dict], records_b: list[dict]) -> None:
    """Equal records: integers, strings and index lists exactly, floats to 1e-5."""
    assert len(records_a) == len(records_b)
    for a, b in zip(records_a, records_b, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            floats = isinstance(a[k], float) or (
                isinstance(a[k], list) and any(isinstance(v, float) for v in a[k]))
            if floats:
                np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
            else:
                assert a[k] == b[k], k


class Killed(Exception):
    pass


def _four_devices(out_root: str, mnist_dir: str) -> dict:
    """What the subprocess runs (on 4 devices): every config, a run killed after round 1,
    and map_chunks over fewer rows than devices."""
    import jax
    import jax.numpy as jnp

    from jaxal.chunks import map_chunks
    from jaxal.sharding import data_parallel, pad_axis, padded_rows, use_devices

    assert len(jax.local_devices()) == 4
    root = Path(out_root)
    for name, config in configs(mnist_dir).items():
        run_experiment(config, root / name, progress=None)

    def kill_after_round_1(line):
        if line.startswith("round   1/"):
            raise Killed

    try:
        run_experiment(configs(mnist_dir)["moons-bald"], root / "killed",
                       progress=kill_after_round_1)
    except Killed:
        pass
    vmapped = _vmapped_forms(mnist_dir, root)
    x = jnp.arange(15.0).reshape(3, 5)
    with use_devices() as devices:
        diag, kfac, text = _curvature()
        small = map_chunks(lambda i, c: jnp.tanh(c).sum(-1) + i, x, 4096)
        # The chunk's 3 rows, padded to 4, one per device.
        split = jax.jit(lambda x: data_parallel(pad_axis(x[None], 1, padded_rows(3)), 1))(x)
    return {**vmapped, "devices": len(devices), "small": np.asarray(small).tolist(),
            "direct": np.asarray(jnp.tanh(x).sum(-1)).tolist(),
            "shards": sorted({s.data.shape for s in split.addressable_shards}),
            "shard_devices": len({s.device for s in split.addressable_shards}),
            "diag": diag, "kfac": kfac,
            # The chunks [2, 152, ...] of inputs and weights, rows along the data axis.
            "curvature_splits": sum("sdy.sharding_constraint" in line
                                    and '[{}, {"data"}' in line and "tensor<2x152x" in line
                                    for line in text.splitlines())}


ENSEMBLE = ExperimentConfig(
    dataset="moons", seed=5, val_size=50, pool_size=203, al=ALConfig(
        acquisition="bald", posterior="ensemble", predictive="mc",
        posterior_options=EnsembleOptions(size=4),
        rounds=2, query_size=5, init_per_class=2, train=TrainConfig(steps=30, batch_size=8)))


def _dropout_probs(rows: int):
    """(MC dropout predictive [rows, C] through map_chunks, the jitted program's text)."""
    import jax

    from jaxal.chunks import map_chunks
    from jaxal.model import cnn, init_params
    from jaxal.posteriors import mc_dropout

    model = cnn(10, channels=(3,), hidden=6, hidden_dropout_rate=0.3)
    params = init_params(model, jax.random.key(0), (8, 8, 1))
    x = jax.random.normal(jax.random.key(1), (rows, 8, 8, 1))
    options = MCDropoutOptions(samples=20)
    f = jax.jit(lambda x: map_chunks(lambda i, c: mc_dropout.sample_probs(
        jax.random.key(3), model, mc_dropout.MCDropout(params), c, options).mean(0), x, 4096))
    return np.asarray(f(x)), f.lower(x).as_text()


def _curvature():
    """(exact GGN diagonal, KFAC factors, the diagonal's program text) of all weights of a
    small CNN over 300 weighted examples in chunks of 150: on 4 devices each chunk's rows
    split, 38 a device (2 padding rows of weight 0)."""
    import jax

    from jaxal.curvature.layerwise import ggn_diagonal_layerwise, kfac_factors
    from jaxal.model import cnn, init_params

    model = cnn(3, channels=(4,), hidden=8)
    params = init_params(model, jax.random.key(0), (8, 8, 1))
    x = jax.random.normal(jax.random.key(1), (300, 8, 8, 1))
    w = jax.random.uniform(jax.random.key(2), (300,))
    diag = jax.jit(lambda x, w: ggn_diagonal_layerwise(model, params, x, w, chunk_size=150))
    kfac = jax.jit(lambda x, w: kfac_factors(model, params, x, w, chunk_size=150))
    factors = {"/".join(path): [np.asarray(f).tolist() for f in pair]
               for path, pair in kfac(x, w).items()}
    return np.asarray(diag(x, w)).tolist(), factors, diag.lower(x, w).as_text()


def _member_splits() -> int:
    """Sharding constraints on the member axis in one stacked training step of 4 MLPs."""
    import jax
    import jax.numpy as jnp

    from jaxal.model import init_params, mlp
    from jaxal.posteriors.ensemble import stacked
    from jaxal.train import make_trainer

    model = mlp(2)
    many, init_many = stacked(make_trainer(model, TrainConfig(steps=3, batch_size=4), 16),
                              lambda k: init_params(model, k, (2,)), 4)
    key = jax.random.key(0)
    state = many.init(init_many(key))
    x, y = jnp.ones((16, 2)), jnp.zeros(16, jnp.int32)
    text = jax.jit(many.step).lower(key, state, x, y, jnp.arange(16), jnp.asarray(16)).as_text()
    return sum("sdy.sharding_constraint" in line and '[{"data"}' in line
               for line in text.splitlines())


def _vmapped_forms(mnist_dir: str, root: Path) -> dict:
    """GPU/TPU's forms on these host devices: an ensemble's members vmapped (split over
    the devices) and MC dropout's samples vmapped in groups, split over the devices when
    the pool is too small to split its rows."""
    import jaxal.batching
    from jaxal.sharding import use_devices

    jaxal.batching.default_form = lambda: "vmap"
    jaxal.batching.default_sample_form = lambda: "vmap"
    with use_devices():
        run_experiment(ENSEMBLE, root / "ensemble", progress=None)
        member_splits = _member_splits()
        small, small_text = _dropout_probs(8)       # 8 rows: 2 a device, under the floor
        _, big_text = _dropout_probs(256)           # 64 rows a device: the rows split
    # The 20 dropout keys, padded to 2 groups of 16, split along the group: [{}, {"data"}].
    key_split = lambda text: sum('[{}, {"data"}, {}]> : tensor<2x16x2xui32>' in line
                                 for line in text.splitlines())
    return {"member_splits": member_splits,
            "dropout_small": small.tolist(), "small_key_splits": key_split(small_text),
            "big_key_splits": key_split(big_text)}


@pytest.fixture(scope="module")
def four(tmp_path_factory, mnist_data_dir):
    root = tmp_path_factory.mktemp("four")
    code = (f"import sys, json; sys.path.insert(0, {str(HERE)!r}); "
            "from test_sharding import _four_devices; "
            f"print(json.dumps(_four_devices({str(root)!r}, {str(mnist_data_dir)!r})))")
    proc = subprocess.run([sys.executable, "-c", code], env=FOUR, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["moons-bald", "moons-random", "moons-batchbald",
                                  "mnist-badge"])
def test_queries_and_metrics_do_not_depend_on_the_device_count(four, tmp_path, name,
                                                                mnist_data_dir):
    root, _ = four
    run_experiment(configs(str(mnist_data_dir))[name], tmp_path / name, progress=None)
    metrics_1, queries_1 = results(tmp_path / name)
    metrics_4, queries_4 = results(root / name)
    # The same points queried in the same order; scores and metrics to float rounding
    # (the devices see other batch sizes, and sums run in another order).
    assert_same(queries_4, queries_1)
    assert_same(metrics_4, metrics_1)
    config = json.loads((root / name / "config.json").read_text())
    assert config["devices"] == ["cpu:0", "cpu:1", "cpu:2", "cpu:3"]


@pytest.mark.slow
def test_a_run_killed_on_four_devices_resumes_on_one(four, tmp_path, mnist_data_dir):
    root, _ = four
    killed = root / "killed"
    assert [r["round"] for r in read_metrics(killed)] == [0, 1]
    lines = []
    run_experiment(configs(str(mnist_data_dir))["moons-bald"], killed, progress=lines.append)
    assert lines[0] == f"resuming {killed} after round 1 of 2"
    assert_same(read_queries(killed), read_queries(root / "moons-bald"))
    assert json.loads((killed / "config.json").read_text())["devices"] == ["cpu:0"]


@pytest.mark.slow
def test_a_pool_smaller_than_the_device_count_is_padded(four):
    _, out = four
    assert out["devices"] == 4
    np.testing.assert_allclose(out["small"], out["direct"], rtol=1e-6)
    assert out["shards"] == [[1, 1, 5]] and out["shard_devices"] == 4


@pytest.mark.slow
def test_the_curvature_over_the_labelled_set_splits_its_rows_and_matches(four):
    """All-weights GGN diagonal and KFAC factors with each chunk's rows split over the 4
    devices equal the one-device sums."""
    _, out = four
    diag, kfac, _ = _curvature()
    assert out["curvature_splits"] == 2
    np.testing.assert_allclose(out["diag"], diag, rtol=1e-5, atol=1e-7)
    assert out["kfac"].keys() == kfac.keys()
    for path in kfac:
        for got, want in zip(out["kfac"][path], kfac[path], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=path)


@pytest.mark.slow
def test_devices_beyond_those_present_are_refused_with_them_listed(tmp_path):
    for count in ("5", "0"):
        proc = subprocess.run(
            [sys.executable, "-m", "jaxal.run", "--dataset", "moons", "--devices", count,
             "--out", str(tmp_path / count)],
            env=FOUR, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"error: --devices {count}: this process has 4 device(s) (cpu:0, cpu:1, cpu:2, "
            "cpu:3); pass a number from 1 to 4, or leave it out to use all (CPU: more host "
            "devices with XLA_FLAGS=--xla_force_host_platform_device_count=N, set before "
            "JAX starts)"]
        assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_vmapped_members_and_samples_split_over_devices_give_the_same_numbers(
        four, tmp_path, monkeypatch):
    """GPU/TPU's forms, forced here: an ensemble of 4 with its members split over the 4
    devices queries what it queries on one; MC dropout's samples split over the devices
    (a pool too small to split its rows) give the one-device probabilities, and a pool
    large enough keeps its samples whole and splits its rows instead."""
    import jaxal.batching

    root, out = four
    monkeypatch.setattr(jaxal.batching, "default_form", lambda: "vmap")
    monkeypatch.setattr(jaxal.batching, "default_sample_form", lambda: "vmap")
    run_experiment(ENSEMBLE, tmp_path / "ensemble", progress=None)
    metrics_1, queries_1 = results(tmp_path / "ensemble")
    metrics_4, queries_4 = results(root / "ensemble")
    assert_same(queries_4, queries_1)
    assert_same(metrics_4, metrics_1)
    small, _ = _dropout_probs(8)
    np.testing.assert_allclose(out["dropout_small"], small, rtol=1e-5, atol=1e-6)
    assert out["small_key_splits"] == 1 and out["big_key_splits"] == 0
    assert out["member_splits"] > 0


# --- Several processes (jax.distributed), simulated with two local CPU processes ---------

MOONS_ARGS = ["--dataset", "moons", "--rounds", "2", "--query-size", "5", "--pool-size", "203",
              "--val-size", "50", "--acq", "bald", "--posterior", "laplace", "--predictive",
              "mc", "--samples", "16", "--steps", "30", "--chunk-size", "50"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(out: Path) -> tuple[subprocess.CompletedProcess, str]:
    """The same command in processes 0 and 1 of one run; (process 0, process 1's stdout)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    base = [sys.executable, "-m", "jaxal.run", *MOONS_ARGS, "--out", str(out),
            "--coordinator", f"localhost:{_free_port()}", "--num-processes", "2"]
    other = subprocess.Popen([*base, "--process-id", "1"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    first = subprocess.run([*base, "--process-id", "0"], env=env, capture_output=True,
                           text=True, timeout=600)
    stdout, stderr = other.communicate(timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    assert other.returncode == 0, stderr[-3000:]
    return first, stdout


@pytest.mark.slow
def test_two_processes_run_as_one_and_process_0_alone_writes(tmp_path):
    """Two processes joined by jax.distributed (gloo collectives on CPU) run one experiment
    over their 2 devices: the same queries and metrics as one process; process 0 prints
    and writes, process 1 prints nothing; rerun, both resume from the checkpoint."""
    single = tmp_path / "single"
    proc = subprocess.run([sys.executable, "-m", "jaxal.run", *MOONS_ARGS, "--out", str(single)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "two"
    first, other = _two_processes(out)
    assert first.stdout.startswith("devices: 2 (cpu:0, cpu:")
    assert "2 processes)" in first.stdout.splitlines()[0]
    assert other == ""
    assert_same(results(out)[1], results(single)[1])
    assert_same(results(out)[0], results(single)[0])
    config = json.loads((out / "config.json").read_text())
    assert config["processes"] == 2 and len(config["devices"]) == 2
    before = results(out)
    first, other = _two_processes(out)
    assert f"resuming {out} after round 2 of 2" in first.stdout and other == ""
    assert results(out) == before


@pytest.mark.slow
def test_distributed_without_a_cluster_or_coordinator_is_refused(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "jaxal.run", "--dataset", "moons",
                           "--distributed", "--out", str(tmp_path / "d")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: cannot join the multi-process run (coordinator_address should be defined.); "
        "outside a detected cluster pass --coordinator HOST:PORT --num-processes N "
        "--process-id I to every process"]
