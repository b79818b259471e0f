"""Real labelling: propose a batch for a pool whose labels are partly unknown, record the
labels a person gives, repeat.

    propose(session_dir, config)              # -> Proposal; writes query_<r>.csv / .png
    record_labels(session_dir, "answers.csv") # index,label rows from the labeller
    record_oracle_labels(session_dir)         # simulation: the dataset's labels

A session dir holds

    session.json     the ExperimentConfig of the session (a different one is refused)
    labels.csv       pool_index,label of every label given so far, in the order given
    pending.json     the last proposal not yet labelled (round, pool indices)
    query_<r>.csv    round r's proposal: pool_index,dataset_index,score
    query_<r>.png    its contact sheet: the images with their pool indices

Nothing here reads the pool's labels except ``record_oracle_labels`` (simulation, where
the oracle is the ground truth). The validation split's labels are used for the
``val-nll`` prior fit and the reported accuracy, as in any model selection; a pool with
no labelled validation data should use ``--prior-precision auto`` (evidence). Every
proposal is a pure function of the config and the labels so far: rerunning ``propose``
without new labels proposes the same batch. Bad label files are rejected with the reason
and leave the session unchanged.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.experiment import TOY_DATASETS, ExperimentConfig, check_config, load_split
from jaxal.loop import ConfigError, make_learner, validate_config
from jaxal.model import cnn, mlp
from jaxal.results import config_difference, write_json_atomic, write_text_atomic

LABELS = "labels.csv"
PENDING = "pending.json"


class LabelError(ValueError):
    """A label file that cannot be recorded; the session is left unchanged."""


class Proposal(NamedTuple):
    round: int
    pool_index: np.ndarray        # int [k]
    dataset_index: np.ndarray     # int [k], index in the dataset's train split
    scores: np.ndarray            # [k] (NaN for the random first batch)
    num_labels: int               # labels the proposal was made from
    val_accuracy: float | None    # of the model trained on them (None without labels)


def read_labels(session_dir: str | os.PathLike) -> dict[int, int]:
    """pool_index -> label of every label recorded so far."""
    path = Path(session_dir) / LABELS
    if not path.exists():
        return {}
    with open(path) as f:
        return {int(r["pool_index"]): int(r["label"]) for r in csv.DictReader(f)}


def _write_labels(session_dir: Path, labels: dict[int, int]) -> None:
    buf = io.StringIO()
    buf.write("pool_index,label\n")
    buf.writelines(f"{i},{y}\n" for i, y in labels.items())
    write_text_atomic(session_dir / LABELS, buf.getvalue())


def open_session(session_dir: str | os.PathLike, config: ExperimentConfig, split) -> Path:
    """Create the session dir for ``config``, or check that it was made by the same one."""
    session_dir = Path(session_dir)
    session_dir.mkdir(parents=True, exist_ok=True)
    path = session_dir / "session.json"
    new = json.loads(json.dumps(config.to_dict()))
    if path.exists():
        diffs = config_difference(json.loads(path.read_text())["experiment"], new)
        if diffs:
            raise ConfigError(f"{session_dir} is a session with another configuration:\n  "
                              + "\n  ".join(diffs) + "\nuse the same options, or another "
                              "session dir")
    else:
        write_json_atomic(path, {"experiment": new, "num_pool": int(split.pool_x.shape[0]),
                                 "num_classes": int(split.num_classes)})
    return session_dir


def _session(session_dir: Path) -> dict:
    path = session_dir / "session.json"
    if not path.exists():
        raise LabelError(f"{session_dir} is not a labelling session (no session.json); "
                         "start one with query")
    return json.loads(path.read_text())


def propose(session_dir: str | os.PathLike, config: ExperimentConfig) -> Proposal:
    """The next batch of ``config.al.query_size`` pool points to label.

    Without labels: a seeded uniformly random batch (no model can be trained yet). With
    labels: θ_MAP on them, the configured posterior and acquisition, exactly as one round
    of ``jaxal.loop.al_round`` would query.
    """
    check_config(config)
    split = load_split(config)
    session_dir = open_session(session_dir, config, split)
    labels = read_labels(session_dir)
    n, k = split.pool_x.shape[0], config.al.query_size
    if len(labels) + k > n:
        raise ConfigError(f"{len(labels)} labelled + a query of {k} exceeds the pool of {n}")
    round_ = _num_rounds(session_dir) + 1
    key = jax.random.fold_in(jax.random.key(config.seed), len(labels))
    labelled = np.zeros(n, bool)
    labelled[list(labels)] = True
    if not labels:
        idx = np.asarray(jax.random.choice(key, n, (k,), replace=False))
        scores, val_accuracy = np.full(k, np.nan), None
    else:
        idx, scores, val_accuracy = _query(key, config, split, labels, labelled)
    proposal = Proposal(round_, idx, split.pool_index[idx], scores, len(labels),
                        val_accuracy)
    _write_proposal(session_dir, proposal, split)
    return proposal


def _num_rounds(session_dir: Path) -> int:
    return len(list(session_dir.glob("query_*.csv"))) - (session_dir / PENDING).exists()


def _query(key, config: ExperimentConfig, split, labels: dict[int, int], labelled):
    n, c = split.pool_x.shape[0], split.num_classes
    # A static bound on the labelled set: the labels so far plus this query.
    budget = len(labels) + config.al.query_size
    per_class = 1
    rounds = math.ceil(max(budget - per_class * c, 0) / config.al.query_size)
    al = config.al._replace(init_per_class=per_class, rounds=rounds)
    validate_config(al, n, None, c)
    model = mlp(c) if config.dataset in TOY_DATASETS else cnn(c)
    learner = make_learner(model, al, split.pool_x.shape[1:], c)
    # Labels the person gave; unlabelled entries are never read (padding repeats a
    # labelled index), so they stay 0.
    y = np.zeros(n, np.int32)
    y[list(labels)] = list(labels.values())
    pool_x, y, labelled = jnp.asarray(split.pool_x), jnp.asarray(y), jnp.asarray(labelled)
    val_x, val_y = jnp.asarray(split.val_x), jnp.asarray(split.val_y)
    key_init, key_train, key_fit, key_query = jax.random.split(key, 4)
    params, _ = learner.train(key_train, params=learner.init(key_init), x_pool=pool_x,
                              y_pool=y, labelled=labelled)
    posterior = learner.fit(key_fit, params, pool_x, y, labelled, val_x, val_y)
    query = learner.query(key_query, posterior, pool_x, labelled)
    _, val_accuracy, _ = learner.evaluate(key_query, posterior, val_x, val_y)
    return (np.asarray(query.indices), np.asarray(query.scores, np.float64),
            float(val_accuracy))


def _write_proposal(session_dir: Path, proposal: Proposal, split) -> None:
    rows = "".join(f"{i},{d},{s!r}\n" for i, d, s in zip(
        proposal.pool_index.tolist(), proposal.dataset_index.tolist(),
        proposal.scores.tolist(), strict=True))
    write_text_atomic(session_dir / f"query_{proposal.round}.csv",
                      "pool_index,dataset_index,score\n" + rows)
    if split.pool_x.ndim == 4:
        contact_sheet(split.pool_x[proposal.pool_index], proposal.pool_index,
                      session_dir / f"query_{proposal.round}.png",
                      f"round {proposal.round}: label these {len(proposal.pool_index)} "
                      f"images (from {proposal.num_labels} labels)")
    write_json_atomic(session_dir / PENDING, {
        "round": proposal.round, "pool_index": proposal.pool_index.tolist()})


def contact_sheet(images: np.ndarray, pool_index: np.ndarray, path: Path, title: str
                  ) -> None:
    """A grid of the images, each titled with its pool index (what the labeller types)."""
    import matplotlib.pyplot as plt

    cols = min(len(images), 10)
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows + 0.6),
                             squeeze=False, constrained_layout=True)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, i in zip(axes.flat, images, pool_index, strict=False):
        image = np.asarray(image, np.float32)
        ax.imshow(np.clip(image[..., 0] if image.shape[-1] == 1 else image, 0, 1),
                  cmap="gray" if image.shape[-1] == 1 else None)
        ax.set_title(f"index {int(i)}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    path_tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(path_tmp, dpi=100)
    plt.close(fig)
    os.replace(path_tmp, path)


def parse_label_csv(text: str, num_classes: int, num_pool: int,
                    known: dict[int, int]) -> dict[int, int]:
    """Validated pool_index -> label rows of a labeller's CSV ``index,label`` (a header
    row ``index,label`` or ``pool_index,label`` is optional). Every problem is reported
    at once, with its line number."""
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(x.strip() for x in r)]
    if rows and not rows[0][0].strip().lstrip("-").isdigit():
        rows = rows[1:]                                      # a header
    new: dict[int, int] = {}
    problems = []
    for line, row in enumerate(rows, start=1):
        if len(row) != 2:
            problems.append(f"row {line}: expected 'index,label', got {','.join(row)!r}")
            continue
        try:
            i, y = int(row[0]), int(row[1])
        except ValueError:
            problems.append(f"row {line}: index and label must be integers, got {row}")
            continue
        if not 0 <= i < num_pool:
            problems.append(f"row {line}: unknown index {i} (pool indices are 0.."
                            f"{num_pool - 1}, as in query_<round>.csv)")
        elif not 0 <= y < num_classes:
            problems.append(f"row {line}: label {y} out of range (0..{num_classes - 1})")
        elif i in new:
            problems.append(f"row {line}: duplicate index {i} (also labelled {new[i]})")
        elif i in known:
            problems.append(f"row {line}: index {i} is already labelled {known[i]}")
        else:
            new[i] = y
    if problems:
        raise LabelError("label file rejected, nothing recorded:\n  " + "\n  ".join(problems))
    if not new:
        raise LabelError("label file has no rows; expected lines 'index,label'")
    return new


def record_labels(session_dir: str | os.PathLike, csv_path: str | os.PathLike
                  ) -> dict[int, int]:
    """Add the labels of ``csv_path`` to the session; returns the new ones.

    All rows are checked before anything is written; the update is atomic.
    """
    session_dir = Path(session_dir)
    session = _session(session_dir)
    known = read_labels(session_dir)
    new = parse_label_csv(Path(csv_path).read_text(), session["num_classes"],
                          session["num_pool"], known)
    _commit(session_dir, {**known, **new})
    return new


def record_oracle_labels(session_dir: str | os.PathLike, config: ExperimentConfig
                         ) -> dict[int, int]:
    """Simulation: label the pending proposal with the dataset's own labels."""
    session_dir = open_session(session_dir, config, load_split(config))
    if not (session_dir / PENDING).exists():
        raise LabelError(f"{session_dir} has no pending proposal; run query first")
    split = load_split(config)
    pending = json.loads((session_dir / PENDING).read_text())["pool_index"]
    new = {int(i): int(split.pool_y[i]) for i in pending}
    _commit(session_dir, {**read_labels(session_dir), **new})
    return new


def _commit(session_dir: Path, labels: dict[int, int]) -> None:
    _write_labels(session_dir, labels)
    (session_dir / PENDING).unlink(missing_ok=True)
