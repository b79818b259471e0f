"""Real labelling: propose a batch for a pool whose labels are partly unknown, record the
labels a person gives, repeat.

    propose(session_dir, config)              # -> Proposal; writes query_<r>.csv / .png
    record_labels(session_dir, "answers.csv") # index,label rows from the labeller
    record_oracle_labels(session_dir)         # simulation: the dataset's labels

A session dir holds

    session.json     the ExperimentConfig of the session (a different one is refused)
    images-<key>.npy an image folder's decoded images (``jaxal.data.image_folder``)
    labels.csv       every label given so far, in the order given: pool_index,label rows
                     (an image folder's: file,label,sha256, below)
    pending.json     the last proposal not yet labelled (round, pool indices; files)
    query_<r>.csv    round r's proposal: pool_index,dataset_index,score (an image folder:
                     pool_index,file,score)
    query_<r>.png    its contact sheet: the images with their pool indices
    proposal_<r>.json  round r's proposal for the labelling page: the batch, its scores
                     and predictive probabilities, the pool's mean predictive entropy, the
                     labels per class, the round's top and bottom scored points

The pool is a TFDS dataset's training split, or a folder of the user's own images
(``jaxal.data.image_folder``: unlabelled images plus optional ``class_name/`` subfolders of
labelled ones, which become the session's first labels). A folder's labels may be given
by class name as well as by number. A folder session names each label by the file's
relative path and records its content hash (labels.csv rows ``file,label,sha256``), so
the folder may grow between rounds: each ``propose`` reads it again, new images join the
pool (new images in class subfolders are labelled by their folder), and a labelled or
proposed image that was replaced or removed is refused by name, never trained on. Pool
indices (in ``index,label`` files, query_<r>.csv, pending.json) are positions in the
file list of the session's last read (session.json ``files``). A folder session begun
before labels were keyed by file (no ``keys`` in session.json) keeps its pool indices
and refuses a folder whose file list changed.

Nothing here reads the pool's labels except ``record_oracle_labels`` (simulation, where
the oracle is the ground truth). The validation split's labels are used for the
``val-nll`` prior fit and the reported accuracy, as in any model selection; a pool with
no labelled validation data should use ``--prior-precision auto`` (evidence). Every
proposal is a pure function of the config and the labels so far: rerunning ``propose``
without new labels proposes the same batch. Bad label files are rejected with the reason
and leave the session unchanged; ``labels.csv`` (which people edit by hand) is checked the
same way on every read. A proposal stays pending until each of its points has a label.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
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
from jaxal.apps.results import config_difference, read_json, write_json_atomic, write_text_atomic
from jaxal.chunks import map_chunks
from jaxal.components import POSTERIORS
from jaxal.config import IMAGE_FOLDER
from jaxal.errors import ConfigError, JaxalError
from jaxal.files import open_regular
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

LABELS = "labels.csv"
PENDING = "pending.json"
SESSION = "session.json"
MAX_PROBLEMS = 20       # problems listed for a bad label file; the rest are counted
MAX_FIELD = 64          # characters in one CSV field; longer is a problem, not a number
# Characters of one line read at most: a longer one (a file without newlines) is a
# problem line, read on in pieces of this size, so a huge file never fills memory.
MAX_LINE = 1 << 20
# Files a run writes in its out dir: a session dir holding one is a run's, not a session.
RUN_FILES = ("config.json", "checkpoint.npz", "metrics.jsonl")
HEADERS = (("index", "label"), ("pool_index", "label"))
# The header of a folder session's labels.csv, labels keyed by file.
FILE_HEADER = ("file", "label", "sha256")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Not int(): it also takes '3_41', '+341' and non-ASCII digits such as '３４１'. The '-'
# lets '-1' be reported as out of range rather than as not a number.
_DECIMAL = re.compile(r"-?[0-9]+")


class LabelError(JaxalError, ValueError):
    """A label or session file that cannot be used; the session is left unchanged."""


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


def read_labels(session_dir: str | os.PathLike) -> dict[int, int]:
    """pool_index -> label of every label recorded so far, validated like any input."""
    session_dir = Path(session_dir)
    return _labels(session_dir, _session(session_dir))


def _labels(session_dir: Path, session: dict) -> dict[int, int]:
    path = session_dir / LABELS
    if not path.exists():
        return {}
    if _keyed(session):
        return _read_file_labels(path, session)
    return read_label_csv(path, session["num_classes"], session["num_pool"],
                          session_file=True, class_names=_class_names(session))


def _keyed(session: dict) -> bool:
    """Whether the session's labels.csv names files (a folder session begun since)."""
    return session.get("keys") == "file"


