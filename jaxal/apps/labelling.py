"""Real labelling: propose a batch for a pool whose labels are partly unknown, record the
labels a person gives, repeat.

    propose(session_dir, config)              # -> Proposal; writes query_<r>.csv / .png
    record_labels(session_dir, "answers.csv") # index,label rows from the labeller
    record_oracle_labels(session_dir)         # simulation: the dataset's labels

The session dir's files, and the reading, checking and writing of its labels.csv and
pending.json, are ``jaxal.apps.label_files``.

The pool is a TFDS dataset's training split, or a folder of the user's own images
(``jaxal.data.image_folder``: unlabelled images plus optional ``class_name/`` subfolders of
labelled ones, which become the session's first labels). A folder's labels may be given
by class name as well as by number. A folder session's labels are keyed by file, so the
folder may grow between rounds: each ``propose`` reads it again, new images join the
pool (new images in class subfolders are labelled by their folder), and a labelled or
proposed image that was replaced or removed is refused by name, never trained on.

Nothing here reads the pool's labels except ``record_oracle_labels`` (simulation, where
the oracle is the ground truth). The validation split's labels are used for the
``val-nll`` prior fit and the reported accuracy, as in any model selection; a pool with
no labelled validation data should use ``--prior-precision auto`` (evidence). Every
proposal is a pure function of the config and the labels so far: rerunning ``propose``
without new labels proposes the same batch. Bad label files are rejected with the reason
and leave the session unchanged. A proposal stays pending until each of its points has a
label.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.acquisition import entropy
from jaxal.apps.experiment import (
    ExperimentConfig,
    check_config,
    load_split,
    memory_estimate,
    read_folder,
)
from jaxal.apps.label_files import (
    PENDING,
    SESSION,
    LabelError,
    batch_indices,
    keyed_by_file,
    last_proposal,
    parse_label_csv,
    pending_indices,
    read_label_csv,
    read_labels,
    read_session,
    session_class_names,
    session_files,
    session_labels,
    write_labels,
)
from jaxal.apps.results import config_difference, read_json, write_json_atomic, write_text_atomic
from jaxal.chunks import map_chunks
from jaxal.components import POSTERIORS
from jaxal.config import IMAGE_FOLDER
from jaxal.errors import ConfigError
from jaxal.loop import (
    ALData,
    Extremes,
    evaluation_options,
    make_learner,
    train_and_fit,
    validate_config,
)
from jaxal.model import build_model
from jaxal.posteriors import bind
from jaxal.predictive import PREDICTIVES

# Files a run writes in its out dir: a session dir holding one is a run's, not a session.
RUN_FILES = ("config.json", "checkpoint.npz", "metrics.jsonl")


class Proposal(NamedTuple):
    round: int
    pool_index: np.ndarray        # int [k]
    dataset_index: np.ndarray     # int [k], index in the dataset's train split
    scores: np.ndarray            # [k] (NaN for the random first batch)
    num_labels: int               # labels the proposal was made from
    val_accuracy: float | None    # of the model trained on them (None without labels)
    class_names: tuple[str, ...] = ()   # an image folder's classes, label order
    probs: np.ndarray | None = None     # [k, c] predictive probabilities of the batch
    pool_entropy: float | None = None   # mean predictive entropy of the unlabelled pool
    extremes: Extremes | None = None    # the pool's top and bottom scored points


def _load(config: ExperimentConfig, session_dir: Path):
    """(split, ImageFolder or None) of the session's pool; a folder's decoded images are
    cached in the session dir (``images-<key>.npy``)."""
    if config.dataset != IMAGE_FOLDER:
        return load_split(config), None
    from jaxal.data.image_folder import folder_split

    folder = read_folder(config, session_dir if session_dir.is_dir() else None)
    return folder_split(folder), folder


def open_session(session_dir: str | os.PathLike, config: ExperimentConfig, split,
                 folder=None) -> Path:
    """Create the session dir for ``config``, or check that it was made by the same one
    (and, for an image ``folder``, on the same files). A new folder session starts with
    the labels of its class subfolders."""
    session_dir = Path(session_dir)
    if run_file := next((f for f in RUN_FILES if (session_dir / f).exists()), None):
        raise LabelError(f"{session_dir} holds a run of python -m jaxal.run ({run_file}); "
                         "a labelling session needs its own dir: choose another --out")
    if folder is not None and Path(config.data_dir).resolve() in (
            session_dir.resolve(), *session_dir.resolve().parents):
        raise ConfigError(f"session dir {session_dir} is inside --images {config.data_dir}, "
                          "where it would be read as a class folder; put it elsewhere")
    try:
        session_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LabelError(f"cannot use {session_dir} as a session dir ({e.strerror}); "
                         "choose another --out") from None
    path = session_dir / SESSION
    new = json.loads(json.dumps(config.to_dict()))
    if path.exists():
        diffs = config_difference(read_session(session_dir)["experiment"], new)
        if diffs:
            shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more"
                                             if len(diffs) > 3 else "")
            raise ConfigError(f"{session_dir} is a session with another configuration "
                              f"({shown}); use the same options, or another session dir")
        session = read_session(session_dir)
        if folder is not None and keyed_by_file(session):
            _update_folder(session_dir, session, folder, config.data_dir)
            return session_dir
        if folder is not None and session.get("files_digest") != folder.digest:
            raise ConfigError(
                f"the images in {config.data_dir} changed since session {session_dir} began "
                f"(now {len(folder.files)} files); its labels name pool indices of the old "
                "file list: restore the folder, or start another session dir")
        if folder is not None:
            _check_contents(session_dir, folder, config.data_dir)
    else:
        session = {"experiment": new, "num_pool": int(split.pool_x.shape[0]),
                   "num_classes": int(split.num_classes)}
        if folder is not None:
            session |= _folder_record(folder)
            given = {int(i): int(y) for i, y in enumerate(folder.labels) if y >= 0}
            if given:
                write_labels(session_dir, given, session)
        write_json_atomic(path, session)
    return session_dir


def _folder_record(folder) -> dict:
    """What session.json records of a folder's read: labels keyed by file."""
    return {"keys": "file", "class_names": list(folder.class_names),
            "files_digest": folder.digest, "files": list(folder.files),
            "files_sha256": list(folder.sha256), "num_pool": len(folder.files)}


