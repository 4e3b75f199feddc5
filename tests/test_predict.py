"""``xpcnn predict`` and ``xpcnn.images``: the user's own pictures, prepared like MNIST.

MNIST test images of the bundled sample are written as PNG/JPEG files (as they are,
inverted, enlarged, coloured on paper); the command's answers must agree with the
network's prediction on the raw array.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from xpcnn.cli import main
from xpcnn.data import load_dataset
from xpcnn.images import load_image, prepare
from xpcnn.models import SimpleConvNet
from xpcnn.train import Trainer

N_IMAGES = 12


@pytest.fixture(scope="module")
def sample():
    d = load_dataset("mnist-sample")
    return d.x_test[:N_IMAGES], d.t_test[:N_IMAGES]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small SimpleConvNet trained for one epoch on 2,000 sample images (a few seconds)."""
    d = load_dataset("mnist-sample")
    net = SimpleConvNet(
        conv_param={"filter_num": 8, "filter_size": 5, "pad": 0, "stride": 1},
        hidden_size=32,
        weight_init_std="he",
        seed=0,
    )
    x, t = d.x_train[:2000], d.t_train[:2000]
    trainer = Trainer(
        net, x, t, x[:200], t[:200], epochs=1, optimizer_param={"lr": 0.01}, verbose=False
    )
    trainer.train()
    path = tmp_path_factory.mktemp("predict") / "checkpoint.npz"
    trainer.save_checkpoint(path, extra={"run": {"dataset": "mnist-sample"}})
    return path, net


