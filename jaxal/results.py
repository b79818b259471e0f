"""Run outputs, written atomically (temp file + rename) so a killed run never leaves half a file.

An out dir holds:

    config.json      everything that decides the run (dataset, seed, ALConfig, versions)
    metrics.csv      one row per round: labels, Figure-5 metrics, seconds per stage
    metrics.jsonl    the same rows as JSON lines (``pandas.read_json(..., lines=True)``)
    queries.jsonl    per round: queried pool indices, TFDS train indices, labels, scores
    query_classes.csv  per round: how many queries so far fell in each class (a strategy
                     that avoids a class, e.g. redundancy on the distinctive digit 1,
                     shows up here and in figure5.png's histogram)
    figure5.png      the Figure-5 panels vs number of labels (see ``jaxal.plots``)
    extremes.npz     per round: the 5 highest and lowest scored unlabelled pool points
                     (indices, scores, labels, images), for Figure 4 (``jaxal.plots``)
    checkpoint.pkl   the loop state and round records after the last finished round, so a
                     rerun of the same command continues there (``load_checkpoint``)
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.loop import ALState, RoundInfo

CHECKPOINT = "checkpoint.pkl"
CHECKPOINT_VERSION = 1

METRIC_COLUMNS = ("round", "num_labels", "train_loss", "test_loss", "test_accuracy",
                  "test_entropy", "val_loss", "val_accuracy", "prior_precision",
                  "pseudo_labels", "pseudo_label_accuracy", "score_s", "train_s",
                  "posterior_s", "eval_s")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same dir and ``os.replace``."""
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same dir and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(out_dir: str | os.PathLike, state: ALState,
                    infos: Sequence[RoundInfo]) -> None:
    """Atomically store the state after a finished round and every round's record.

    Arrays go to host numpy (exact bits); the typed init key as its key data.
    """
    host = jax.device_get(state._replace(init_key=jax.random.key_data(state.init_key)))
    payload = {"version": CHECKPOINT_VERSION, "state": host, "infos": list(infos)}
    write_bytes_atomic(Path(out_dir) / CHECKPOINT, pickle.dumps(payload))


def load_checkpoint(out_dir: str | os.PathLike) -> tuple[ALState, list[RoundInfo]] | None:
    """(state, infos) of the last finished round in ``out_dir``, or None if there is none.

    Only read back what this package wrote there (pickle runs code from the file).
    """
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        return None
    payload = pickle.loads(path.read_bytes())
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} was written by another jaxal version (checkpoint "
                         f"version {payload.get('version')}, expected "
                         f"{CHECKPOINT_VERSION}); delete it to start the run afresh")
    state = payload["state"]
    state = jax.tree.map(jnp.asarray, state._replace(init_key=None))._replace(
        init_key=jax.random.wrap_key_data(jnp.asarray(payload["state"].init_key)),
        round=int(state.round))
    return state, payload["infos"]


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
    rows = [metrics_row(i) for i in infos]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out_dir / "metrics.csv", buf.getvalue())
    write_text_atomic(out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_text_atomic(out_dir / "queries.jsonl", "".join(
        json.dumps(query_row(i, pool_index)) + "\n" for i in infos if i.round > 0))
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


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of metrics.jsonl."""
    with open(Path(out_dir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_queries(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    with open(Path(out_dir) / "queries.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


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
