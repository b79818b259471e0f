"""A generated image folder and the config of a labelling session on it, shared by the
labelling page's and Label Studio's tests."""

import numpy as np
from PIL import Image

from jaxal.cli.label import _config, parser

COLOURS = {"cat": (220, 40, 40), "dog": (40, 40, 220)}


def make_photos(root, n=12, size=(12, 10)):
    """``n`` unlabelled PNGs, alternately red (cat) and blue (dog)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        colour = COLOURS["cat" if i % 2 == 0 else "dog"]
        pixels = np.clip(np.asarray(colour) + rng.integers(-30, 31, (size[1], size[0], 3)),
                         0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"img_{i:02d}.png")
    return root


def folder_config(photos, session, *extra):
    return _config(parser().parse_args([
        "serve", "--out", str(session), "--images", str(photos), "--image-shape", "8", "8",
        "3", "--classes", "cat", "dog", "--query-size", "3", "--steps", "4",
        "--batch-size", "4", *extra]))