def _update_folder(session_dir: Path, session: dict, folder, images_dir) -> None:
    """Move a keyed session to the folder as read now: its labels and pending proposal
    follow their files to their new pool indices, new images join the pool (those in
    class subfolders labelled), and a labelled or proposed image that is gone or was
    replaced is refused by name."""
    labels = session_labels(session_dir, session)
    pending = pending_indices(session_dir, session)
    old_files, old_sha = session_files(session)
    where = {name: i for i, name in enumerate(folder.files)}
    for what, indices in (("labelled", labels), ("proposed", pending or ())):
        for i in indices:
            name = old_files[i]
            if name not in where:
                raise ConfigError(
                    f"{Path(images_dir) / name} was {what} in session {session_dir} and is "
                    "gone from the folder; restore it, or delete its line from labels.csv"
                    if what == "labelled" else
                    f"{Path(images_dir) / name} was {what} in session {session_dir} and is "
                    "gone from the folder; restore it, or delete pending.json")
            if folder.sha256[where[name]] != old_sha[i]:
                raise ConfigError(
                    f"{Path(images_dir) / name} changed content since session {session_dir} "
                    f"began; it is {what} as the old image: restore it, or delete its "
                    + ("line from labels.csv to label it again" if what == "labelled"
                       else "pending.json to propose afresh"))
    kept = {where[old_files[i]]: y for i, y in labels.items()}
    new = {**kept, **{int(i): int(y) for i, y in enumerate(folder.labels)
                      if y >= 0 and int(i) not in kept}}
    # labels.csv and pending.json name files, so each write below leaves the session
    # right, whichever of them a kill stops before.
    if session.get("files_digest") != folder.digest or list(folder.sha256) != old_sha:
        session = {**session, **_folder_record(folder)}
        write_json_atomic(session_dir / SESSION, session)
    if new != kept:
        write_labels(session_dir, new, session)
    if pending is not None:
        moved = [where[old_files[i]] for i in pending]
        if moved != pending:
            record = read_json(session_dir / PENDING, "delete it and run query again",
                               LabelError)
            write_json_atomic(session_dir / PENDING, {**record, "pool_index": moved})


def _check_contents(session_dir: Path, folder, images_dir) -> None:
    """Refuse a folder whose image under a name the session knows was replaced: its label
    or the pending proposal is of the old image. (A session begun before jaxal recorded
    the contents has nothing to compare.)"""
    recorded = read_session(session_dir).get("files_sha256")
    if not isinstance(recorded, list) or len(recorded) != len(folder.files):
        return
    changed = [name for name, old, new in zip(folder.files, recorded, folder.sha256,
                                              strict=True) if old != new]
    if changed:
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        raise ConfigError(
            f"{Path(images_dir) / changed[0]}{more} changed content since session "
            f"{session_dir} began; its labels and pending proposal are of the old image: "
            "restore it, or start another session dir")