def _files(session: dict) -> tuple[list[str], list[str]]:
    """(files, their sha256) of a keyed session's last read of its folder."""
    files, sha256 = session.get("files"), session.get("files_sha256")
    if not (isinstance(files, list) and isinstance(sha256, list)
            and len(files) == len(sha256) == session["num_pool"]
            and all(isinstance(f, str) for f in files)
            and all(isinstance(h, str) for h in sha256)):
        raise LabelError(f"session.json lists no files of num_pool {session['num_pool']} "
                         "with their sha256; restore it, or start a new session dir with "
                         "query")
    return files, sha256


def _read_file_labels(path: Path, session: dict) -> dict[int, int]:
    """pool_index -> label of a keyed labels.csv (``file,label,sha256`` rows), checked
    like any label file: each problem listed with its line."""
    files, sha256 = _files(session)
    where = {name: i for i, name in enumerate(files)}
    names, c = _class_names(session), session["num_classes"]
    labels: dict[int, int] = {}
    problems: list[str] = []
    num_problems = 0
    try:
        raw = open_regular(path, "correct or delete that line", error=LabelError)
        with io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline="") as f:
            lines = _BoundedLines(f)
            reader = csv.reader(lines)
            while True:
                line = reader.line_num + 1
                try:
                    row = next(reader)
                    problem = ("not a CSV row (a line of more than "
                               f"{MAX_LINE} characters)" if line in lines.overlong else None)
                except StopIteration:
                    break
                except csv.Error as e:
                    row, problem = [], f"not a CSV row ({e})"
                cells = [cell.strip() for cell in row[:4]]
                if problem is None:
                    if not any(cells) or (line == 1 and tuple(cells) == FILE_HEADER):
                        continue
                    problem = _file_row_problem(cells, len(row), where, sha256, names, c,
                                                labels)
                if problem is None:
                    i = where[cells[0]]
                    labels[i] = names.index(cells[1]) if cells[1] in names else int(cells[1])
                    continue
                num_problems += 1
                if len(problems) < MAX_PROBLEMS:
                    problems.append(f"line {line}: {problem}")
    except UnicodeDecodeError:
        raise LabelError(f"{path} is not UTF-8 text at line {_first_non_utf8_line(path)}; "
                         "correct or delete that line") from None
    if problems:
        s = "s" if num_problems > 1 else ""
        more = num_problems - len(problems)
        raise LabelError("\n  ".join(
            [f"{path}: {num_problems} bad line{s}; correct or delete "
             f"{'these lines' if s else 'that line'}:", *problems]
            + ([f"... and {more} more problems"] if more else [])))
    return labels


