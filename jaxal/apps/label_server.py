"""The labelling page: a local web app over a labelling session (``jaxal.apps.labelling``).

    python -m jaxal.label serve --out runs/mine --images photos --classes cat dog bird

The page shows the pending batch one image at a time with the model's top classes; a
class is given by click or key, undone, or skipped. When the batch is done, "train and
query" runs ``propose`` in a background thread (progress from the training steps) while
the page shows the run's curve and the last round's top and bottom scored images.

Every change goes through the library functions the CLI uses (``record_label_rows``,
``remove_label``, ``drop_pending``, ``propose``), each under the session's lock
(``jaxal.apps.rundir.lock_out_dir``, taken per action, so ``python -m jaxal.label label`` works
on the same session between them), with their validation and atomic writes: a label the
page shows as given is in labels.csv, and a kill loses nothing.

Safe by default: the server binds 127.0.0.1 unless told otherwise; every request but the
page's static code needs the random token of the printed URL (a query parameter, or the
``X-Jaxal-Token`` header the page's script sends); a POST must carry the header (a page
of another origin cannot set it without a CORS preflight, which is never granted) and,
if the browser names one, this origin; the Host header must name this server (no DNS
rebinding). Images are addressed by round and position in the batch, never by a path,
and read only from the session's folder, checked against its recorded content hash.
Request bodies are bounded (``MAX_BODY``).

Needs the ``ui`` extra (Starlette, uvicorn); ``jaxal.cli.label`` says so if missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import secrets
import threading
import time
import traceback
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from jaxal.apps.label_files import (
    LABELS,
    PENDING,
    SESSION,
    LabelError,
    pending_record,
    read_labels,
)
from jaxal.apps.labelling import drop_pending, record_label_rows, remove_label
from jaxal.apps.results import read_json
from jaxal.apps.rundir import lock_out_dir
from jaxal.config import IMAGE_FOLDER
from jaxal.errors import JaxalError
from jaxal.files import read_bytes

MAX_BODY = 4096                 # bytes of a POST body: a label is a few dozen
MAX_SIDE = 640                  # pixels of the longest side of an image shown
TOKEN_HEADER = "x-jaxal-token"
UI_DIR = Path(__file__).with_name("label_ui")
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; "
                               "style-src 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",      # the token never leaves in a Referer
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Training(NamedTuple):
    """What the background worker is doing, for the page's progress bar."""

    state: str = "idle"          # idle | training | scoring | error
    steps_done: int = 0
    steps: int = 0
    message: str = ""
    round: int = 0               # the round being proposed
    since: float = 0.0


def new_token() -> str:
    return secrets.token_urlsafe(24)