def _softmax(s: np.ndarray) -> np.ndarray:
    z = np.exp(s - s.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _write_variants(x: np.ndarray, folder, i: int) -> dict[str, str]:
    """One MNIST digit (28x28 uint8, white on black) as four files."""
    paths = {k: str(folder / f"{i}-{k}") for k in ("plain.png", "inverted.png", "big.png")}
    Image.fromarray(x).save(paths["plain.png"])
    Image.fromarray(255 - x).save(paths["inverted.png"])  # dark on light
    Image.fromarray(x).resize((112, 112), Image.Resampling.BICUBIC).save(paths["big.png"])
    a = x[..., None] / 255.0  # blue ink on cream paper, as a JPEG of another size
    rgb = np.array([250, 240, 200.0]) * (1 - a) + np.array([20, 20, 140.0]) * a
    paths["colour.jpg"] = str(folder / f"{i}-colour.jpg")
    Image.fromarray(np.round(rgb).astype(np.uint8)).resize((60, 60)).save(paths["colour.jpg"])
    return paths


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_an_mnist_digit_saved_as_png_reads_back_as_itself(sample, tmp_path):
    xs, _ = sample
    for i, x in enumerate(xs):
        paths = _write_variants(x[0], tmp_path, i)
        for name in ("plain.png", "inverted.png"):
            got = load_image(paths[name], (1, 28, 28))
            assert got.dtype == np.uint8 and got.shape == (1, 28, 28)
            # MNIST is already fitted in 20x20 and centred by mass: at most a one-pixel shift.
            assert np.abs(got.astype(int) - x.astype(int)).mean() < 2.0, (i, name)


def test_predict_agrees_with_the_network_on_the_raw_arrays(checkpoint, sample, tmp_path, capsys):
    path, net = checkpoint
    xs, _ = sample
    want = _softmax(net.predict(xs))
    files = [_write_variants(x[0], tmp_path, i) for i, x in enumerate(xs)]
    argv = [f[k] for f in files for k in sorted(f)]
    status, out, err = run(capsys, "predict", path, *argv, "--json")
    assert status == 0 and err == ""
    results = {r["path"]: r for r in json.loads(out)}
    assert list(results) == argv  # every file, in order
    # The printed probability is the softmax of the prepared image's scores, computed
    # in the batch the command computes (another batch size may round differently).
    prepared = _softmax(net.predict(np.stack([load_image(p, net.input_dim) for p in argv])))
    for i, f in enumerate(files):
        for kind, p in f.items():
            top = results[p]["top"]
            assert top[0]["label"] == int(want[i].argmax()), (i, kind)
            assert top[0]["class"] == str(top[0]["label"])
            assert top[0]["p"] == pytest.approx(prepared[argv.index(p)].max(), rel=1e-6)


def test_top_k_lines(checkpoint, sample, tmp_path, capsys):
    path, net = checkpoint
    xs, _ = sample
    files = [_write_variants(x[0], tmp_path, i)["plain.png"] for i, x in enumerate(xs[:3])]
    status, out, _ = run(capsys, "predict", path, *files, "--top", "3")
    lines = out.splitlines()
    assert status == 0 and len(lines) == 3
    probs = _softmax(net.predict(xs[:3]))
    for f, line, p in zip(files, lines, probs, strict=True):
        m = re.fullmatch(
            rf"{re.escape(f)}: (\d) \(p=(\d\.\d\d)\), (\d) \(p=(\d\.\d\d)\), (\d) \(p=(\d\.\d\d)\)",
            line,
        )
        assert m, line
        labels = [int(m.group(k)) for k in (1, 3, 5)]
        assert labels == list(np.argsort(-p, kind="stable")[:3])
        assert [float(m.group(k)) for k in (2, 4, 6)] == [round(float(p[k]), 2) for k in labels]


def test_bad_files_are_reported_one_line_each_and_the_others_classified(
    checkpoint, sample, tmp_path, capsys
):
    path, net = checkpoint
    xs, _ = sample
    good = _write_variants(xs[0][0], tmp_path, 0)["plain.png"]
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    blank = tmp_path / "blank.png"
    Image.new("L", (40, 30), 255).save(blank)
    missing = tmp_path / "missing.png"
    status, out, err = run(capsys, "predict", path, junk, good, missing, blank)
    assert status != 0
    label = int(net.predict(xs[:1]).argmax())
    assert re.fullmatch(rf"{re.escape(good)}: {label} \(p=\d\.\d\d\)\n", out), out
    lines = err.splitlines()
    assert len(lines) == 3
    assert (
        lines[0]
        == f"xpcnn predict: error: {junk}: not an image file Pillow can read (PNG, JPEG, ...)"
    )
    assert lines[1] == f"xpcnn predict: error: {missing}: No such file or directory"
    assert lines[2].startswith(f"xpcnn predict: error: {blank}: the image is blank")


def _drawn(shape="0", size=(300, 200), ink=(0, 0, 0), paper=(255, 255, 255), mode="RGB"):
    """A thick '0' (balanced) or '7' (mass in its top bar) drawn off-centre, dark on light."""
    img = Image.new(mode, size, paper)
    d = ImageDraw.Draw(img)
    if shape == "0":
        d.ellipse([(40, 30), (120, 170)], outline=ink, width=14)
    else:  # a heavy bar: centring its mass would push the foot out of the field
        d.rectangle([(30, 20), (130, 60)], fill=ink)
        d.line([(125, 60), (70, 180)], fill=ink, width=14)
    return img


def _centre_of_mass(a: np.ndarray) -> tuple[float, float]:
    iy, ix = np.indices(a.shape)
    return float((a * iy).sum() / a.sum()), float((a * ix).sum() / a.sum())


def _box(a: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(a.any(axis=1)), np.flatnonzero(a.any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


@pytest.mark.parametrize(
    "img",
    [
        _drawn(),
        _drawn(mode="L", ink=40, paper=230),
        _drawn(ink=(200, 30, 30), paper=(240, 240, 255)),
        _drawn(mode="RGBA", ink=(0, 0, 0, 255), paper=(0, 0, 0, 0)),  # transparent paper
    ],
    ids=["black-on-white", "grey-on-grey", "red-on-blue", "transparent"],
)
def test_a_drawing_is_prepared_like_mnist(img):
    a = prepare(img, (1, 28, 28))[0].astype(float)
    assert a.max() == 255 and a[0].max() == a[-1].max() == a[:, 0].max() == a[:, -1].max() == 0
    assert max(_box(a)) in (20, 21)  # fitted in 20x20 (Lanczos may bleed one pixel)
    cy, cx = _centre_of_mass(a)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5


def test_a_lopsided_digit_stays_whole_in_the_field():
    a = prepare(_drawn("7"), (1, 28, 28))[0]
    assert max(_box(a)) in (20, 21)  # nothing cut off at the border
    assert a[-1].max() > 0  # pushed down toward the centre as far as the field allows
    cy, _ = _centre_of_mass(a.astype(float))
    assert 12 < cy < 14


def test_other_styles_and_colour_networks():
    img = _drawn()
    fashion = prepare(img, (1, 28, 28), style="fashion")[0]
    assert max(_box(fashion)) >= 27  # the object fills the field
    whole = prepare(img, (1, 16, 24), style="resize")
    assert whole.shape == (1, 16, 24) and whole[0, 0, 0] == 0  # resized, inverted
    colour = prepare(img, (3, 32, 32))
    assert colour.shape == (3, 32, 32) and colour[:, 0, 0].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="unknown style"):
        prepare(img, (1, 28, 28), style="nope")