def _file_row_problem(cells: list[str], num_fields: int, where: dict[str, int],
                      sha256: list[str], names: tuple[str, ...], num_classes: int,
                      labels: dict[int, int]) -> str | None:
    """What is wrong with a keyed labels.csv row, or None."""
    if num_fields != 3:
        return f"expected 'file,label,sha256', got {num_fields} fields"
    name, label, digest = cells
    if name not in where:
        return (f"file {_shown(name)} is not in the session's folder (as last read); "
                "restore it, or delete the line")
    if not (label in names or (_DECIMAL.fullmatch(label) and len(label) <= MAX_FIELD
                               and 0 <= int(label) < num_classes)):
        return (f"label {_shown(label)} is neither a class ({', '.join(names)}) nor a "
                f"class number 0..{num_classes - 1}")
    if not _SHA256.fullmatch(digest):
        return f"sha256 {_shown(digest)} is not 64 hex digits"
    if digest != sha256[where[name]]:
        return (f"{_shown(name)} was replaced since it was labelled (its content changed); "
                "delete the line to label it again")
    if where[name] in labels:
        return f"duplicate file {_shown(name)}"
    return None


def _class_names(session: dict) -> tuple[str, ...]:
    names = session.get("class_names", ())
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        names = ()
    return tuple(names)


def _write_labels(session_dir: Path, labels: dict[int, int], session: dict) -> None:
    buf = io.StringIO()
    if _keyed(session):
        files, sha256 = _files(session)
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(FILE_HEADER)
        writer.writerows((files[i], y, sha256[i]) for i, y in labels.items())
    else:
        buf.write("pool_index,label\n")
        buf.writelines(f"{i},{y}\n" for i, y in labels.items())
    write_text_atomic(session_dir / LABELS, buf.getvalue())


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
        diffs = config_difference(_session(session_dir)["experiment"], new)
        if diffs:
            shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more"
                                             if len(diffs) > 3 else "")
            raise ConfigError(f"{session_dir} is a session with another configuration "
                              f"({shown}); use the same options, or another session dir")
        session = _session(session_dir)
        if folder is not None and _keyed(session):
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
                _write_labels(session_dir, given, session)
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
    labels = _labels(session_dir, session)
    pending = _pending(session_dir, session)
    old_files, old_sha = _files(session)
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
        _write_labels(session_dir, new, session)
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
    recorded = _session(session_dir).get("files_sha256")
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


def _session(session_dir: Path) -> dict:
    """The checked contents of session.json."""
    path = session_dir / SESSION
    if not path.exists():
        raise LabelError(f"{session_dir} is not a labelling session (no {SESSION}); "
                         "start one with query")
    fix = "restore it, or start a new session dir with query"
    session = read_json(path, fix, LabelError)
    if not (isinstance(session, dict) and isinstance(session.get("experiment"), dict)
            and _is_count(session.get("num_pool"))
            and _is_count(session.get("num_classes"))):
        raise LabelError(f"{path} is not a session file (it needs 'experiment', "
                         f"'num_pool' and 'num_classes'); {fix}")
    return session


def _pending(session_dir: Path, session: dict) -> list[int] | None:
    """The pool indices of the pending proposal, or None when there is none (a keyed
    session's: of the files it names)."""
    record = pending_record(session_dir, session["num_pool"])
    if record is None:
        return None
    if _keyed(session) and isinstance(record.get("files"), list):
        files, _ = _files(session)
        where = {name: i for i, name in enumerate(files)}
        if not all(isinstance(f, str) and f in where for f in record["files"]):
            raise LabelError(f"{session_dir / PENDING} names files the session's folder "
                             "does not hold; delete it and run query again")
        return [where[f] for f in record["files"]]
    return record["pool_index"]


def pending_record(session_dir: str | os.PathLike, num_pool: int) -> dict | None:
    """The checked pending.json (round, pool_index, ...), or None when there is none."""
    path = Path(session_dir) / PENDING
    if not path.exists():
        return None
    fix = "delete it and run query again"
    pending = read_json(path, fix, LabelError)
    index = pending.get("pool_index") if isinstance(pending, dict) else None
    if not (isinstance(index, list) and index and _is_count(pending.get("round"))
            and all(_is_int(i) and 0 <= i < num_pool for i in index)):
        raise LabelError(f"{path} is not a proposal (it needs 'round' and 'pool_index', "
                         f"a list of pool indices 0..{num_pool - 1}); {fix}")
    return pending


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)     # JSON true is no index