def sync_folder(session_dir: str | os.PathLike, config: ExperimentConfig):
    """Open the session (created if new) without proposing, and return its split. An
    image-folder session is brought to its folder as it is now: new images join the
    pool, labels and the pending batch follow their files (``propose`` does the same
    first)."""
    check_config(config)
    split, folder = _load(config, Path(session_dir))
    session_dir = open_session(session_dir, config, split, folder)
    if folder is not None:
        from jaxal.data.image_folder import save_cache

        save_cache(folder, session_dir)
    return split


def propose(session_dir: str | os.PathLike, config: ExperimentConfig) -> Proposal:
    """The next batch of ``config.al.query_size`` pool points to label.

    Without labels: a seeded uniformly random batch (no model can be trained yet). With
    labels: θ_MAP on them, the configured posterior and acquisition, exactly as one round
    of ``jaxal.loop.al_round`` would query.
    """
    check_config(config)
    split, folder = _load(config, Path(session_dir))
    session_dir = open_session(session_dir, config, split, folder)
    if folder is not None:
        from jaxal.data.image_folder import save_cache

        save_cache(folder, session_dir)
    labels = read_labels(session_dir)
    pending_indices(session_dir, read_session(session_dir))        # a corrupt one is refused here
    n, k = split.pool_x.shape[0], config.al.query_size
    if len(labels) + k > n:
        raise ConfigError(f"{len(labels)} labelled + a query of {k} exceeds the pool of {n}")
    round_ = _num_rounds(session_dir) + 1
    key = jax.random.fold_in(jax.random.key(config.seed), len(labels))
    labelled = np.zeros(n, bool)
    labelled[list(labels)] = True
    if not labels:
        idx = np.asarray(jax.random.choice(key, n, (k,), replace=False))
        scores, val_accuracy, probs, pool_entropy, extremes = (np.full(k, np.nan), None,
                                                                None, None, None)
    else:
        idx, scores, val_accuracy, probs, pool_entropy, extremes = _query(
            key, config, split, labels, labelled)
    proposal = Proposal(round_, idx, split.pool_index[idx], scores, len(labels),
                        val_accuracy, folder.class_names if folder is not None else (),
                        probs, pool_entropy, extremes)
    _write_proposal(session_dir, proposal, split, folder, labels)
    return proposal


def _num_rounds(session_dir: Path) -> int:
    return len(list(session_dir.glob("query_*.csv"))) - (session_dir / PENDING).exists()


def _query(key, config: ExperimentConfig, split, labels: dict[int, int], labelled):
    """(pool indices, scores, validation accuracy) of the batch the loop's next round
    would query, with the session's labels in place of the oracle's."""
    n, c, k = split.pool_x.shape[0], split.num_classes, config.al.query_size
    # A static bound on the labelled set: the labels so far plus this query (``propose``
    # checked that it fits the pool), rounded up to whole queries after one label per
    # class, the bound proposals have always been computed with (so a session's pending
    # proposal is the same after an upgrade).
    capacity = c + math.ceil(max(len(labels) + k - c, 0) / k) * k
    validate_config(config.al)
    model = build_model(config.dataset, c, config.al)
    memory_estimate(config.al, model, split)   # refused before any work if too large
    learner = make_learner(model, config.al, split.pool_x.shape[1:], c, capacity=capacity)
    # Labels the person gave; unlabelled entries are never read (padding repeats a
    # labelled index), so they stay 0.
    y = np.zeros(n, np.int32)
    y[list(labels)] = list(labels.values())
    val_x, val_y = jnp.asarray(split.val_x), jnp.asarray(split.val_y)
    # No test set: a proposal reports the validation accuracy only.
    data = ALData(jnp.asarray(split.pool_x), jnp.asarray(y), val_x, val_y, val_x[:0],
                  val_y[:0], c)
    labelled = jnp.asarray(labelled)
    key_init, key_train, key_fit, key_query = jax.random.split(key, 4)
    # The loop's own training and posterior fit; then the query of its next round.
    _, _, posterior, _ = train_and_fit(key_train, key_fit, learner, data,
                                       learner.init(key_init), labelled)
    query = learner.query(key_query, posterior, data.pool_x, labelled)
    # An image folder has no validation labels: no accuracy to report.
    val_accuracy = (float(learner.evaluate(key_query, posterior, val_x, val_y)[1])
                    if len(val_y) else None)
    # What the labelling page shows: the batch's predictive, and the unlabelled pool's
    # mean predictive entropy (the curve of a pool nobody has validation labels for).
    record = POSTERIORS[config.al.posterior]
    predict = partial(PREDICTIVES[config.al.predictive].predict,
                      posterior=bind(record, evaluation_options(config.al)))
    probs = jax.jit(lambda x: map_chunks(
        lambda i, chunk: predict(key_query, model, posterior, chunk).probs, x,
        config.al.chunk_size))(data.pool_x)
    pool_entropy = float(jnp.where(labelled, 0.0, entropy(probs)).sum()
                         / max(int((~labelled).sum()), 1))
    idx = np.asarray(query.indices)
    return (idx, np.asarray(query.scores, np.float64), val_accuracy,
            np.asarray(probs[idx], np.float64), pool_entropy,
            Extremes(*(np.asarray(a) for a in jax.device_get(query.extremes))))


