"""The checkpoint holds arrays and JSON only, restores the state bit for bit, and refuses
a damaged, foreign, pickled or other-config file with one line naming the fix. Result
files get the umask's mode, a full disk is reported, leftover temp files are removed."""

import errno
import json
import os
import pickle
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.figure import Figure
from test_resume import CONFIG

from jaxal.apps.comparison import plot_comparison
from jaxal.apps.experiment import load_split, run_experiment, to_device
from jaxal.apps.plots import FIGURE5_PANELS, figure5, plot_run, save_figure, subplots
from jaxal.apps.results import (
    CHECKPOINT,
    PICKLE_CHECKPOINT,
    checkpoint_manifest,
    load_checkpoint,
    read_metrics,
    remove_temp_files,
    save_checkpoint,
    state_template,
    write_bytes_atomic,
    write_text_atomic,
)
from jaxal.atomic import write_atomic
from jaxal.errors import RunDirError
from jaxal.loop import make_learner
from jaxal.model import mlp

ONE_ROUND = CONFIG._replace(al=CONFIG.al._replace(rounds=1))
EXPERIMENT = ONE_ROUND.to_dict()


class Payload:
    """Unpickling this creates ``marker``: the proof that a file's code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    state, infos = run_experiment(ONE_ROUND, out, progress=None)
    return out, state, infos


@pytest.fixture
def out(run, tmp_path):
    """A fresh copy of the finished one-round run."""
    return shutil.copytree(run[0], tmp_path / "run")


@pytest.fixture
def state(run):
    """The state the run ended with: a template for ``load_checkpoint``."""
    return run[1]


def bits(state):
    """Every leaf of ``state`` as (dtype, shape, bytes); typed keys as their key data."""
    state = state._replace(init_key=jax.random.key_data(state.init_key))
    return [(np.asarray(x).dtype, np.shape(x), np.asarray(x).tobytes())
            for x in jax.tree.leaves(state)]


def rewrite_manifest(path, change):
    """Rewrite the checkpoint at ``path`` with ``change(manifest)`` applied."""
    with np.load(path) as f:
        arrays = dict(f)
    manifest = json.loads(arrays["manifest"].tobytes())
    change(manifest)
    arrays["manifest"] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
    np.savez(path, **arrays)


def refused(path, match=""):
    """pytest.raises for a one-line RunDirError naming ``path``."""
    return pytest.raises(RunDirError, match=rf"^{path}.*{match}")


@pytest.mark.slow
def test_round_trip_restores_every_bit(run):
    out, state, infos = run
    split = load_split(ONE_ROUND)
    learner = make_learner(mlp(split.num_classes), ONE_ROUND.al, split.pool_x.shape[1:],
                           split.num_classes)
    template = state_template(learner, to_device(split))
    assert jax.tree.structure(template) == jax.tree.structure(state)
    for like in (template, state):
        restored, restored_infos = load_checkpoint(out, like, EXPERIMENT)
        assert restored.round == state.round == 1 and type(restored.round) is int
        assert restored.init_key.dtype == state.init_key.dtype
        assert jax.tree.structure(restored) == jax.tree.structure(state)
        assert bits(restored) == bits(state)
        assert len(restored_infos) == len(infos) == 2
        for got, want in zip(restored_infos, infos, strict=True):
            assert got.metrics == want.metrics and got.pseudo == want.pseudo
            for name in ("queried", "scores", "queried_labels"):
                a, b = getattr(got, name), getattr(want, name)
                assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
            assert (got.extremes is None) == (want.extremes is None)
    assert infos[1].extremes is not None
    for a, b in zip(restored_infos[1].extremes, infos[1].extremes, strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_manifest_holds_config_digest_and_leaves(out):
    manifest = checkpoint_manifest(out, EXPERIMENT)
    assert manifest["config"] == json.loads(json.dumps(EXPERIMENT))
    assert len(manifest["config_sha256"]) == 64 and manifest["round"] == 1
    assert {"name": ".init_key", "dtype": "key<fry>"}.items() <= manifest["leaves"][-1].items()
    with np.load(out / CHECKPOINT, allow_pickle=False) as f:
        assert all(f[name].dtype != object for name in f.files)


def test_pickle_checkpoint_is_refused_unread(out, tmp_path):
    marker = tmp_path / "code-ran"
    (out / PICKLE_CHECKPOINT).write_bytes(pickle.dumps(Payload(marker)))
    (out / CHECKPOINT).unlink()
    pkl = out / PICKLE_CHECKPOINT
    with refused(pkl, "earlier jaxal.*new out dir.*delete"):
        load_checkpoint(out, None, EXPERIMENT)
    with refused(pkl, "earlier jaxal"):
        run_experiment(ONE_ROUND, out, progress=None)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["object array", "pickle file"])
def test_pickled_payload_in_npz_is_refused_unread(out, state, tmp_path, kind):
    marker = tmp_path / "code-ran"
    path = out / CHECKPOINT
    if kind == "object array":
        with np.load(path) as f:
            arrays = dict(f)
        arrays["leaf_0"] = np.array([Payload(marker)], dtype=object)
        np.savez(path, **arrays)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))
    with refused(path, "delete .* to start the run afresh"):
        load_checkpoint(out, state, EXPERIMENT)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "flipped byte"])
def test_damaged_checkpoint_is_refused(out, state, damage):
    path = out / CHECKPOINT
    data = bytearray(path.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
    path.write_bytes({"empty": b"", "truncated": bytes(data[:len(data) // 2]),
                      "garbage": os.urandom(len(data)),
                      "flipped byte": bytes(data)}[damage])
    with refused(path, "delete .* to start the run afresh"):
        load_checkpoint(out, state, EXPERIMENT)


@pytest.mark.parametrize(("change", "match"), [
    (lambda m: m.clear(), "not a jaxal checkpoint"),
    (lambda m: m.update(format="something else"), "not a jaxal checkpoint"),
    (lambda m: m.update(format_version=1), "checkpoint format 1"),
    (lambda m: m.update(round=2), "round 2"),
    (lambda m: m["leaves"][0].update(name=".other"), "another state structure"),
    (lambda m: m.pop("rounds"), "damaged or not a jaxal checkpoint"),
    (lambda m: m["rounds"][1]["metrics"].update(extra=1.0), "damaged or not a jaxal"),
    (lambda m: m["rounds"][1]["queried"].update(dtype="object"), "damaged or not a jaxal"),
])
def test_foreign_manifest_is_refused(out, state, change, match):
    rewrite_manifest(out / CHECKPOINT, change)
    with refused(out / CHECKPOINT, f"{match}.*delete .* to start the run afresh"):
        load_checkpoint(out, state, EXPERIMENT)


def test_garbage_or_missing_manifest_is_refused(out, state):
    path = out / CHECKPOINT
    with np.load(path) as f:
        arrays = dict(f)
    arrays["manifest"] = np.frombuffer(b"{not json", np.uint8)
    np.savez(path, **arrays)
    with refused(path, "no readable manifest"):
        load_checkpoint(out, state, EXPERIMENT)
    del arrays["manifest"]
    np.savez(path, **arrays)
    with refused(path, "no readable manifest"):
        checkpoint_manifest(out, EXPERIMENT)


def test_leaves_that_do_not_fit_the_template_are_refused(out, state):
    with refused(out / CHECKPOINT, r"\.labelled as bool\[200\], this run needs bool\[300\]"):
        load_checkpoint(out, state._replace(labelled=jnp.zeros(300, bool)), EXPERIMENT)
    half = jax.tree.map(lambda x: x.astype(jnp.float16), state.params)
    with refused(out / CHECKPOINT, "as float32, this run needs float16"):
        load_checkpoint(out, state._replace(params=half), EXPERIMENT)


def test_checkpoint_of_another_config_is_refused_with_the_difference(out, state):
    other = ONE_ROUND._replace(al=ONE_ROUND.al._replace(rounds=2)).to_dict()
    with refused(out / CHECKPOINT, r"different configuration \(al\.rounds: 1 .* != 2"):
        load_checkpoint(out, state, other)


def test_no_checkpoint_is_none(tmp_path):
    assert load_checkpoint(tmp_path, None, EXPERIMENT) is None
    assert checkpoint_manifest(tmp_path / "absent", EXPERIMENT) is None


# --- the files plots and comparisons read ---

@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", b'{"experiment": 3}'])
def test_damaged_config_json_is_refused(out, content):
    path = out / "config.json"
    path.write_bytes(content)
    with refused(path, "delete it and rerun"):
        plot_run(out)
    with refused(path, "delete it and rerun"):
        run_experiment(ONE_ROUND, out, progress=None)
    assert path.read_bytes() == content, "a refused out dir is not changed"


def test_damaged_extremes_and_metrics_are_refused(out):
    (out / "extremes.npz").write_bytes(b"PK\x03\x04 truncated")
    with refused(out / "extremes.npz", "rerun the run's command"):
        plot_run(out)
    np.savez(out / "extremes.npz", round=np.arange(2))
    with refused(out / "extremes.npz", "not a jaxal extremes file"):
        plot_run(out)
    (out / "metrics.jsonl").write_text('{"round": 0, "num_labels": 4}\n{"round": 1, tru\n')
    with refused(out / "metrics.jsonl", "line 2 is not JSON.*rerun the run's command"):
        read_metrics(out)
    (out / "metrics.jsonl").write_text("")
    with refused(out / "metrics.jsonl", "holds no metrics rows"):
        plot_run(out)
    # Rerunning the command rewrites them from the checkpoint.
    lines = []
    run_experiment(ONE_ROUND, out, progress=lines.append)
    assert lines == [f"resuming {out} after round 1 of 1"]
    assert [r["round"] for r in read_metrics(out)] == [0, 1]
    with np.load(out / "extremes.npz") as f:
        assert list(f["round"]) == [1]


@pytest.mark.parametrize("content", [b"", b"{", b'{"strategies": ["a"]}'])
def test_damaged_comparison_json_is_refused(tmp_path, content):
    (tmp_path / "comparison.json").write_bytes(content)
    with refused(tmp_path / "comparison.json", "rerun the comparison's command"):
        plot_comparison(tmp_path)


# --- writing: modes, full disks, leftovers ---

@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_result_files_get_the_umask_mode_of_a_figure(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "metrics.csv", "round\n0\n")
        save_figure(subplots(1, 1, figsize=(1, 1))[0], tmp_path / "figure5.png")
        (tmp_path / "figure.png").write_bytes(b"png")
    finally:
        os.umask(old)
    assert (tmp_path / "metrics.csv").stat().st_mode & 0o777 == mode
    assert (tmp_path / "figure5.png").stat().st_mode & 0o777 == mode
    assert (tmp_path / "figure.png").stat().st_mode & 0o777 == mode
    assert os.umask(old) == old, "the umask is left as it was"


def full_disk(code):
    """A ``write`` for ``write_atomic`` that gets part of the file out, then finds the
    disk full."""
    def write(f):
        f.write(b"ne")
        f.flush()
        raise OSError(code, os.strerror(code))
    return write


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, code):
    path = tmp_path / "metrics.csv"
    path.write_text("old\n")
    with pytest.raises(RunDirError, match=rf"^disk full writing {path}; free space and "
                                          "rerun the same command: the run resumes"):
        write_atomic(path, full_disk(code))
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_full_disk_while_saving_a_figure_keeps_the_old_figure(tmp_path, monkeypatch):
    path = tmp_path / "figure5.png"
    path.write_bytes(b"old figure")
    monkeypatch.setattr(Figure, "savefig", lambda self, f, **kwargs:
                        full_disk(errno.ENOSPC)(f))
    rows = [{"num_labels": 4, **{key: 0.5 for key, _ in FIGURE5_PANELS}}]
    with pytest.raises(RunDirError, match=rf"^disk full writing {path}; free space"):
        figure5(rows, path, "title", [0, 1], 2)
    monkeypatch.undo()
    assert path.read_bytes() == b"old figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure5.png"]


def test_full_disk_under_an_optional_file_stays_an_os_error(tmp_path):
    """The dataset cache's case: its caller warns and goes on without it."""
    with pytest.raises(OSError, match="No space left"):
        write_atomic(tmp_path / "x.npz", full_disk(errno.ENOSPC), full_disk_fix=None)
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_propagate(tmp_path):
    def broken(f):
        f.write(b"x")
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError, match="I/O error"):
        write_atomic(tmp_path / "x", broken)
    assert list(tmp_path.iterdir()) == []