def _is_count(x) -> bool:
    return _is_int(x) and x >= 1


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
    _pending(session_dir, _session(session_dir))        # a corrupt one is refused here
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


def parse_label_csv(lines: str | Iterable[str], num_classes: int, num_pool: int,
                    known: Mapping[int, int] | None = None, *, source: str = "label file",
                    session_file: bool = False, class_names: tuple[str, ...] = ()
                    ) -> dict[int, int]:
    """Validated pool_index -> label rows of ``index,label`` CSV lines.

    The one check of every label, from a labeller's file or the session's labels.csv.
    A first row ``index,label`` or ``pool_index,label`` is a header; any other row is
    data: a pool index and a class, each plain ASCII decimal. The lines are read one at
    a time and the first ``MAX_PROBLEMS`` problems are listed with their line numbers
    (1-based, counting header and blank lines), so a huge bad file costs little.

    Args:
        lines: the text, or an iterable of its lines (an open file).
        known: labels recorded before; relabelling one of them is a problem.
        source: how the message names the file.
        session_file: the message asks to correct or delete lines of labels.csv rather
            than to record the file again.
        class_names: a label may also be one of these names (an image folder's classes),
            meaning its position.

    Raises:
        LabelError: listing the problems; nothing has been recorded.
    """
    known = {} if known is None else known
    if isinstance(lines, str):
        lines = io.StringIO(lines, newline="")
    lines = _BoundedLines(lines)
    reader = csv.reader(lines)
    new: dict[int, int] = {}
    first_line: dict[int, int] = {}
    problems: list[str] = []
    num_problems = 0
    header_allowed = True
    while True:
        line = reader.line_num + 1          # a row that spans lines starts here
        try:
            row = next(reader)
            if line in lines.overlong:
                raise csv.Error(f"a line of more than {MAX_LINE} characters")
        except StopIteration:
            break
        except csv.Error as e:              # e.g. a field over csv.field_size_limit()
            problem = f"not a CSV row ({e})"
        else:
            # The BOM: parse_label_csv may get text that did not come through utf-8-sig.
            # Three cells tell a bad row; a line of a million commas is not copied.
            cells = [cell.strip().lstrip("\ufeff").strip() for cell in row[:3]]
            if not any(cells):
                continue                    # a blank line
            is_first, header_allowed = header_allowed, False
            if is_first and tuple(cells) in HEADERS:
                continue
            if len(cells) > 1 and cells[1] in class_names:
                cells[1] = str(class_names.index(cells[1]))
            problem = _row_problem(cells, len(row), num_classes, num_pool, known, new,
                                   first_line, class_names)
            if problem is None:
                new[int(cells[0])] = int(cells[1])
                first_line[int(cells[0])] = line
                continue
            if is_first and not all(_DECIMAL.fullmatch(cell) for cell in cells):
                problem += "; a header must be exactly 'index,label' or 'pool_index,label'"
        num_problems += 1
        if len(problems) < MAX_PROBLEMS:
            problems.append(f"line {line}: {problem}")
    if problems:
        s = "s" if num_problems > 1 else ""
        these = "these lines" if num_problems > 1 else "that line"
        head = (f"{source}: {num_problems} bad line{s}; correct or delete {these}:"
                if session_file else
                f"{source} rejected, nothing recorded ({num_problems} problem{s}); "
                f"correct {these} and record the file again:")
        more = num_problems - len(problems)
        raise LabelError("\n  ".join([head, *problems]
                                      + ([f"... and {more} more problems"] if more else [])))
    return new


