"""How fast the labelling page answers with a large folder (issue 32: a page action under
100 ms with 10,000 images; the first page load under 1 s once the session is warm).

    python benchmarks/label_server.py                      # 10,000 images, 2,000 labelled
    python benchmarks/label_server.py --images 1000 --labelled 100

Generates a folder of small PNGs, opens a session on it (the folder is read once: the
"warm" session), gives it ``--labelled`` labels, proposes a batch of 10 (5 training steps), then
serves the page with uvicorn on 127.0.0.1 and times over HTTP (httpx, one connection):

- first load: GET /, app.js, style.css, /api/state and the first image, in sequence,
  as a browser does on opening the URL (the server's caches cold, the session warm);
- label: POST /api/label of a batch point (written to labels.csv under the session lock)
  followed by the /api/state the page fetches to move on;
- undo: POST /api/undo of that point and /api/state;
- next image: GET of the next batch image (a file read, hashed and resized).

Writes benchmarks/results/label_server.json, and its table (median and 95th
percentile, ms) by ``tables.py`` to label_server.md and docs/cli.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_info

RESULTS = Path(__file__).parent / "results"


def make_folder(root: Path, n: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img_{i:05d}.png", compress_level=1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--labelled", type=int, default=2_000)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)

    import httpx

    from jaxal.apps.label_server import served_in_thread
    from jaxal.apps.labelling import propose, record_label_rows, sync_folder
    from jaxal.cli.label import _config, parser

    tmp = Path(tempfile.mkdtemp())
    photos, session = tmp / "photos", tmp / "session"
    start = time.perf_counter()
    make_folder(photos, args.images)
    made = time.perf_counter() - start
    config = _config(parser().parse_args([
        "serve", "--out", str(session), "--images", str(photos), "--image-shape", "32",
        "32", "3", "--classes", "cat", "dog", "bird", "--query-size", "10", "--steps", "5"]))
    start = time.perf_counter()
    sync_folder(session, config)           # the first read: hashes and decodes the folder
    first_read = time.perf_counter() - start
    start = time.perf_counter()
    rng = np.random.default_rng(1)
    chosen = rng.choice(args.images, args.labelled, replace=False)
    if args.labelled:
        record_label_rows(session, [(int(i), int(i) % 3) for i in chosen], source="bench")
    propose(session, config)        # trains a few steps on the labels, scores the pool
    prepared = time.perf_counter() - start

    context = served_in_thread(session, config, "bench")
    base, server = context.__enter__()
    headers = {"X-Jaxal-Token": "bench"}
    client = httpx.Client(base_url=base, headers=headers, timeout=60)

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return 1000 * (time.perf_counter() - t)

    def ok(response):
        assert response.status_code == 200, response.text
        return response

    def first_load():
        ok(client.get("/?token=bench"))
        ok(client.get("/static/app.js"))
        ok(client.get("/static/style.css"))
        state = ok(client.get("/api/state")).json()
        ok(client.get(f"/image/{state['round']}/batch/0"))

    load_ms = timed(first_load)
    state = ok(client.get("/api/state")).json()
    round_, point = state["round"], state["items"][0]["pool_index"]
    times: dict[str, list[float]] = {"label": [], "undo": [], "next image": []}
    for r in range(args.repeats):
        times["label"].append(timed(lambda: (ok(client.post("/api/label", json={
            "round": round_, "pool_index": point, "label": "cat"})),
            ok(client.get("/api/state")))))
        times["undo"].append(timed(lambda: (ok(client.post("/api/undo", json={
            "round": round_, "pool_index": point})), ok(client.get("/api/state")))))
        k = 1 + r % 9
        server._images.clear()                 # a new image each time: read and resized
        times["next image"].append(timed(lambda k=k: ok(client.get(
            f"/image/{round_}/batch/{k}"))))
    context.__exit__(None, None, None)

    def summary(values):
        return {"median_ms": statistics.median(values),
                "p95_ms": float(np.percentile(values, 95)), "max_ms": max(values)}

    result = {
        "setting": {"images": args.images, "labelled": args.labelled,
                    "repeats": args.repeats, "image_px": [48, 64], "query_size": 10},
        "machine": cpu_info(),
        "seconds": {"make_folder": made, "first_read_of_folder": first_read,
                    "prepare_session": prepared},
        "first_load_ms": load_ms,
        "actions": {name: summary(values) for name, values in times.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "label_server.json").write_text(json.dumps(result, indent=2) + "\n")
    from tables import write_table

    print(write_table("label_server"))


if __name__ == "__main__":
    main()
