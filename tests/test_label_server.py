"""The labelling page over HTTP (Starlette's TestClient): every endpoint refuses a request
without the token, from another host or origin, with a path in a parameter, or with an
oversized body; labels, undo and "train and query" go through jaxal.apps.labelling (labels.csv
is right the moment the answer says so); a server killed mid-training loses nothing."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
from labelling_session import folder_config, make_photos
from PIL import Image

pytest.importorskip("starlette", reason="the ui extra (pip install -e '.[ui]') is missing")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx (the dev extra)")

with warnings.catch_warnings():   # Starlette >= 1.x would rather have httpx2; both work
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from jaxal.apps.label_files import read_labels
from jaxal.apps.label_server import (
    MAX_BODY,
    LabelServer,
    allowed_hosts,
    make_app,
    url_text,
)
from jaxal.apps.labelling import propose, sync_folder
from jaxal.cli.label import _config, parser
from jaxal.cli.label import main as label_main

TOKEN = "t0ken-for-tests"
@pytest.fixture
def folder_session(tmp_path):
    """A folder session with its random first batch pending (no training)."""
    photos = make_photos(tmp_path / "photos")
    session = tmp_path / "session"
    config = folder_config(photos, session)
    propose(session, config)
    return photos, session, config


def client_of(session, config, pool_images=None):
    server = LabelServer(session, config, TOKEN, ("testserver",), pool_images=pool_images)
    return server, TestClient(make_app(server), base_url="http://testserver")


def post(client, path, body, **headers):
    return client.post(path, content=json.dumps(body),
                       headers={"X-Jaxal-Token": TOKEN, "Content-Type": "application/json",
                                **headers})


def state(client):
    response = client.get(f"/api/state?token={TOKEN}")
    assert response.status_code == 200, response.text
    return response.json()


def label_rows(session):
    with open(session / "labels.csv", newline="") as f:
        return list(csv.reader(f))


@pytest.mark.parametrize("method, path", [
    ("GET", "/"), ("GET", "/api/state"), ("GET", "/image/1/batch/0"),
    ("POST", "/api/label"), ("POST", "/api/undo"), ("POST", "/api/train")])
def test_every_endpoint_needs_the_token(folder_session, method, path):
    _, session, config = folder_session
    _, client = client_of(session, config)
    before = {p.name: p.read_bytes() for p in session.iterdir()}
    body = json.dumps({"round": 1, "pool_index": 0, "label": "cat"})
    for token in (None, "wrong", TOKEN[:-1]):
        query = "" if token is None else f"?token={token}"
        headers = {} if token is None else {"X-Jaxal-Token": token}
        response = client.request(method, path + query, headers=headers,
                                  content=body if method == "POST" else None)
        assert response.status_code == 403, (token, response.text)
        assert "token" in response.json()["error"]
    if method == "POST":      # a POST needs the header: the URL's token is not enough
        response = client.post(f"{path}?token={TOKEN}", content=body)
        assert response.status_code == 403
    else:
        assert client.get(f"{path}?token={TOKEN}").status_code == 200
    assert {p.name: p.read_bytes() for p in session.iterdir()} == before
    # The page's code holds no data: it is served to anyone, from a fixed list.
    assert client.get("/static/app.js").status_code == 200


def test_another_host_origin_or_site_is_refused(folder_session):
    _, session, config = folder_session
    _, client = client_of(session, config)
    pending = state(client)["items"][0]["pool_index"]
    body = {"round": 1, "pool_index": pending, "label": "cat"}
    assert client.get(f"/api/state?token={TOKEN}", headers={"Host": "evil.example"}
                      ).status_code == 403                     # DNS rebinding
    assert post(client, "/api/label", body, Origin="http://evil.example").status_code == 403
    assert post(client, "/api/label", body, **{"Sec-Fetch-Site": "cross-site"}
                ).status_code == 403
    assert not (session / "labels.csv").exists()
    assert post(client, "/api/label", body, Origin="http://testserver").status_code == 200
    assert allowed_hosts("127.0.0.1", 8000) == ("127.0.0.1:8000", "[::1]:8000",
                                                "localhost:8000")
    assert "whoever can reach it" in url_text("http://0.0.0.0:1/?token=x", "0.0.0.0", True)
    assert "whoever" not in url_text("http://127.0.0.1:1/?token=x", "127.0.0.1", False)


def test_label_and_undo_write_labels_csv_through_the_library(folder_session, tmp_path):
    _photos, session, config = folder_session
    _, client = client_of(session, config)
    items = state(client)["items"]
    first, second = items[0], items[1]
    response = post(client, "/api/label", {"round": 1, "pool_index": first["pool_index"],
                                           "label": "dog"})
    assert response.status_code == 200, response.text
    # In labels.csv the moment the answer comes: keyed by file, with its content hash.
    rows = label_rows(session)
    assert rows[0] == ["file", "label", "sha256"] and rows[1][:2] == [first["name"], "1"]
    assert post(client, "/api/label", {"round": 1, "pool_index": second["pool_index"],
                                       "label": 0}).status_code == 200
    assert read_labels(session) == {first["pool_index"]: 1, second["pool_index"]: 0}
    shown = state(client)
    assert [it["label"] for it in shown["items"]] == [1, 0, None]
    assert shown["num_labels"] == 2 and shown["label_counts"] == [1, 1]
    assert post(client, "/api/undo", {"round": 1, "pool_index": first["pool_index"]}
                ).json() == {"removed": first["pool_index"], "label": 1}
    assert read_labels(session) == {second["pool_index"]: 0}
    # The CLI works on the same session while the page serves it (the lock is per action).
    (tmp_path / "a.csv").write_text(f"{first['pool_index']},cat\n")
    label_main(["label", "--out", str(session), "--csv", str(tmp_path / "a.csv")])
    assert [it["label"] for it in state(client)["items"]] == [0, 0, None]
    # Labelling the last point answers the batch; undoing it makes it pending again.
    third = items[2]["pool_index"]
    post(client, "/api/label", {"round": 1, "pool_index": third, "label": "cat"})
    assert not (session / "pending.json").exists() and state(client)["pending"] is False
    post(client, "/api/undo", {"round": 1, "pool_index": third})
    assert json.loads((session / "pending.json").read_text())["round"] == 1
    assert state(client)["pending"] is True


@pytest.mark.parametrize("body, status, message", [
    ({"round": 1, "pool_index": "OUTSIDE", "label": "cat"}, 400, "not in the batch"),
    ({"round": 1, "pool_index": "PENDING", "label": "horse"}, 400,
     "label 'horse' is neither a class (cat, dog) nor a class number 0..1"),
    ({"round": 1, "pool_index": "PENDING", "label": 7}, 400, "label 7 out of range"),
    ({"round": 2, "pool_index": "PENDING", "label": "cat"}, 409, "no longer the current"),
    ({"round": 1, "pool_index": "../../etc/passwd", "label": "cat"}, 400,
     "pool_index must be a whole number"),
    ({"round": 1, "pool_index": "PENDING", "label": "../../etc/passwd"}, 400,
     "is neither a class"),
    ({"round": True, "pool_index": "PENDING", "label": "cat"}, 400, "round must be"),
    ({"round": 1, "pool_index": "PENDING", "label": ["cat"]}, 400, "class name or number"),
])
def test_bad_labels_are_refused_and_change_nothing(folder_session, body, status, message):
    _, session, config = folder_session
    _, client = client_of(session, config)
    batch = [it["pool_index"] for it in state(client)["items"]]
    outside = next(i for i in range(12) if i not in batch)
    body = {**body, "pool_index": {"PENDING": batch[0], "OUTSIDE": outside}.get(
        body["pool_index"], body["pool_index"])}
    before = {p.name: p.read_bytes() for p in session.iterdir()}
    response = post(client, "/api/label", body)
    assert response.status_code == status and message in response.json()["error"]
    assert {p.name: p.read_bytes() for p in session.iterdir()} == before


def test_a_stale_tab_is_told_to_reload(folder_session):
    """Two tabs: one labels the batch's last point and starts a new round; the other's
    label for the old batch is refused, not recorded against the new one."""
    _, session, config = folder_session
    _, client = client_of(session, config)
    batch = [it["pool_index"] for it in state(client)["items"]]
    for i in batch[:2]:
        post(client, "/api/label", {"round": 1, "pool_index": i, "label": "cat"})
    post(client, "/api/label", {"round": 1, "pool_index": batch[2], "label": "dog"})
    stale = post(client, "/api/label", {"round": 1, "pool_index": batch[2], "label": "cat"})
    assert stale.status_code == 409 and "reload" in stale.json()["error"]
    assert read_labels(session)[batch[2]] == 1


def test_paths_never_reach_the_file_system(folder_session):
    _photos, session, config = folder_session
    _, client = client_of(session, config)
    q = f"?token={TOKEN}"
    for path in ["/image/1/batch/..%2F..%2Fsession.json", "/image/1/batch/-1",
                 "/image/1/..%2Fphotos/0", "/image/1/batch/99", "/static/..%2Flabelling.py",
                 "/static/label_server.py", "/static/%2e%2e%2f__init__.py",
                 "/image/1/batch/0/../../../etc/passwd"]:
        assert client.get(path + q).status_code in (404, 405), path
    response = client.get(f"/image/1/batch/0{q}&file=../session/session.json")
    assert response.status_code == 200 and response.content[:4] == b"\x89PNG"
    # A session.json edited to name a file outside the folder is not served.
    record = json.loads((session / "session.json").read_text())
    pending = json.loads((session / "pending.json").read_text())
    record["files"][pending["pool_index"][0]] = "../session/labels.csv"
    (session / "session.json").write_text(json.dumps(record))
    (session / "pending.json").write_text(json.dumps(
        {"round": 1, "pool_index": pending["pool_index"]}))
    _, client = client_of(session, config)
    assert client.get(f"/image/1/batch/0{q}").status_code == 404


def test_a_replaced_image_is_reported_not_shown(folder_session):
    photos, session, config = folder_session
    _, client = client_of(session, config)
    name = state(client)["items"][0]["name"]
    Image.new("RGB", (12, 10), "green").save(photos / name)
    response = client.get(f"/image/1/batch/0?token={TOKEN}")
    assert response.status_code == 409 and "was replaced" in response.json()["error"]


def test_oversized_bodies_are_refused_unread(folder_session):
    _, session, config = folder_session
    _, client = client_of(session, config)
    big = {"round": 1, "pool_index": 0, "label": "x" * (MAX_BODY + 10)}
    response = post(client, "/api/label", big)
    assert response.status_code == 413 and f"at most {MAX_BODY} bytes" in response.text

    def chunks():             # no Content-Length: the body is counted as it streams
        for _ in range(100):
            yield b"x" * 1024
    response = client.post("/api/label", content=chunks(),
                           headers={"X-Jaxal-Token": TOKEN})
    assert response.status_code == 413
    assert not (session / "labels.csv").exists()


def test_serve_without_the_ui_extra_is_one_line(monkeypatch, capsys, tmp_path):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "starlette" else find_spec(name, *a))
    with pytest.raises(SystemExit) as exit_:
        label_main(["serve", "--out", str(tmp_path / "s"), "--dataset", "moons"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == ("error: the labelling page needs starlette: pip install 'jaxal[ui]' "
                   "(in a clone: pip install -e '.[ui]')\n")
    assert not (tmp_path / "s").exists()


MOONS = ["--dataset", "moons", "--pool-size", "60", "--val-size", "30", "--query-size", "4",
         "--steps", "20", "--batch-size", "8", "--acq", "entropy"]


def wait_idle(client, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        shown = state(client)
        if shown["training"]["state"] not in ("training", "scoring"):
            return shown
        time.sleep(0.1)
    raise AssertionError("training did not finish")


@pytest.mark.slow
def test_train_and_query_proposes_the_next_batch_in_the_background(tmp_path):
    """A toy session (the MLP trains in well under a second): label the batch, start
    training, the worker proposes round 2 through propose; the page shows its batch,
    the model's classes, the curve and the round's extremes."""
    session = tmp_path / "s"
    config = _config(parser().parse_args(["serve", "--out", str(session), *MOONS]))
    split = sync_folder(session, config)
    propose(session, config)
    _, client = client_of(session, config, pool_images=split.pool_x)
    items = state(client)["items"]
    assert post(client, "/api/train", {"round": 1}).status_code == 400   # no labels yet
    for it in items[:3]:       # the fourth is skipped: it stays in the pool
        post(client, "/api/label", {"round": 1, "pool_index": it["pool_index"],
                                    "label": int(split.pool_y[it["pool_index"]])})
    response = post(client, "/api/train", {"round": 1})
    assert response.status_code == 200 and response.json()["skipped"] == [
        items[3]["pool_index"]]
    busy = post(client, "/api/label", {"round": 1, "pool_index": items[3]["pool_index"],
                                       "label": 0})
    assert busy.status_code in (409, 200)   # refused while training (or already done)
    shown = wait_idle(client)
    assert shown["training"]["state"] == "idle" and shown["round"] == 2, shown["training"]
    assert shown["training"]["steps_done"] == shown["training"]["steps"] == 20
    pending = json.loads((session / "pending.json").read_text())
    assert pending["round"] == 2 and [it["pool_index"] for it in shown["items"]] == \
        pending["pool_index"]
    assert all(len(it["top"]) == 2 and it["score"] is not None for it in shown["items"])
    assert shown["curve"][-1]["labels"] == 3 and shown["curve"][-1]["val_accuracy"] >= 0
    assert len(shown["extremes"]["top"]) == 5
    assert client.get(f"/image/2/top/0?token={TOKEN}").content[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_server_killed_mid_training_loses_nothing_and_the_batch_resumes(tmp_path):
    session = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def start():
        proc = subprocess.Popen([sys.executable, "-m", "jaxal.label", "serve", "--out",
                                 str(session), *MOONS[:-4], "--steps", "3000", "--acq",
                                 "entropy"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        line = proc.stdout.readline()
        assert line.startswith("label in your browser: http://127.0.0.1:"), \
            line + proc.stderr.read()
        return proc, line.split()[-1]

    import httpx

    proc, url = start()
    base, token = url.split("/?token=")
    headers = {"X-Jaxal-Token": token}
    get = lambda: httpx.get(f"{base}/api/state", headers=headers, timeout=30).json()
    deadline = time.monotonic() + 60
    while (shown := get())["round"] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)           # the first (random) batch is proposed in the background
    batch = [it["pool_index"] for it in shown["items"]]
    for k, i in enumerate(batch):
        httpx.post(f"{base}/api/label", headers=headers, timeout=30,
                   json={"round": 1, "pool_index": i, "label": k % 2})
    httpx.post(f"{base}/api/train", headers=headers, json={"round": 1}, timeout=30)
    while get()["training"]["steps_done"] == 0 and time.monotonic() < deadline + 60:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_labels(session) == {i: k % 2 for k, i in enumerate(batch)}
    proc, url = start()     # the same session: its batch done, ready to train again
    try:
        base, token = url.split("/?token=")
        headers = {"X-Jaxal-Token": token}
        shown = get()
        assert shown["round"] == 1 and shown["pending"] is False
        assert [it["label"] for it in shown["items"]] == [k % 2 for k in range(4)]
        assert shown["training"]["state"] == "idle"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_serve_on_a_port_in_use_is_one_line(tmp_path, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_:
            label_main(["serve", "--out", str(tmp_path / "s"), "--dataset", "moons",
                        "--port", str(port)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port} (Address already in "
                          "use)") and err.count("\n") == 1
    assert not (tmp_path / "s").exists()       # refused before the session was opened