class LabelServer:
    """The session behind the page: what it reads (cached by file signature), what it
    changes (through ``jaxal.apps.labelling``, one change at a time, under the session lock),
    and the background worker that trains and proposes."""

    def __init__(self, session_dir: str | os.PathLike, config, token: str,
                 allowed_hosts: tuple[str, ...], pool_images=None):
        self.session_dir = Path(session_dir)
        self.config = config
        self.token = token
        self.allowed_hosts = tuple(allowed_hosts)
        # TFDS or toy sessions: the pool's arrays (an image folder's files are read).
        self.pool_images = pool_images
        self._write = threading.Lock()       # one change at a time in this process
        self._status_lock = threading.Lock()
        self._training = Training()
        self._worker: threading.Thread | None = None
        self._cache: dict[str, tuple[tuple, object]] = {}
        self._images: OrderedDict[tuple, tuple[bytes, str]] = OrderedDict()

    # --- reading, cached by (inode, mtime, size): every write is a rename ------------

    def _cached(self, name: str, read, also: tuple[str, ...] = ()):
        """``read(path)`` of the session file ``name`` (None if absent), read again only
        when it, or a file in ``also`` it depends on, was written since."""
        signature = tuple(self._signature(n) for n in (name, *also))
        hit = self._cache.get(name)
        if hit is not None and hit[0] == signature:
            return hit[1]
        value = None if signature[0] is None else read(self.session_dir / name)
        self._cache[name] = (signature, value)
        return value

    def _signature(self, name: str) -> tuple | None:
        try:
            info = os.stat(self.session_dir / name)
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def session(self) -> dict:
        return self._cached(SESSION, lambda p: read_json(
            p, "restore it, or start a new session dir with query", LabelError))

    def labels(self) -> dict[int, int]:
        # labels.csv and session.json together: a keyed labels.csv names files.
        return self._cached(LABELS, lambda p: read_labels(self.session_dir),
                            also=(SESSION,)) or {}

    def pending(self) -> dict | None:
        return self._cached(PENDING, lambda p: pending_record(
            self.session_dir, self.session()["num_pool"]), also=(SESSION,))

    def proposals(self) -> list[dict]:
        """Every round's proposal record, in round order (the curve)."""
        records = []
        for path in sorted(self.session_dir.glob("proposal_*.json"),
                           key=lambda p: (len(p.name), p.name)):
            record = self._cached(path.name, lambda p: read_json(
                p, "delete it and run query again", LabelError))
            if isinstance(record, dict):
                records.append(record)
        return records

    def training(self) -> Training:
        with self._status_lock:
            return self._training

    def _set_training(self, **changes) -> None:
        with self._status_lock:
            self._training = self._training._replace(**changes)

    def batch(self) -> tuple[int, list[int], dict | None, bool]:
        """(round, pool indices, its proposal record or None, pending) of the batch the
        page shows: the pending one, else the last proposal (done)."""
        session = self.session()
        pending = self.pending()
        records = [r for r in self.proposals() if isinstance(r.get("round"), int)]
        last = max(records, key=lambda r: r["round"]) if records else None
        files = session.get("files")
        if pending is not None:
            record = last if last is not None and last["round"] == pending["round"] else None
            index = pending["pool_index"]
            if isinstance(pending.get("files"), list) and isinstance(files, list):
                where = {name: i for i, name in enumerate(files)}
                index = [where.get(f, -1) for f in pending["files"]]
            return pending["round"], index, record, True
        if last is None:
            return 0, [], None, False
        index = last["pool_index"]
        if isinstance(last.get("files"), list) and isinstance(files, list):
            where = {name: i for i, name in enumerate(files)}
            index = [where.get(f, -1) for f in last["files"]]
        return last["round"], index, last, False

    def state(self) -> dict:
        """What the page shows, as JSON."""
        session = self.session()
        names = session.get("class_names") or [str(y) for y in range(session["num_classes"])]
        labels = self.labels()
        round_, index, record, pending = self.batch()
        files = session.get("files")
        items = []
        for k, i in enumerate(index):
            probs = (record or {}).get("probs")
            scores = (record or {}).get("scores")
            top = []
            if probs is not None:
                p = probs[k]
                order = sorted(range(len(p)), key=lambda y: -(p[y] or 0.0))[:3]
                top = [{"class": y, "name": names[y], "prob": p[y]} for y in order]
            items.append({
                "k": k, "pool_index": i, "label": labels.get(i),
                "name": files[i] if isinstance(files, list) and 0 <= i < len(files)
                else f"pool index {i}",
                "score": None if scores is None else scores[k], "top": top})
        curve = [{"round": r["round"], "labels": r.get("num_labels"),
                  "val_accuracy": r.get("val_accuracy"),
                  "pool_entropy": r.get("pool_entropy"),
                  "label_counts": r.get("label_counts")} for r in self.proposals()]
        extremes = None
        if record is not None and record.get("extremes"):
            e = record["extremes"]
            extremes = {which: [{"k": k, "score": score} for k, score in
                                enumerate(e[f"{which}_scores"])]
                        for which in ("top", "bottom")}
        counts = np.bincount(np.asarray(list(labels.values()), np.int64),
                             minlength=len(names)).tolist()
        training = self.training()
        return {
            "session": self.session_dir.name, "classes": names, "round": round_,
            "pending": pending, "items": items, "num_labels": len(labels),
            "label_counts": counts, "num_pool": session["num_pool"],
            "val_accuracy": None if record is None else record.get("val_accuracy"),
            "curve": curve, "extremes": extremes, "training": training._asdict(),
        }

    # --- changes ---------------------------------------------------------------------

    def _change(self, action):
        """Run ``action`` alone, under the session lock; refused while training."""
        if self.training().state in ("training", "scoring"):
            raise HTTPError(409, "the model is training; wait for the next batch")
        if not self._write.acquire(timeout=5):
            raise HTTPError(409, "another change is under way; try again")
        try:
            with lock_out_dir(self.session_dir):
                return action()
        except LabelError as e:
            raise HTTPError(400, str(e)) from None
        except JaxalError as e:     # the lock is held by a CLI command, say
            raise HTTPError(409, str(e)) from None
        finally:
            self._write.release()

    def _check_batch(self, round_: int, pool_index: int, need_pending: bool) -> None:
        current, index, _, pending = self.batch()
        if round_ != current or (need_pending and not pending):
            raise HTTPError(409, f"batch of round {round_} is no longer the current one "
                                 f"(round {current}{'' if pending else ', done'}); reload")
        if pool_index not in index:
            raise HTTPError(400, f"pool index {pool_index} is not in the batch of round "
                                 f"{round_}")

    def label(self, round_: int, pool_index: int, label: str) -> dict:
        def action():
            self._check_batch(round_, pool_index, need_pending=True)
            return record_label_rows(self.session_dir, [(pool_index, label)],
                                     source="the page's label")
        new = self._change(action)
        return {"recorded": {str(i): y for i, y in new.items()}}

    def undo(self, round_: int, pool_index: int) -> dict:
        def action():
            self._check_batch(round_, pool_index, need_pending=False)
            return remove_label(self.session_dir, pool_index)
        return {"removed": pool_index, "label": self._change(action)}

    def train(self, round_: int) -> dict:
        """Start the worker: close the batch (skipped points stay in the pool), then
        ``propose`` the next."""
        def action():
            current, _, _, _ = self.batch()
            if round_ != current:
                raise HTTPError(409, f"batch of round {round_} is no longer the current "
                                     f"one (round {current}); reload")
            if not self.labels():
                raise HTTPError(400, "no labels yet: label some images of the batch first")
            skipped = drop_pending(self.session_dir)
            self._set_training(state="training", steps_done=0, steps=0, message="",
                               round=current + 1, since=time.time())
            self._worker = threading.Thread(target=self._propose, name="jaxal-propose",
                                            daemon=True)
            self._worker.start()
            return skipped
        return {"started": True, "skipped": self._change(action)}

    def start_first_proposal(self) -> None:
        """A new session: propose its first batch in the background."""
        self._set_training(state="training", round=1, since=time.time())
        self._worker = threading.Thread(target=self._propose, name="jaxal-propose",
                                        daemon=True)
        self._worker.start()

    def _propose(self) -> None:
        from jaxal.apps.labelling import propose
        from jaxal.train import training_progress

        def report(done: int, steps: int) -> None:
            self._set_training(steps_done=done, steps=steps,
                               state="scoring" if done == steps else "training")

        try:
            with self._write, lock_out_dir(self.session_dir), training_progress(report):
                propose(self.session_dir, self.config)
            self._set_training(state="idle", message="")
        except JaxalError as e:
            self._set_training(state="error", message=str(e))
        except Exception:   # a bug: keep its traceback on the terminal
            traceback.print_exc()
            self._set_training(state="error", message="training failed; the terminal "
                                                      "running serve has the traceback")

    # --- images ------------------------------------------------------------------------

    def image(self, round_: int, kind: str, k: int) -> tuple[bytes, str]:
        """The PNG or JPEG of the k-th image of the current batch, or of the last
        round's top or bottom scored points."""
        current, index, record, _ = self.batch()
        if round_ != current:
            raise HTTPError(409, f"round {round_} is not the current one ({current})")
        if kind == "batch":
            points = index
        elif record is not None and record.get("extremes"):
            e = record["extremes"]
            points = e[kind]
            if isinstance(e.get(f"{kind}_files"), list):
                points = self._indices_of(e[f"{kind}_files"])
        else:
            points = []
        if not 0 <= k < len(points) or points[k] < 0:
            raise HTTPError(404, f"no {kind} image {k} in round {round_}")
        return self._pool_image(points[k])

    def _indices_of(self, names: list[str]) -> list[int]:
        files = self.session().get("files") or []
        where = {name: i for i, name in enumerate(files)}
        return [where.get(n, -1) for n in names]

    def _pool_image(self, i: int) -> tuple[bytes, str]:
        session = self.session()
        if self.config.dataset != IMAGE_FOLDER:
            key = ("pool", i)
            if key not in self._images:
                self._remember(key, _array_png(self.pool_images[i]))
            return self._images[key]
        files, sha256 = session.get("files"), session.get("files_sha256")
        if not isinstance(files, list) or not 0 <= i < len(files):
            raise HTTPError(404, f"no image of pool index {i} in this session")
        name = PurePosixPath(files[i])
        # The name comes from session.json: still, never a path out of the folder.
        if name.is_absolute() or ".." in name.parts:
            raise HTTPError(404, f"{name} is not a file of the session's folder")
        key = (str(name), sha256[i])
        if key in self._images:
            self._images.move_to_end(key)
            return self._images[key]
        from jaxal.data.image_folder import MAX_IMAGE_BYTES

        root = Path(self.config.data_dir)
        try:
            data = read_bytes(root / name, "replace or remove it", max_bytes=MAX_IMAGE_BYTES,
                              error=LabelError)
        except FileNotFoundError:
            raise HTTPError(404, f"{root / name} is gone from the folder") from None
        except LabelError as e:
            raise HTTPError(404, str(e)) from None
        if hashlib.sha256(data).hexdigest() != sha256[i]:
            raise HTTPError(409, f"{root / name} was replaced since the session read it; "
                                 "restart serve to read the folder again")
        self._remember(key, _shown_image(data, root / name))
        return self._images[key]

    def _remember(self, key, value) -> None:
        self._images[key] = value
        while len(self._images) > 256:
            self._images.popitem(last=False)


