"""Run outputs, written atomically (temp file + rename) so a killed run never leaves half a file.

An out dir holds:

    config.json      everything that decides the run (dataset, seed, ALConfig, versions)
    metrics.csv      one row per round: labels, Figure-5 metrics, seconds per stage
    metrics.jsonl    the same rows as JSON lines (``pandas.read_json(..., lines=True)``)
    queries.jsonl    per round: queried pool indices, TFDS train indices, labels, scores
    query_classes.csv  per round: how many queries so far fell in each class (a strategy
                     that avoids a class, e.g. redundancy on the distinctive digit 1,
                     shows up here and in figure5.png's histogram)
    figure5.png      the Figure-5 panels vs number of labels (see ``jaxal.apps.plots``)
    extremes.npz     per round: the 5 highest and lowest scored unlabelled pool points
                     (indices, scores, labels, images), for Figure 4 (``jaxal.apps.plots``)
    checkpoint.npz   the loop state after the last finished round, the experiment config
                     and every round's record, so a rerun of the same command continues
                     there (``load_checkpoint``); arrays and JSON only, never a pickle

Every reader raises ``RunDirError`` (one line naming the file and the fix) for a missing,
empty, corrupt or foreign file, never a traceback.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxal import __version__
from jaxal.atomic import TEMP_NAME, write_atomic
from jaxal.config import migrate_config_dict
from jaxal.errors import JaxalError, RunDirError
from jaxal.files import loads_json, npy_bytes, npz_members, read_bytes, read_npz
from jaxal.loop import (
    ActiveLearner,
    ALData,
    ALState,
    Extremes,
    Metrics,
    PseudoLabelInfo,
    RoundInfo,
    Timings,
)

CHECKPOINT = "checkpoint.npz"
CHECKPOINT_FORMAT = "jaxal-checkpoint"
CHECKPOINT_VERSION = 2
# What jaxal wrote before CHECKPOINT_VERSION 2: a pickle, refused unread (unpickling a
# crafted file runs its code).
PICKLE_CHECKPOINT = "checkpoint.pkl"

METRIC_COLUMNS = ("round", "num_labels", "train_loss", "test_loss", "test_accuracy",
                  "test_entropy", "val_loss", "val_accuracy", "prior_precision",
                  "diverged", "test_ece", "map_test_loss", "map_test_accuracy",
                  "pseudo_labels", "pseudo_label_accuracy",
                  "score_s", "train_s", "posterior_s", "eval_s")

EXTREMES_KEYS = ("round", *(f"{side}_{what}" for side in ("top", "bottom")
                            for what in ("index", "score", "label", "image")))

_REWRITE = "rerun the run's command, which rewrites it from the checkpoint"

# The most a file of one kind can hold, so that a crafted one is refused before it is
# read: config.json and a labelling session's files, a run's JSON-lines records, and
# extremes.npz (Figure 4's few images per round). The checkpoint's bound is the run's
# own: its template's leaves and ``_manifest_bound``.
MAX_JSON_BYTES = 64 << 20
MAX_RECORDS_BYTES = 256 << 20
MAX_EXTREMES_BYTES = 256 << 20


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same dir and ``os.replace``."""
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same dir and ``os.replace``
    (``jaxal.atomic.write_atomic``: umask mode; a full disk is a RunDirError)."""
    write_atomic(path, lambda f: f.write(data))


def remove_temp_files(out_dir: str | os.PathLike) -> list[Path]:
    """Delete the temp files killed writes left in ``out_dir`` (jaxal's own temp names
    only, not in subdirs); returns them."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    removed = []
    for path in sorted(out_dir.iterdir()):
        if TEMP_NAME.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def read_json(path: str | os.PathLike, fix: str,
              error: type[JaxalError] = RunDirError, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in ``path``; ``error`` ending in ``fix`` if it is missing, empty,
    not JSON, nested too deep, larger than ``max_bytes`` or not a regular file (one
    line, never a traceback; ``jaxal.files``)."""
    path = Path(path)
    text = None
    try:
        text = read_bytes(path, fix, max_bytes=max_bytes, error=error).decode("utf-8")
        return loads_json(text)
    except FileNotFoundError as e:
        raise error(f"{path} is missing; {fix}") from e
    # ValueError: not UTF-8, not JSON, or nested too deep.
    except (OSError, ValueError, RecursionError) as e:
        what = "empty" if text is not None and not text.strip() else (
            f"unreadable ({_one_line(e)[:200]})")
        raise error(f"{path} is {what}; {fix}") from e


def read_run_config(out_dir: str | os.PathLike) -> dict:
    """The ``experiment`` config in ``out_dir``'s config.json."""
    path = Path(out_dir) / "config.json"
    fix = ("delete it and rerun the run's command, which rewrites it (the checkpoint "
           "keeps the run's configuration)")
    config = read_json(path, fix)
    if not isinstance(config, dict) or not isinstance(config.get("experiment"), dict):
        raise RunDirError(f"{path} is not a jaxal run config (no 'experiment' object); {fix}")
    # A run dir of an earlier format reads as the same run today (``migrate_config_dict``).
    return migrate_config_dict(config["experiment"])


def config_digest(config: dict) -> str:
    """sha256 of the canonical JSON of ``config`` (``json.dumps(..., sort_keys=True)``)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _load_npz(path: Path, fix: str, bounds: dict[str, int] | None = None, *,
              max_bytes: int) -> dict[str, np.ndarray]:
    """The arrays of the .npz at ``path`` (``bounds``: those, each at most that many
    bytes inflated; None: all, none over ``max_bytes``), never unpickling (an object
    array is refused) and never inflating past the bounds (``jaxal.files.read_npz``)."""
    names = None if bounds is None else tuple(bounds)
    try:
        return read_npz(path, bounds if bounds is not None else lambda name: max_bytes,
                        fix, names=names, max_bytes=max_bytes)
    except FileNotFoundError as e:
        raise RunDirError(f"{path} is missing; {fix}") from e


# --- checkpoint.npz: the state's leaves as leaf_<i>, plus ``manifest``, UTF-8 JSON ---


def _is_key(x) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _named_leaves(state: ALState) -> list[tuple[str, Any]]:
    """(``keystr`` path, leaf) of the state's arrays; ``round`` travels in the manifest."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(state._replace(round=None))
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in leaves]