class _BoundedLines:
    """The lines of a text file (or any iterable of lines), none longer than MAX_LINE:
    the rest of a longer one is read in pieces and dropped, and the line (numbered in
    ``overlong``, and given to csv as blank) is a problem line."""

    def __init__(self, lines: Iterable[str]):
        self._readline = getattr(lines, "readline", None)
        self._lines = iter(lines) if self._readline is None else None
        self.overlong: set[int] = set()
        self._count = 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self._readline is None:
            line = next(self._lines)
        else:
            line = self._readline(MAX_LINE + 1)
            if not line:
                raise StopIteration
        self._count += 1
        if len(line) > MAX_LINE:
            while self._readline is not None and line and not line.endswith(("\n", "\r")):
                line = self._readline(MAX_LINE)
            self.overlong.add(self._count)
            return "\n"
        return line


def _row_problem(cells: list[str], num_fields: int, num_classes: int, num_pool: int,
                 known: Mapping[int, int], new: dict[int, int], first_line: dict[int, int],
                 class_names: tuple[str, ...] = ()) -> str | None:
    """What is wrong with a row of ``num_fields`` fields, the first ones ``cells``
    (stripped), or None."""
    if num_fields != 2:
        return f"expected 'index,label', got {num_fields} fields {_shown(','.join(cells))}"
    for name, cell in zip(("index", "label"), cells, strict=True):
        if len(cell) > MAX_FIELD:
            return f"{name} field of {len(cell)} characters, expected a number"
        if not _DECIMAL.fullmatch(cell):
            if name == "label" and class_names:
                return (f"label {_shown(cell)} is neither a class ({', '.join(class_names)})"
                        f" nor a class number 0..{num_classes - 1}")
            return f"{name} {_shown(cell)} is not a plain decimal number (digits 0-9)"
    i, y = int(cells[0]), int(cells[1])
    if not 0 <= i < num_pool:
        return (f"unknown index {i} (pool indices are 0..{num_pool - 1}, as in "
                "query_<round>.csv)")
    if not 0 <= y < num_classes:
        names = f": {', '.join(class_names)}" if class_names else ""
        return f"label {y} out of range (0..{num_classes - 1}{names})"
    if i in new:
        return f"duplicate index {i} (line {first_line[i]} labels it {new[i]})"
    if i in known:
        return f"index {i} is already labelled {known[i]}"
    return None


def _shown(text: str) -> str:
    return repr(text if len(text) <= 24 else text[:24] + "...")


def read_label_csv(path: str | os.PathLike, num_classes: int, num_pool: int,
                   known: Mapping[int, int] | None = None, *, session_file: bool = False,
                   class_names: tuple[str, ...] = ()) -> dict[int, int]:
    """``parse_label_csv`` of a file, streamed; an unreadable file is a one-line
    ``LabelError`` that names it."""
    path = Path(path)
    fix = ("correct or delete that line" if session_file
           else "save it as UTF-8 text and record it again")
    try:
        # A FIFO or device (/dev/zero) is refused unread; a huge file is read line by
        # line, each at most MAX_LINE characters (parse_label_csv).
        raw = open_regular(path, "give the CSV file of 'index,label' lines", error=LabelError)
        # utf-8-sig drops a BOM (spreadsheets write one); newline="" as csv asks.
        with io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline="") as f:
            return parse_label_csv(f, num_classes, num_pool, known, source=str(path),
                                   session_file=session_file, class_names=class_names)
    except UnicodeDecodeError:
        raise LabelError(f"{path} is not UTF-8 text at line {_first_non_utf8_line(path)}"
                         f"; {fix}") from None
    except IsADirectoryError:
        raise LabelError(f"{path} is a directory; give the CSV file of 'index,label' "
                         "lines") from None
    except FileNotFoundError:
        raise LabelError(f"{path} does not exist; give the CSV file of 'index,label' "
                         "lines") from None
    except OSError as e:
        raise LabelError(f"{path} cannot be read ({e.strerror}); check the path and its "
                         "permissions") from None


def _first_non_utf8_line(path: Path) -> int:
    # The text layer decodes in chunks, so its error does not say which line; UTF-8
    # never has a newline byte inside a character, so lines decode one by one.
    line = 0
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return line
    return line