def _shown_image(data: bytes, path: Path) -> tuple[bytes, str]:
    """An image file as shown: at most MAX_SIDE pixels a side, PNG (JPEG for photos)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.draft("RGB", (MAX_SIDE, MAX_SIDE))
                image = image.convert("L" if image.mode in ("1", "L", "I;16") else "RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as e:
        raise HTTPError(404, f"{path} cannot be read as an image ({e})") from None
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    out = io.BytesIO()
    if max(image.size) > 128:
        image.save(out, format="JPEG", quality=90)
        return out.getvalue(), "image/jpeg"
    image.save(out, format="PNG")
    return out.getvalue(), "image/png"


def _array_png(x: np.ndarray) -> tuple[bytes, str]:
    """A pool point of a TFDS (image in [0, 1]) or toy (2-D point) dataset as a PNG."""
    from PIL import Image, ImageDraw

    x = np.asarray(x, np.float32)
    if x.ndim == 3:
        pixels = (np.clip(x, 0, 1) * 255).astype(np.uint8)
        image = Image.fromarray(pixels[..., 0] if x.shape[-1] == 1 else pixels)
        scale = max(1, 256 // max(x.shape[:2]))
        image = image.resize((x.shape[1] * scale, x.shape[0] * scale), Image.NEAREST)
    else:   # a toy point: where it lies in the square [-3, 3]^2
        image = Image.new("RGB", (256, 256), "white")
        draw = ImageDraw.Draw(image)
        draw.line([(128, 0), (128, 255)], fill="#ccc")
        draw.line([(0, 128), (255, 128)], fill="#ccc")
        u, v = (128 + 40 * float(x[0]), 128 - 40 * float(x[1] if len(x) > 1 else 0))
        draw.ellipse([u - 6, v - 6, u + 6, v + 6], fill="#d33")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue(), "image/png"


# --- the web app ---------------------------------------------------------------------


def make_app(server: LabelServer) -> Starlette:
    """The Starlette app of ``server``: the page, its static code, the JSON API and the
    images, each request checked (host, token, origin, body size) before anything runs."""

    def check(request: Request, post: bool = False) -> None:
        host = request.headers.get("host", "")
        if server.allowed_hosts and host not in server.allowed_hosts:
            raise HTTPError(403, "unknown host")
        given = (request.headers.get(TOKEN_HEADER) if post
                 else request.query_params.get("token") or request.headers.get(TOKEN_HEADER))
        if not given or not hmac.compare_digest(given.encode(), server.token.encode()):
            raise HTTPError(403, "no valid token: open the URL serve printed")
        if post:
            origin = request.headers.get("origin")
            if origin is not None and origin != f"http://{host}":
                raise HTTPError(403, f"origin {origin} is not this page's")
            if request.headers.get("sec-fetch-site", "same-origin") not in (
                    "same-origin", "none"):
                raise HTTPError(403, "a request from another site")

    async def body(request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            raise HTTPError(413, f"a request body of at most {MAX_BODY} bytes")
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_BODY:
                raise HTTPError(413, f"a request body of at most {MAX_BODY} bytes")
        try:
            value = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise HTTPError(400, "the body is not JSON") from None
        if not isinstance(value, dict):
            raise HTTPError(400, "the body is not a JSON object")
        return value

    def whole(value, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise HTTPError(400, f"{what} must be a whole number >= 0, got {value!r}"[:200])
        return value

    def endpoint(handler, post: bool = False):
        async def run(request: Request) -> Response:
            try:
                check(request, post)
                response = await handler(request)
            except HTTPError as e:
                response = JSONResponse({"error": str(e)}, status_code=e.status)
            response.headers.update(SECURITY_HEADERS)
            return response
        return run

    async def page(request: Request) -> Response:
        return FileResponse(UI_DIR / "index.html", media_type="text/html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:       # a fixed list: no path from the client
            return JSONResponse({"error": "not found"}, status_code=404)
        response = FileResponse(UI_DIR / name, media_type=STATIC[name])
        response.headers.update(SECURITY_HEADERS)
        return response

    async def state(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(_state_or_error, server))

    async def label(request: Request) -> Response:
        b = await body(request)
        value = b.get("label")
        if isinstance(value, bool) or not isinstance(value, (int, str)) or \
                len(str(value)) > 64:
            raise HTTPError(400, "label must be a class name or number")
        return JSONResponse(await run_in_threadpool(
            server.label, whole(b.get("round"), "round"),
            whole(b.get("pool_index"), "pool_index"), str(value)))

    async def undo(request: Request) -> Response:
        b = await body(request)
        return JSONResponse(await run_in_threadpool(
            server.undo, whole(b.get("round"), "round"),
            whole(b.get("pool_index"), "pool_index")))

    async def train(request: Request) -> Response:
        b = await body(request)
        return JSONResponse(await run_in_threadpool(server.train,
                                                    whole(b.get("round"), "round")))

    async def image(request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in ("batch", "top", "bottom"):
            raise HTTPError(404, "images are of the batch, top or bottom")
        data, media = await run_in_threadpool(
            server.image, request.path_params["round"], kind, request.path_params["k"])
        return Response(data, media_type=media)

    routes = [
        Route("/", endpoint(page)),
        Route("/static/{name}", static),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/api/state", endpoint(state)),
        Route("/api/label", endpoint(label, post=True), methods=["POST"]),
        Route("/api/undo", endpoint(undo, post=True), methods=["POST"]),
        Route("/api/train", endpoint(train, post=True), methods=["POST"]),
        Route("/image/{round:int}/{kind}/{k:int}", endpoint(image)),
    ]
    return Starlette(routes=routes)


def _state_or_error(server: LabelServer) -> dict:
    try:
        return server.state()
    except JaxalError as e:
        raise HTTPError(500, str(e)) from None


def loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def allowed_hosts(host: str, port: int) -> tuple[str, ...]:
    """The Host headers a browser sends to this server (nothing else is answered)."""
    if host in ("0.0.0.0", "::"):   # every interface: any name; the token guards
        return ()
    names = {"127.0.0.1", "localhost", "[::1]"} if loopback(host) else {host}
    if ":" in host and not host.startswith("["):
        names.add(f"[{host}]")
    return tuple(sorted(f"{name}:{port}" for name in names))


def url_text(url: str, host: str, exposed: bool) -> str:
    """What ``serve`` prints: the URL, and what a host other than this machine exposes."""
    text = (f"label in your browser: {url}\n(Ctrl-C stops the server; every label is "
            "saved as you give it)")
    if exposed:
        text += (f"\nlistening on {host}, not only this machine: whoever can reach it and "
                 "has this URL (its token) can see this session's images and label them")
    return text


def run_server(session_dir, config, host: str, port: int, announce,
               explicit_host: bool = False) -> None:
    """Listen on ``host:port`` (0: a free port; refused at once if it cannot), open the
    session (a folder session reads its folder again: new images join the pool), then
    serve its page until Ctrl-C; a session with no proposal yet proposes its first batch
    in the background. ``announce(url, exposed)`` prints the URL."""
    from jaxal.apps.labelling import sync_folder

    sock = listen(host, port)
    try:
        with lock_out_dir(session_dir):
            split = sync_folder(session_dir, config)
        port = sock.getsockname()[1]
        server = LabelServer(session_dir, config, new_token(), allowed_hosts(host, port),
                             pool_images=None if config.dataset == IMAGE_FOLDER
                             else split.pool_x)
        if not any(Path(session_dir).glob("proposal_*.json")) and \
                not (Path(session_dir) / PENDING).exists():
            server.start_first_proposal()
        shown = f"[{host}]" if ":" in host else host
        announce(f"http://{shown}:{port}/?token={server.token}",
                 explicit_host and not loopback(host))
        import uvicorn

        config = uvicorn.Config(make_app(server), log_level="warning", access_log=False,
                                limit_concurrency=64, timeout_keep_alive=5)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def listen(host: str, port: int):
    """A socket listening on ``host:port``; a one-line JaxalError if it cannot."""
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise JaxalError(f"cannot listen on {host} ({e.strerror}); give --host an "
                         "address of this machine") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        sock.close()
        reason = getattr(e, "strerror", None) or str(e)
        raise JaxalError(f"cannot listen on {host}:{port} ({reason}); give --host an "
                         "address of this machine and a free --port (0: any)") from None
    sock.listen(64)
    return sock


@contextlib.contextmanager
def served_in_thread(session_dir, config, token: str, pool_images=None
                     ) -> Iterator[tuple[str, LabelServer]]:
    """The page served on a free port of 127.0.0.1 by uvicorn in a daemon thread for the
    ``with`` block: (base URL, server). For tests and benchmarks."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = LabelServer(session_dir, config, token, allowed_hosts("127.0.0.1", port),
                         pool_images=pool_images)
    uv = uvicorn.Server(uvicorn.Config(make_app(server), log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not uv.started and thread.is_alive():
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        sock.close()