def _to_json(value: Any) -> Any:
    """A RoundInfo field as JSON: a record as an object, an array as {dtype, shape, values}.

    JSON writes floats with ``repr``, which round-trips every float64 (so every float32)
    exactly; the dtype keeps the rewritten metrics and queries files bit-identical.
    """
    if hasattr(value, "_asdict"):
        return {k: _to_json(v) for k, v in value._asdict().items()}
    if isinstance(value, np.ndarray | jax.Array):
        a = np.asarray(value)
        return {"dtype": a.dtype.name, "shape": list(a.shape), "values": a.tolist()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _array_from_json(d: dict) -> np.ndarray:
    dtype = np.dtype(d["dtype"])
    if dtype.kind not in "biuf":
        raise ValueError(f"dtype {dtype} is not numeric")
    return np.array(d["values"], dtype).reshape(d["shape"])


_RECORDS = {"metrics": Metrics, "timings": Timings, "pseudo": PseudoLabelInfo,
            "extremes": Extremes}


def _info_from_json(d: dict) -> RoundInfo:
    fields = {}
    for name, value in d.items():
        if name == "diagnosis":   # plain JSON already (``RoundInfo.diagnosis``)
            pass
        elif name in _RECORDS and value is not None:
            value = _RECORDS[name](**{k: _array_from_json(v) if isinstance(v, dict) else v
                                      for k, v in value.items()})
        elif isinstance(value, dict):
            value = _array_from_json(value)
        fields[name] = value
    return RoundInfo(**fields)


def state_template(learner: ActiveLearner, data: ALData) -> ALState:
    """Shapes and dtypes of the state every round hands on (``jax.eval_shape``: nothing
    is computed); ``load_checkpoint`` restores into this structure."""
    def state(key):
        params = learner.init(key)
        labelled = jnp.zeros(data.pool_y.shape, bool)
        posterior = learner.fit(key, params, data.pool_x, data.pool_y, labelled,
                                data.val_x, data.val_y)
        return ALState(params, posterior, labelled, None, key)

    return jax.eval_shape(state, jax.random.key(0))._replace(round=0)


def save_checkpoint(out_dir: str | os.PathLike, state: ALState, infos: Sequence[RoundInfo],
                    config: dict) -> None:
    """Atomically store the state after a finished round, every round's record and the
    experiment ``config``, in one checkpoint.npz (so a kill never pairs a manifest with
    other arrays).

    ``leaf_<i>``: the i-th leaf of the state (a typed key as its key data, exact bits);
    ``manifest``: UTF-8 JSON of format, versions, config and its sha256, round, the
    leaves' paths/shapes/dtypes and the RoundInfo records.
    """
    named = _named_leaves(state)
    host = jax.device_get([jax.random.key_data(x) if _is_key(x) else x for _, x in named])
    arrays, leaves = {}, []
    for i, ((name, leaf), value) in enumerate(zip(named, host, strict=True)):
        arrays[f"leaf_{i}"] = np.asarray(value)
        leaves.append({"name": name, "array": f"leaf_{i}", "shape": list(leaf.shape),
                       "dtype": str(leaf.dtype)})
        if _is_key(leaf):
            leaves[-1]["key_impl"] = str(jax.random.key_impl(leaf))
    config = json.loads(json.dumps(config))
    manifest = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
                "jaxal_version": __version__, "config_sha256": config_digest(config),
                "config": config, "round": int(state.round), "leaves": leaves,
                "rounds": [_to_json(i) for i in infos]}
    arrays["manifest"] = np.frombuffer(json.dumps(manifest, sort_keys=True).encode(),
                                       np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(Path(out_dir) / CHECKPOINT, buf.getvalue())


def _afresh(path: Path) -> str:
    return f"delete {path} (or the out dir) to start the run afresh"


def _manifest_bound(config: dict) -> int:
    """The most bytes the manifest of a run of ``config`` holds: its config, and per
    round a record of a few metrics plus the query's indices, labels and scores."""
    al = config.get("al") if isinstance(config, dict) else None
    rounds, k = (al.get("rounds"), al.get("query_size")) if isinstance(al, dict) else (0, 0)
    if not (isinstance(rounds, int) and isinstance(k, int)):
        return MAX_JSON_BYTES
    return (4 << 20) + 2 * len(json.dumps(config)) + (rounds + 1) * ((64 << 10) + 256 * k)


def _read_checkpoint(out_dir: Path, config: dict) -> tuple[Path, dict] | None:
    """(path, manifest) of the checkpoint in ``out_dir``, written with ``config``; None
    if there is none. Only the manifest is inflated, within the run's bound."""
    old = out_dir / PICKLE_CHECKPOINT
    if old.exists():
        raise RunDirError(f"{old} was written by an earlier jaxal as a pickle, which is "
                          f"never read (loading one can run code); rerun in a new out dir, "
                          f"or delete {old} to start this run afresh")
    path = out_dir / CHECKPOINT
    try:
        # The directory alone (nothing inflated): a file that is no archive is refused
        # here, before the manifest's name is looked up.
        members = npz_members(path, _afresh(path), max_bytes=None)
    except FileNotFoundError:
        return None
    manifest, reason = None, "no readable manifest"
    if "manifest" in members:
        raw = _load_npz(path, _afresh(path), {"manifest": _manifest_bound(config)},
                        max_bytes=None)["manifest"]
        try:
            if raw.dtype == np.uint8 and raw.ndim == 1:
                manifest = loads_json(raw.tobytes())
        except ValueError as e:
            reason += f": {_one_line(e)[:200]}"
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        raise RunDirError(f"{path} is not a jaxal checkpoint ({reason}); {_afresh(path)}")
    if manifest.get("format_version") != CHECKPOINT_VERSION:
        raise RunDirError(
            f"{path} was written by jaxal {manifest.get('jaxal_version')} (checkpoint "
            f"format {manifest.get('format_version')}, this jaxal reads "
            f"{CHECKPOINT_VERSION}); {_afresh(path)}")
    new = json.loads(json.dumps(config))
    old_config = manifest.get("config")
    # A checkpoint written by an earlier config format: its recorded config (which its
    # digest vouches for) must read as today's.
    migrated = (isinstance(old_config, dict)
                and manifest.get("config_sha256") == config_digest(old_config)
                and migrate_config_dict(old_config) == new)
    if manifest.get("config_sha256") != config_digest(new) and not migrated:
        diffs = config_difference(
            migrate_config_dict(old_config) if isinstance(old_config, dict) else {}, new)
        raise RunDirError(
            f"{path} holds a run with a different configuration ("
            + ("; ".join(diffs) or "its config digest differs")
            + f"); choose another --out or delete {out_dir}")
    return path, manifest


def checkpoint_manifest(out_dir: str | os.PathLike, config: dict) -> dict | None:
    """The manifest of ``out_dir``'s checkpoint if it was written with the experiment
    ``config``; None if there is no checkpoint.

    Raises:
      RunDirError: a pickle checkpoint of an earlier jaxal, a damaged or foreign file, or
        another configuration (the differences listed).
    """
    read = _read_checkpoint(Path(out_dir), config)
    return None if read is None else read[1]


def load_checkpoint(out_dir: str | os.PathLike, template: ALState, config: dict
                    ) -> tuple[ALState, list[RoundInfo]] | None:
    """(state, infos) of the last finished round in ``out_dir``, or None if there is none.

    Args:
      template: an ALState whose leaves have the shapes and dtypes of the run's
        (``state_template``, or any state of the run); its ``round`` is ignored.
      config: the experiment config; a checkpoint written with another is refused.

    Raises:
      RunDirError: see ``checkpoint_manifest``; also leaves or records that do not fit
        ``template`` (a leaf is refused by its size before it is inflated).
    """
    read = _read_checkpoint(Path(out_dir), config)
    if read is None:
        return None
    path, manifest = read
    named = _named_leaves(template)
    try:
        entries = manifest["leaves"]
        if [e["name"] for e in entries] != [name for name, _ in named]:
            raise RunDirError(f"{path} holds another state structure than this run's; "
                              f"{_afresh(path)}")
        # The bytes each leaf of this run's state takes (a key: its key data).
        bounds = {e["array"]: npy_bytes((*like.shape, 16), np.uint32) if _is_key(like)
                  else npy_bytes(like.shape, like.dtype)
                  for e, (_, like) in zip(entries, named, strict=True)}
        total = sum(bounds.values()) + _manifest_bound(config) + (1 << 20)
        arrays = _load_npz(path, _afresh(path), bounds, max_bytes=total)
        leaves = []
        for entry, (name, like) in zip(entries, named, strict=True):
            value = arrays[entry["array"]]
            if _is_key(like):
                value = jax.random.wrap_key_data(value, impl=entry["key_impl"])
            else:
                if value.dtype.kind == "V" and value.dtype.itemsize == like.dtype.itemsize:
                    value = value.view(like.dtype)  # numpy stores e.g. bfloat16 as void
                if value.dtype != like.dtype:  # before jnp.asarray could cast it
                    raise RunDirError(f"{path} holds {name} as {value.dtype}, this run needs "
                                      f"{like.dtype}; {_afresh(path)}")
                value = jnp.asarray(value)
            if value.shape != like.shape or value.dtype != like.dtype:
                raise RunDirError(
                    f"{path} holds {name} as {value.dtype}{list(value.shape)}, this run "
                    f"needs {like.dtype}{list(like.shape)}; {_afresh(path)}")
            leaves.append(value)
        round_ = manifest["round"]
        infos = [_info_from_json(d) for d in manifest["rounds"]]
        check_records(infos, int(template.labelled.shape[0]))
    except RunDirError:
        raise
    except Exception as e:  # a manifest that parses but is not what save_checkpoint wrote
        raise RunDirError(f"{path} is damaged or not a jaxal checkpoint ({_one_line(e)}); "
                          f"{_afresh(path)}") from e
    if type(round_) is not int or [i.round for i in infos] != list(range(round_ + 1)):
        raise RunDirError(f"{path} holds round {round_!r} but records of rounds "
                          f"{[i.round for i in infos]}; {_afresh(path)}")
    treedef = jax.tree.structure(template._replace(round=None))
    return jax.tree.unflatten(treedef, leaves)._replace(round=round_), infos


def check_records(infos: Sequence[RoundInfo], num_pool: int,
                  num_classes: int | None = None) -> None:
    """Refuse round records (of a checkpoint) that name a pool point outside
    0..num_pool-1 or a label outside 0..num_classes-1: they could not come from a run of
    this pool, and would fail the files rewritten from them."""
    for info in infos:
        where = f"{CHECKPOINT} records round {info.round} with"
        indices = [np.asarray(info.queried)]
        if info.extremes is not None:
            indices += [np.asarray(info.extremes.top), np.asarray(info.extremes.bottom)]
        for index in indices:
            if index.size and (index.dtype.kind not in "iu" or index.min() < 0
                               or index.max() >= num_pool):
                raise RunDirError(f"{where} pool indices {_shown(index)}, outside this "
                                  f"run's pool 0..{num_pool - 1}; delete it (or the out "
                                  "dir) to start the run afresh")
        labels = np.asarray(info.queried_labels)
        top = num_classes if num_classes is not None else np.iinfo(np.int32).max
        if labels.shape != np.shape(info.queried) or (labels.size and (
                labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= top)):
            classes = f" 0..{num_classes - 1}" if num_classes is not None else ""
            raise RunDirError(f"{where} labels {_shown(labels)}, not one label per queried "
                              f"point of this run's classes{classes}; delete it (or the "
                              "out dir) to start the run afresh")


def _shown(values: np.ndarray) -> str:
    values = values.ravel().tolist()
    return str(values[:8])[:-1] + (", ...]" if len(values) > 8 else "]")


def metrics_row(info: RoundInfo) -> dict[str, float | int]:
    """A flat record of one round: Figure-5 metrics and timings."""
    t, pseudo = info.timings, info.pseudo
    return {"round": info.round, "num_labels": info.num_labels, **info.metrics._asdict(),
            "pseudo_labels": pseudo.count,
            "pseudo_label_accuracy": pseudo.correct / pseudo.count if pseudo.count else None,
            "score_s": t.score, "train_s": t.train, "posterior_s": t.posterior,
            "eval_s": t.evaluate}


def query_row(info: RoundInfo, pool_index: np.ndarray | None) -> dict[str, Any]:
    """Queried pool indices with their TFDS train-split indices, labels and scores."""
    queried = np.asarray(info.queried)
    extremes = {}
    if info.extremes is not None:
        e = info.extremes
        extremes = {"top_pool_index": np.asarray(e.top).tolist(),
                    "top_score": np.asarray(e.top_scores, np.float64).tolist(),
                    "bottom_pool_index": np.asarray(e.bottom).tolist(),
                    "bottom_score": np.asarray(e.bottom_scores, np.float64).tolist()}
    return {
        **extremes,
        "round": info.round,
        "pool_index": queried.tolist(),
        "dataset_index": (np.asarray(pool_index)[queried].tolist()
                          if pool_index is not None else queried.tolist()),
        "label": np.asarray(info.queried_labels).tolist(),
        "score": np.asarray(info.scores, np.float64).tolist(),
    }


def query_class_counts(infos: Sequence[RoundInfo], num_classes: int) -> list[dict]:
    """Per round, the cumulative number of queried points of each class."""
    total = np.zeros(num_classes, int)
    rows = []
    for info in infos:
        total += np.bincount(np.asarray(info.queried_labels, int), minlength=num_classes)
        rows.append({"round": info.round, "num_labels": info.num_labels,
                     **{f"class_{c}": int(n) for c, n in enumerate(total)}})
    return rows


def write_rounds(out_dir: str | os.PathLike, infos: Sequence[RoundInfo],
                 pool_index: np.ndarray | None = None, num_classes: int | None = None
                 ) -> None:
    """(Re)write metrics.csv, metrics.jsonl, queries.jsonl (and, given ``num_classes``,
    query_classes.csv) for all rounds so far."""
    out_dir = Path(out_dir)
    if num_classes is not None and pool_index is not None:
        check_records(infos, len(pool_index), num_classes)
    rows = [metrics_row(i) for i in infos]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out_dir / "metrics.csv", buf.getvalue())
    write_text_atomic(out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_text_atomic(out_dir / "queries.jsonl", "".join(
        json.dumps(query_row(i, pool_index)) + "\n" for i in infos if i.round > 0))
    if any(i.diagnosis is not None for i in infos):   # --diagnose
        write_text_atomic(out_dir / "diagnosis.jsonl", "".join(
            json.dumps({"round": i.round, "num_labels": i.num_labels, **i.diagnosis}) + "\n"
            for i in infos if i.diagnosis is not None))
    if num_classes is not None:
        counts = query_class_counts(infos, num_classes)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(counts[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(counts)
        write_text_atomic(out_dir / "query_classes.csv", buf.getvalue())


def write_extremes(out_dir: str | os.PathLike, infos: Sequence[RoundInfo],
                   pool_x: np.ndarray, pool_y: np.ndarray) -> None:
    """(Re)write extremes.npz: per round r >= 1, the highest / lowest scored unlabelled
    pool points with their scores, oracle labels and images (float16) for Figure 4."""
    rounds = [i for i in infos if i.extremes is not None]
    if not rounds:
        return
    arrays = {"round": np.array([i.round for i in rounds])}
    for side in ("top", "bottom"):
        idx = np.stack([np.asarray(getattr(i.extremes, side)) for i in rounds])
        arrays[f"{side}_index"] = idx
        arrays[f"{side}_score"] = np.stack(
            [np.asarray(getattr(i.extremes, f"{side}_scores")) for i in rounds])
        arrays[f"{side}_label"] = np.asarray(pool_y)[idx]
        arrays[f"{side}_image"] = np.asarray(pool_x)[idx].astype(np.float16)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes_atomic(Path(out_dir) / "extremes.npz", buf.getvalue())


def read_extremes(out_dir: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The arrays of ``out_dir``'s extremes.npz (``write_extremes``), or None if absent."""
    path = Path(out_dir) / "extremes.npz"
    if not path.exists():
        return None
    members = npz_members(path, _REWRITE, max_bytes=MAX_EXTREMES_BYTES)
    if missing := [k for k in EXTREMES_KEYS if k not in members]:
        raise RunDirError(f"{path} is not a jaxal extremes file (no {', '.join(missing)}); "
                          f"{_REWRITE}")
    bounds = dict.fromkeys(EXTREMES_KEYS, MAX_EXTREMES_BYTES)
    extremes = _load_npz(path, _REWRITE, bounds, max_bytes=MAX_EXTREMES_BYTES)
    if not _extremes_fit(extremes):
        shapes = ", ".join(f"{k} {a.dtype}{list(a.shape)}" for k, a in extremes.items())
        raise RunDirError(f"{path} does not hold Figure 4's arrays (per round r and point "
                          "k: round [r], indices, labels and scores [r, k], images "
                          f"[r, k, ...]; it holds {shapes}); {_REWRITE}")
    return extremes


def _extremes_fit(extremes: dict[str, np.ndarray]) -> bool:
    """Whether the arrays have the shapes and dtypes ``write_extremes`` gives them."""
    rounds = extremes["round"]
    if not (rounds.ndim == 1 and rounds.size and rounds.dtype.kind in "iu"):
        return False
    per_round = extremes["top_index"].shape
    if len(per_round) != 2 or per_round[0] != rounds.size or per_round[1] < 1:
        return False
    for key in EXTREMES_KEYS[1:]:
        a = extremes[key]
        kinds = "iu" if key.endswith(("index", "label")) else "iuf"
        ndims = (3, 4, 5) if key.endswith("image") else (2,)
        if a.shape[:2] != per_round or a.ndim not in ndims or a.dtype.kind not in kinds:
            return False
    return True


def _read_rounds(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file, one per round."""
    try:
        lines = read_bytes(path, _REWRITE, max_bytes=MAX_RECORDS_BYTES).decode(
            "utf-8").splitlines()
    except FileNotFoundError as e:
        raise RunDirError(f"{path} is missing; {_REWRITE}") from e
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path} is unreadable ({_one_line(e)}); {_REWRITE}") from e
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = loads_json(line)
        except ValueError as e:
            raise RunDirError(f"{path} line {n} is not JSON ({_one_line(e)}); "
                              f"{_REWRITE}") from e
        if not isinstance(row, dict) or "round" not in row:
            raise RunDirError(f"{path} line {n} is not a round record; {_REWRITE}")
        rows.append(row)
    return rows


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of metrics.jsonl (round 0 on)."""
    path = Path(out_dir) / "metrics.jsonl"
    rows = _read_rounds(path)
    if not rows or any("num_labels" not in r for r in rows):
        raise RunDirError(f"{path} holds no metrics rows; {_REWRITE}")
    return rows


def read_queries(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of queries.jsonl (round 1 on: none after round 0)."""
    path = Path(out_dir) / "queries.jsonl"
    rows = _read_rounds(path)
    for n, row in enumerate(rows, 1):
        labels = row.get("label")
        if not (isinstance(labels, list) and all(
                type(y) is int and y >= 0 for y in labels)):
            raise RunDirError(f"{path} record {n} has no 'label' list of class numbers; "
                              f"{_REWRITE}")
    return rows


def config_difference(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two (nested) config dicts."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_difference(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} (in out dir) != {b!r} (this run)")
    return diffs