def record_labels(session_dir: str | os.PathLike, csv_path: str | os.PathLike
                  ) -> dict[int, int]:
    """Add the labels of ``csv_path`` to the session; returns the new ones.

    All rows are checked before anything is written; the update is atomic. Any pool
    point may be labelled; the pending proposal stays until all its points are.
    """
    return _record(session_dir, csv_path, lambda session, known: read_label_csv(
        csv_path, session["num_classes"], session["num_pool"], known,
        class_names=_class_names(session)))


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
        class_names=_class_names(session)))


def _record(session_dir, source, parse) -> dict[int, int]:
    session_dir = Path(session_dir)
    session = _session(session_dir)
    known = _labels(session_dir, session)
    pending = _pending(session_dir, session)
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
    session = _session(session_dir)
    labels = _labels(session_dir, session)
    last = last_proposal(session_dir)
    batch = [] if last is None else _batch_indices(last, session)
    if pool_index not in labels or pool_index not in batch:
        raise LabelError(f"pool index {pool_index} is not a labelled point of the last "
                         "proposal; only those are undone (edit labels.csv for others)")
    label = labels.pop(pool_index)
    pending = _pending(session_dir, session)
    _write_labels(session_dir, labels, session)
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
    session = _session(session_dir)
    pending = _pending(session_dir, session)
    if pending is None:
        return []
    labels = _labels(session_dir, session)
    (session_dir / PENDING).unlink(missing_ok=True)
    return [i for i in pending if i not in labels]


def last_proposal(session_dir: str | os.PathLike) -> dict | None:
    """The record of the session's last proposal (``proposal_<r>.json``, checked), or
    None before the first (or in a session begun before jaxal wrote them)."""
    session_dir = Path(session_dir)
    rounds = [int(m.group(1)) for p in session_dir.glob("proposal_*.json")
              if (m := re.fullmatch(r"proposal_([0-9]{1,6})\.json", p.name))]
    if not rounds:
        return None
    path = session_dir / f"proposal_{max(rounds)}.json"
    fix = "delete it and run query again"
    record = read_json(path, fix, LabelError)
    if not (isinstance(record, dict) and _is_count(record.get("round"))
            and isinstance(record.get("pool_index"), list)
            and all(_is_int(i) for i in record["pool_index"])):
        raise LabelError(f"{path} is not a proposal record; {fix}")
    return record


def _batch_indices(record: dict, session: dict) -> list[int]:
    """The pool indices of a proposal record now (a keyed session's, by its files)."""
    if _keyed(session) and isinstance(record.get("files"), list):
        files, _ = _files(session)
        where = {name: i for i, name in enumerate(files)}
        return [where[f] for f in record["files"] if f in where]
    return record["pool_index"]


def record_oracle_labels(session_dir: str | os.PathLike, config: ExperimentConfig
                         ) -> dict[int, int]:
    """Simulation: label the pending proposal's unlabelled points with the dataset's
    own labels."""
    if config.dataset == IMAGE_FOLDER:
        raise ConfigError("an image folder has no oracle: nobody knows its labels; label "
                          "the proposal with --csv FILE (index,label rows)")
    split = load_split(config)
    session_dir = open_session(session_dir, config, split)
    session = _session(session_dir)
    known = _labels(session_dir, session)
    pending = _pending(session_dir, session)
    if pending is None:
        raise LabelError(f"{session_dir} has no pending proposal; run query first")
    new = {int(i): int(split.pool_y[i]) for i in pending if i not in known}
    _commit(session_dir, {**known, **new}, pending, session)
    return new


def _commit(session_dir: Path, labels: dict[int, int], pending: list[int] | None,
            session: dict) -> None:
    _write_labels(session_dir, labels, session)
    # Labels for other points do not answer the proposal; query would otherwise number
    # the next round as if it had been.
    if pending is not None and all(i in labels for i in pending):
        (session_dir / PENDING).unlink(missing_ok=True)