def _write_proposal(session_dir: Path, proposal: Proposal, split, folder=None,
                    labels: Mapping[int, int] | None = None) -> None:
    # A folder's rows name the file (quoted by csv where its name needs it).
    where = (proposal.dataset_index.tolist() if folder is None else
             [folder.files[i] for i in proposal.pool_index.tolist()])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("pool_index", "dataset_index" if folder is None else "file", "score"))
    writer.writerows((i, d, repr(s)) for i, d, s in zip(
        proposal.pool_index.tolist(), where, proposal.scores.tolist(), strict=True))
    write_text_atomic(session_dir / f"query_{proposal.round}.csv", buf.getvalue())
    if split.pool_x.ndim == 4:
        images = (split.pool_x[proposal.pool_index] if folder is None else
                  folder.images[proposal.pool_index] / np.float32(255))
        contact_sheet(images, proposal.pool_index,
                      session_dir / f"query_{proposal.round}.png",
                      f"round {proposal.round}: label these {len(proposal.pool_index)} "
                      f"images (from {proposal.num_labels} labels)")
    record = proposal_record(proposal, folder, labels or {}, split.num_classes)
    write_text_atomic(session_dir / f"proposal_{proposal.round}.json",
                      json.dumps(record, allow_nan=False) + "\n")
    pending = {"round": proposal.round, "pool_index": proposal.pool_index.tolist()}
    if folder is not None:
        pending["files"] = record["files"]
    write_json_atomic(session_dir / PENDING, pending)


def proposal_record(proposal: Proposal, folder, labels: Mapping[int, int],
                    num_classes: int) -> dict:
    """The JSON record of a proposal (``proposal_<r>.json``): no NaN (JSON has none;
    a score or accuracy that is not known is null)."""
    def plain(values) -> list | None:
        if values is None:
            return None
        return [v if math.isfinite(v) else None
                for v in np.asarray(values, np.float64).tolist()]

    def names(index) -> list[str] | None:
        return None if folder is None else [folder.files[i] for i in np.asarray(index)]

    counts = np.bincount(np.asarray(list(labels.values()), np.int64), minlength=num_classes)
    extremes = proposal.extremes
    return {
        "round": proposal.round, "pool_index": proposal.pool_index.tolist(),
        "dataset_index": np.asarray(proposal.dataset_index).tolist(),
        "files": names(proposal.pool_index), "scores": plain(proposal.scores),
        "probs": None if proposal.probs is None else [plain(p) for p in proposal.probs],
        "num_labels": proposal.num_labels, "val_accuracy": proposal.val_accuracy,
        "pool_entropy": proposal.pool_entropy, "label_counts": counts.tolist(),
        "class_names": list(proposal.class_names),
        "extremes": None if extremes is None else {
            "top": extremes.top.tolist(), "top_scores": plain(extremes.top_scores),
            "top_files": names(extremes.top), "bottom": extremes.bottom.tolist(),
            "bottom_scores": plain(extremes.bottom_scores),
            "bottom_files": names(extremes.bottom)},
    }


