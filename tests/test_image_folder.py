"""A folder of the user's own images as the pool of real labelling: reading (layout,
classes, resizing, bad files), the split, and query/label sessions on it through the CLI.
All data are PNGs generated in a temporary folder."""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from jaxal.apps.experiment import ExperimentConfig, run_experiment
from jaxal.apps.label_files import read_labels
from jaxal.apps.labelling import sync_folder
from jaxal.cli.label import _config, parser
from jaxal.cli.label import main as label_main
from jaxal.config import IMAGE_FOLDER
from jaxal.data.image_folder import ImageFolderError, folder_split, read_image_folder
from jaxal.errors import ConfigError

RED, BLUE = (220, 30, 30), (30, 30, 220)


def _png(path, colour, size=(24, 20), noise=0, seed=0):
    """A colour field of ``size`` (width, height) with uniform noise, saved as PNG."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.asarray(colour) + rng.integers(-noise, noise + 1,
                                                       (size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


@pytest.fixture
def photos(tmp_path):
    """12 unlabelled images of assorted sizes (6 red, 6 blue), 2 labelled per class."""
    root = tmp_path / "photos"
    for i in range(12):
        _png(root / f"img_{i:02d}.png", RED if i % 2 else BLUE,
             size=(20 + 3 * i, 16 + i), noise=20, seed=i)
    for k in range(2):
        _png(root / "blue" / f"b{k}.png", BLUE, noise=20, seed=100 + k)
        _png(root / "red" / f"r{k}.jpg", RED, noise=20, seed=200 + k)
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0")
    return root


def test_read_lists_resizes_and_labels_by_subfolder(photos):
    folder = read_image_folder(photos, (16, 16, 3))
    assert folder.images.shape == (16, 16, 16, 3) and folder.images.dtype == np.uint8
    # Pool index = place in the sorted relative paths.
    assert folder.files == ("blue/b0.png", "blue/b1.png",
                            *(f"img_{i:02d}.png" for i in range(12)), "red/r0.jpg", "red/r1.jpg")
    assert folder.class_names == ("blue", "red")
    np.testing.assert_array_equal(folder.labels, [0, 0] + [-1] * 12 + [1, 1])
    assert folder.skipped == 2
    # Resizing an image of another size keeps its colour: red stays red.
    red = folder.images[3].reshape(-1, 3).mean(0)        # img_01.png
    assert red[0] > 180 and red[2] < 70
    # Greyscale: one channel, the luminance of the colour.
    grey = read_image_folder(photos, (8, 8, 1)).images
    assert grey.shape == (16, 8, 8, 1)
    assert abs(grey[3].mean() - (0.299 * 220 + 0.587 * 30 + 0.114 * 30)) < 12


def test_declared_classes_set_the_order_and_may_be_unlabelled(photos):
    folder = read_image_folder(photos, (16, 16, 3), ("red", "green", "blue"))
    assert folder.class_names == ("red", "green", "blue")
    np.testing.assert_array_equal(folder.labels, [2, 2] + [-1] * 12 + [0, 0])


def test_split_is_the_whole_folder_standardised_with_no_held_out_labels(photos):
    split = folder_split(read_image_folder(photos, (16, 16, 3)))
    assert split.pool_x.shape == (16, 16, 16, 3) and split.num_classes == 2
    flat = split.pool_x.reshape(-1, 3)
    np.testing.assert_allclose(flat.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(flat.std(0), 1, atol=1e-3)
    assert split.val_x.shape == (0, 16, 16, 3) and split.test_y.shape == (0,)


@pytest.mark.parametrize("case, message", [
    ("garbage", "img_03.png cannot be read as an image"),
    ("truncated", "img_03.png cannot be read as an image"),
    ("no resize", "blue/b0.png is 20x24 (height x width), not the declared 16x16"),
    ("stray folder", "photos/red/ is not one of --classes blue green"),
    ("one class", "gives 1 class(es) (blue); declare them with --classes"),
    ("nested", "photos/red/old/ is a folder inside class folder red/"),
    ("missing", "--images {root}x: no such folder"),
    ("empty", "holds no images"),
    ("twice", "names a class twice"),
])
def test_bad_folders_name_the_file_or_folder(photos, case, message):
    root, classes, resize = photos, (), True
    if case == "garbage":
        (photos / "img_03.png").write_bytes(b"this is no png")
    elif case == "truncated":
        data = (photos / "img_03.png").read_bytes()
        (photos / "img_03.png").write_bytes(data[:len(data) // 2])
    elif case == "no resize":
        resize = False
    elif case == "stray folder":
        classes = ("blue", "green")
    elif case == "one class":
        shutil.rmtree(photos / "red")
    elif case == "nested":
        _png(photos / "red" / "old" / "x.png", RED)
    elif case == "missing":
        root = photos.with_name("photosx")
    elif case == "empty":
        root = photos.with_name("empty")
        (root / "a").mkdir(parents=True)
        (root / "b").mkdir()
    elif case == "twice":
        classes = ("red", "blue", "red")
    with pytest.raises(ImageFolderError) as err:
        read_image_folder(root, (16, 16, 3), classes, resize)
    text = str(err.value)
    assert message.format(root=photos) in text and "\n" not in text


def test_decoded_images_are_cached_by_path_and_content(photos, tmp_path, monkeypatch):
    import jaxal.data.image_folder as image_folder

    cache = tmp_path / "cache"
    cache.mkdir()
    first = read_image_folder(photos, (16, 16, 3), cache_dir=cache)
    image_folder.save_cache(first, cache)
    (saved,) = cache.glob("images-*.npy")
    decode = image_folder._read_image
    monkeypatch.setattr(image_folder, "_read_image", lambda *a: pytest.fail("decoded"))
    again = read_image_folder(photos, (16, 16, 3), cache_dir=cache)
    np.testing.assert_array_equal(again.images, first.images)
    assert again.cache_key == first.cache_key
    # Another shape, or a file rewritten, is another key: decoded afresh.
    monkeypatch.setattr(image_folder, "_read_image", decode)
    _png(photos / "img_04.png", RED, seed=9)
    changed = read_image_folder(photos, (16, 16, 3), cache_dir=cache)
    assert changed.cache_key != first.cache_key
    assert changed.images[6].reshape(-1, 3).mean(0)[0] > 180      # img_04 is red now
    image_folder.save_cache(changed, cache)
    assert [p.name for p in cache.glob("images-*.npy")] == [
        f"images-{changed.cache_key}.npy"] and not saved.exists()
    # A damaged cache is not trusted.
    (cache / f"images-{changed.cache_key}.npy").write_bytes(b"\x93NUMPY garbage")
    np.testing.assert_array_equal(
        read_image_folder(photos, (16, 16, 3), cache_dir=cache).images, changed.images)


def _opts(photos, session, *extra):
    return ["--out", str(session), "--images", str(photos), "--image-shape", "16", "16", "3",
            "--query-size", "4", "--steps", "30", "--batch-size", "8", "--acq", "margin",
            *extra]


@pytest.mark.slow
def test_query_label_session_on_a_folder(photos, tmp_path, capsys):
    """The class subfolders are the first labels; a query proposes unlabelled files and
    names them; labels come back by class name or number; the next query trains on them."""
    session = tmp_path / "session"
    label_main(["query", *_opts(photos, session)])
    out = capsys.readouterr().out
    assert "from 4 labels" in out and "validation accuracy" not in out
    assert "0 blue, 1 red" in out
    assert read_labels(session) == {0: 0, 1: 0, 14: 1, 15: 1}
    with open(session / "query_1.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {"pool_index", "file", "score"}
    assert len(rows) == 4 and all(2 <= int(r["pool_index"]) < 14 for r in rows)
    assert all(r["file"] == f"img_{int(r['pool_index']) - 2:02d}.png" for r in rows)
    assert (session / "query_1.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list(session.glob("images-*.npy"))) == 1        # decoded once per folder
    # Answers: odd images are red (pool index = image number + 2). By name for two, by
    # number for the others.
    answers = [(int(r["pool_index"]), "red" if int(r["pool_index"]) % 2 else "blue")
               for r in rows]
    text = "index,label\n" + "".join(
        f"{i},{name if k < 2 else ('blue', 'red').index(name)}\n"
        for k, (i, name) in enumerate(answers))
    (tmp_path / "answers.csv").write_text(text)
    label_main(["label", "--out", str(session), "--csv", str(tmp_path / "answers.csv")])
    labels = read_labels(session)
    assert {i: labels[i] for i, _ in answers} == {i: i % 2 for i, _ in answers}
    capsys.readouterr()
    label_main(["query", *_opts(photos, session)])
    out = capsys.readouterr().out
    assert "round 2" in out and "from 8 labels" in out
    proposed = json.loads((session / "pending.json").read_text())["pool_index"]
    assert len(proposed) == 4 and not set(proposed) & set(labels)


@pytest.mark.parametrize("case, message", [
    ("changed", "blue/b0.png changed content since session"),
    ("inside", "is inside --images"),
    ("oracle", "an image folder has no oracle"),
    ("val-nll", "an image folder has none; use --prior-precision auto"),
    ("unknown class", "label 'green' is neither a class (blue, red) nor a class number 0..1"),
    ("no --images", "describe an image folder; add --images DIR"),
    ("bad image", "img_05.png cannot be read as an image"),
])
def test_folder_session_errors_are_one_line_with_exit_code_2(photos, tmp_path, capsys, case,
                                                             message):
    session = tmp_path / "s"
    if case in ("changed", "unknown class"):
        label_main(["query", *_opts(photos, session)])
    capsys.readouterr()
    args = ["query", *_opts(photos, session)]
    if case == "changed":
        _png(photos / "blue" / "b0.png", RED, seed=5)     # a labelled image, replaced
    elif case == "inside":
        args = ["query", *_opts(photos, photos / "session")]
    elif case == "oracle":
        args = ["label", *_opts(photos, session), "--oracle"]
    elif case == "val-nll":
        args += ["--posterior", "laplace", "--prior-precision", "val-nll"]
    elif case == "unknown class":
        pending = json.loads((session / "pending.json").read_text())["pool_index"]
        (tmp_path / "a.csv").write_text(f"{pending[0]},green\n")
        args = ["label", "--out", str(session), "--csv", str(tmp_path / "a.csv")]
    elif case == "no --images":
        args = ["query", "--out", str(session), "--dataset", "moons", "--classes", "a", "b"]
    elif case == "bad image":
        (photos / "img_05.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(SystemExit) as exit_:
        label_main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    if case != "unknown class":          # a label file lists its problems on more lines
        assert err.count("\n") == 1


def test_a_simulated_run_on_a_folder_is_refused_before_reading_it(tmp_path):
    config = ExperimentConfig(dataset=IMAGE_FOLDER, data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"python -m jaxal\.label query --images DIR"):
        run_experiment(config)


@pytest.mark.slow
def test_a_folder_grows_between_rounds_and_labels_follow_their_files(photos, tmp_path,
                                                                     capsys):
    """Labels name files (with their sha256): images added between rounds join the pool
    (in a class subfolder: labelled), every label and the pending batch move to their
    files' new pool indices, and a proposed image removed is refused by name."""
    session = tmp_path / "s"
    label_main(["query", *_opts(photos, session, "--steps", "5")])
    pending = json.loads((session / "pending.json").read_text())
    first = pending["files"][0]
    (tmp_path / "a.csv").write_text(f"{pending['pool_index'][0]},red\n")
    label_main(["label", "--out", str(session), "--csv", str(tmp_path / "a.csv")])
    with open(session / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "label", "sha256"] and rows[-1][:2] == [first, "1"]
    assert len(rows[-1][2]) == 64
    # Two new images sort before every old one: all pool indices shift by 2.
    _png(photos / "aaa_new.png", RED, seed=50)
    _png(photos / "blue" / "a_new.png", BLUE, seed=51)
    sync_folder(session, _config(parser().parse_args(
        ["query", *_opts(photos, session, "--steps", "5")])))
    files = json.loads((session / "session.json").read_text())["files"]
    assert len(files) == 18 and files[:2] == ["aaa_new.png", "blue/a_new.png"]
    labels = read_labels(session)
    assert labels[files.index(first)] == 1 and labels[files.index("blue/a_new.png")] == 0
    assert files.index("aaa_new.png") not in labels
    again = json.loads((session / "pending.json").read_text())
    assert again["files"] == pending["files"]
    assert again["pool_index"] == [files.index(f) for f in pending["files"]]
    (photos / pending["files"][1]).unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        label_main(["query", *_opts(photos, session, "--steps", "5")])
    assert (f"{pending['files'][1]} was proposed in session {session} and is gone"
            in capsys.readouterr().err)