def test_write_bytes_atomic_replaces_the_whole_file(tmp_path):
    path = tmp_path / "extremes.npz"
    path.write_bytes(b"old and longer than the new content")
    write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extremes.npz"]


def test_remove_temp_files_removes_only_jaxals_leftovers(tmp_path):
    leftovers = [tempfile.mkstemp(dir=tmp_path, prefix=f".{name}.", suffix=".tmp")[1]
                 for name in ("metrics.csv", "checkpoint.npz")]
    leftovers.append(tmp_path / ".figure5.png.tmp.png")
    leftovers.append(tmp_path / ".sheet.png.tmp.pdf")
    kept = ["metrics.csv", "notes.tmp", ".hidden", ".jaxal.lock", ".x.tmp", ".a.b.tmp",
            ".metrics.csv.ABCDEFGH.tmp", "figure5.tmp.png", ".metrics.csv.abcdefgh.tmp.bak"]
    for name in [*kept, ".figure5.png.tmp.png", ".sheet.png.tmp.pdf"]:
        (tmp_path / name).write_text("x")
    (tmp_path / ".dir.abcdefgh.tmp").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".metrics.csv.abcdefgh.tmp").write_text("x")
    removed = remove_temp_files(tmp_path)
    assert sorted(removed) == sorted(tmp_path / os.path.basename(p) for p in leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*kept, ".dir.abcdefgh.tmp", "sub"])
    assert remove_temp_files(tmp_path) == []
    assert remove_temp_files(tmp_path / "absent") == []


def test_checkpoint_is_one_atomic_file(out, state, monkeypatch):
    """A kill while saving leaves the previous checkpoint whole: nothing to pair wrongly."""
    before = (out / CHECKPOINT).read_bytes()
    real_replace = os.replace

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(out, state._replace(round=7), [], EXPERIMENT)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (out / CHECKPOINT).read_bytes() == before
    assert load_checkpoint(out, state, EXPERIMENT)[0].round == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