def contact_sheet(images: np.ndarray, pool_index: np.ndarray, path: Path, title: str
                  ) -> None:
    """A grid of the images, each titled with its pool index (what the labeller types)."""
    from jaxal.apps.plots import save_figure, subplots

    cols = min(len(images), 10)
    rows = -(-len(images) // cols)
    fig, axes = subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, i in zip(axes.flat, images, pool_index, strict=False):
        image = np.asarray(image, np.float32)
        ax.imshow(np.clip(image[..., 0] if image.shape[-1] == 1 else image, 0, 1),
                  cmap="gray" if image.shape[-1] == 1 else None)
        ax.set_title(f"index {int(i)}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=100)


def record_labels(session_dir: str | os.PathLike, csv_path: str | os.PathLike
                  ) -> dict[int, int]:
    """Add the labels of ``csv_path`` to the session; returns the new ones.

    All rows are checked before anything is written; the update is atomic. Any pool
    point may be labelled; the pending proposal stays until all its points are.
    """
    return _record(session_dir, csv_path, lambda session, known: read_label_csv(
        csv_path, session["num_classes"], session["num_pool"], known,
        class_names=session_class_names(session)))


def record_label_rows(session_dir: str | os.PathLike,
                      rows: Iterable[tuple[int | str, int | str]], source: str
                      ) -> dict[int, int]:
    """``record_labels`` of (pool index, label) rows given in memory (the labelling
    page, a Label Studio import): the same checks, as lines of an ``index,label`` file
    named ``source`` in the messages."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return _record(session_dir, source, lambda session, known: parse_label_csv(
        buf.getvalue(), session["num_classes"], session["num_pool"], known, source=source,
        class_names=session_class_names(session)))


def _record(session_dir, source, parse) -> dict[int, int]:
    session_dir = Path(session_dir)
    session = read_session(session_dir)
    known = session_labels(session_dir, session)
    pending = pending_indices(session_dir, session)
    new = parse(session, known)
    if not new:
        raise LabelError(f"{source} has no labels; write one 'index,label' line per "
                         "labelled pool index (as in query_<round>.csv)")
    _commit(session_dir, {**known, **new}, pending, session)
    return new


def remove_label(session_dir: str | os.PathLike, pool_index: int) -> int:
    """Undo the label of a point of the session's last proposal; returns the label it
    had. The proposal is pending again if it was answered (its round unchanged), so the
    point is asked again before the next ``propose``.

    Raises:
        LabelError: the point has no label, or is not in the last proposal (a label of
            an earlier round, or a class subfolder's, is changed in labels.csv itself).
    """
    session_dir = Path(session_dir)
    session = read_session(session_dir)
    labels = session_labels(session_dir, session)
    last = last_proposal(session_dir)
    batch = [] if last is None else batch_indices(last, session)
    if pool_index not in labels or pool_index not in batch:
        raise LabelError(f"pool index {pool_index} is not a labelled point of the last "
                         "proposal; only those are undone (edit labels.csv for others)")
    label = labels.pop(pool_index)
    pending = pending_indices(session_dir, session)
    write_labels(session_dir, labels, session)
    if pending is None:
        record = {"round": last["round"], "pool_index": batch}
        if last.get("files") is not None:
            record["files"] = last["files"]
        write_json_atomic(session_dir / PENDING, record)
    return label


def drop_pending(session_dir: str | os.PathLike) -> list[int]:
    """Close the pending proposal with points still unlabelled (skipped): the next
    ``propose`` starts a new round, and the skipped points stay in the pool. Returns
    them."""
    session_dir = Path(session_dir)
    session = read_session(session_dir)
    pending = pending_indices(session_dir, session)
    if pending is None:
        return []
    labels = session_labels(session_dir, session)
    (session_dir / PENDING).unlink(missing_ok=True)
    return [i for i in pending if i not in labels]


def record_oracle_labels(session_dir: str | os.PathLike, config: ExperimentConfig
                         ) -> dict[int, int]:
    """Simulation: label the pending proposal's unlabelled points with the dataset's
    own labels."""
    if config.dataset == IMAGE_FOLDER:
        raise ConfigError("an image folder has no oracle: nobody knows its labels; label "
                          "the proposal with --csv FILE (index,label rows)")
    split = load_split(config)
    session_dir = open_session(session_dir, config, split)
    session = read_session(session_dir)
    known = session_labels(session_dir, session)
    pending = pending_indices(session_dir, session)
    if pending is None:
        raise LabelError(f"{session_dir} has no pending proposal; run query first")
    new = {int(i): int(split.pool_y[i]) for i in pending if i not in known}
    _commit(session_dir, {**known, **new}, pending, session)
    return new


def _commit(session_dir: Path, labels: dict[int, int], pending: list[int] | None,
            session: dict) -> None:
    write_labels(session_dir, labels, session)
    # Labels for other points do not answer the proposal; query would otherwise number
    # the next round as if it had been.
    if pending is not None and all(i in labels for i in pending):
        (session_dir / PENDING).unlink(missing_ok=True)
