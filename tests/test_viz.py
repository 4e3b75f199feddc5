"""Tests for xpcnn.viz: PNG sizes, content depends on input, determinism, helpers."""

from __future__ import annotations

import inspect
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from xpcnn import viz

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG signature + IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_SIGNATURE, "not a PNG"
    length, kind = struct.unpack(">I4s", head[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", head[16:24])


def pixels(path: Path) -> np.ndarray:
    return imread(path)


def assert_png(path: Path, width: int, height: int) -> np.ndarray:
    assert png_size(path) == (width, height)
    px = pixels(path)
    assert px.shape[:2] == (height, width)
    assert px.std() > 0  # not a blank canvas
    return px


def no_temp_files(d: Path) -> bool:
    return not any(p.name.endswith(".tmp") for p in d.iterdir())


class _Saved:
    """``viz``'s plot functions, called with a path: each must return the Figure it
    drew (a notebook shows it) and write it there; the path is returned for the PNG
    checks above."""

    def __getattr__(self, name: str):
        fn = getattr(viz, name)

        def call(*args, **kw) -> Path:
            fig = fn(*args, **kw)
            assert isinstance(fig, Figure), type(fig)
            return Path(inspect.signature(fn).bind(*args, **kw).arguments["path"])

        return call


saved = _Saved()


@pytest.fixture
def W(rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((12, 1, 5, 5)).astype(np.float32)


@pytest.fixture
def image(rng: np.random.Generator) -> np.ndarray:
    img = np.zeros((28, 28), dtype=np.float32)
    img[6:22, 12:16] = 1.0  # a "1"-like stroke
    return img + 0.05 * rng.random((28, 28), dtype=np.float32)


# ---------------------------------------------------------------------------
# plot_filters
# ---------------------------------------------------------------------------


def test_plot_filters_size_and_determinism(tmp_path: Path, W: np.ndarray) -> None:
    p1 = saved.plot_filters(W, tmp_path / "a.png")
    assert p1 == tmp_path / "a.png"
    a = assert_png(p1, 800, 200)  # 8 columns x 2 rows of 100 px
    b = pixels(saved.plot_filters(W.copy(), tmp_path / "b.png"))
    np.testing.assert_array_equal(a, b)
    assert no_temp_files(tmp_path)


def test_plot_filters_depends_on_weights(tmp_path: Path, W: np.ndarray) -> None:
    a = pixels(saved.plot_filters(W, tmp_path / "a.png"))
    W2 = W.copy()
    W2[3, 0, 2, 2] += 5.0  # one weight of one filter
    b = pixels(saved.plot_filters(W2, tmp_path / "b.png"))
    assert not np.array_equal(a, b)
    # per-filter min-max normalisation: an affine change of all weights is invisible
    c = pixels(saved.plot_filters(3.0 * W - 1.0, tmp_path / "c.png"))
    np.testing.assert_array_equal(a, c)


def test_plot_filters_layouts(tmp_path: Path, rng: np.random.Generator) -> None:
    assert_png(saved.plot_filters(rng.standard_normal((5, 1, 3, 3)), tmp_path / "a.png"), 500, 100)
    assert_png(
        saved.plot_filters(rng.standard_normal((30, 1, 5, 5)), tmp_path / "b.png", title="W1"),
        800,
        450,
    )
    assert_png(
        saved.plot_filters(rng.standard_normal((7, 3, 4, 4)), tmp_path / "c.png", ncols=4),
        400,
        200,
    )
    # constant filters do not divide by zero
    assert png_size(saved.plot_filters(np.ones((2, 1, 3, 3)), tmp_path / "d.png")) == (200, 100)


def test_plot_filters_rejects_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FN, C, FH, FW"):
        saved.plot_filters(np.ones((3, 5, 5)), tmp_path / "a.png")
    with pytest.raises(ValueError, match="FN >= 1"):
        saved.plot_filters(np.ones((0, 1, 5, 5)), tmp_path / "a.png")


# ---------------------------------------------------------------------------
# filter responses
# ---------------------------------------------------------------------------


def naive_correlate(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    _, h, wd = x.shape
    _, fh, fw = w.shape
    out = np.zeros((h - fh + 1, wd - fw + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = np.sum(x[:, i : i + fh, j : j + fw] * w)
    return out


@pytest.mark.parametrize("channels", [1, 3])
def test_filter_responses_match_naive(rng: np.random.Generator, channels: int) -> None:
    x = rng.standard_normal((channels, 9, 11))
    w = rng.standard_normal((4, channels, 3, 2))
    got = viz.filter_responses(x, w)
    assert got.shape == (4, 7, 10)
    for k in range(4):
        np.testing.assert_allclose(got[k], naive_correlate(x, w[k]), rtol=1e-12, atol=1e-12)
    sub = viz.filter_responses(x, w, filter_indices=[2, 0])
    np.testing.assert_allclose(sub, got[[2, 0]])


def test_filter_responses_gray_image_uses_first_channel(rng: np.random.Generator) -> None:
    x = rng.standard_normal((8, 8))
    w = rng.standard_normal((2, 3, 3, 3))
    got = viz.filter_responses(x[None, None], w)
    np.testing.assert_allclose(got[1], naive_correlate(x[None], w[1, :1]))
    with pytest.raises(ValueError, match="channels"):
        viz.filter_responses(rng.standard_normal((2, 8, 8)), w)
    with pytest.raises(ValueError, match="smaller"):
        viz.filter_responses(np.ones((2, 2)), w)
    with pytest.raises(ValueError, match="out of range"):
        viz.filter_responses(x, w, filter_indices=[5])


def test_plot_filter_responses(tmp_path: Path, image: np.ndarray, W: np.ndarray) -> None:
    a = assert_png(saved.plot_filter_responses(image, W, tmp_path / "a.png"), 750, 350)
    same = pixels(saved.plot_filter_responses(image.copy(), W, tmp_path / "s.png"))
    np.testing.assert_array_equal(a, same)
    b = pixels(saved.plot_filter_responses(image.T, W, tmp_path / "b.png"))
    assert not np.array_equal(a, b)
    c = assert_png(
        saved.plot_filter_responses(image, W, tmp_path / "c.png", filter_indices=[0, 5]), 450, 350
    )
    assert c.shape != a.shape
    # (1, H, W) input is the same picture as (H, W)
    d = pixels(saved.plot_filter_responses(image[None], W, tmp_path / "d.png"))
    np.testing.assert_array_equal(a, d)


# ---------------------------------------------------------------------------
# feature maps
# ---------------------------------------------------------------------------


def test_plot_feature_maps(tmp_path: Path, image: np.ndarray, rng: np.random.Generator) -> None:
    maps = [
        ("conv1", rng.random((30, 24, 24))),
        ("pool1", rng.random((1, 30, 12, 12))),  # batch of one is accepted
        ("affine1", rng.random(100)),
    ]
    # 16 channel columns + 100 px label margin; (3 layers + input) rows + title
    a = assert_png(saved.plot_feature_maps(image, maps, tmp_path / "a.png"), 1700, 450)
    same = pixels(saved.plot_feature_maps(image, maps, tmp_path / "s.png"))
    np.testing.assert_array_equal(a, same)
    maps2 = [(n, m.copy()) for n, m in maps]
    maps2[0][1][3] = rng.random((24, 24))  # change one shown channel
    b = pixels(saved.plot_feature_maps(image, maps2, tmp_path / "b.png"))
    assert not np.array_equal(a, b)
    assert_png(
        saved.plot_feature_maps(image, maps[:1], tmp_path / "c.png", max_channels=4), 500, 250
    )


def test_plot_feature_maps_labels_say_how_many_maps_are_shown(
    image: np.ndarray, rng: np.random.Generator
) -> None:
    maps = [
        ("conv1", rng.random((30, 24, 24))),
        ("conv2", rng.random((1, 5, 4, 4))),
        ("affine1", rng.random(100)),
    ]
    figures = [
        viz.plot_feature_maps(image, maps),
        viz.plot_feature_maps(image, maps[1:2], max_channels=5),
    ]
    first, second = ([ax.get_ylabel() for ax in f.axes if ax.get_ylabel()] for f in figures)
    assert first == ["input", "conv1\n30x24x24\n16 of 30 maps", "conv2\n5x4x4", "affine1\n100"]
    assert second == ["input", "conv2\n5x4x4"]  # all five shown: nothing to add


def test_plot_feature_maps_rejects_batches(tmp_path: Path, image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="conv1"):
        saved.plot_feature_maps(image, [("conv1", np.ones((2, 3, 4, 4)))], tmp_path / "a.png")


# ---------------------------------------------------------------------------
# history
# ---------------------------------------------------------------------------


def test_plot_history(tmp_path: Path) -> None:
    h = {
        "train_loss": list(2.3 * np.exp(-np.arange(40) / 8)),  # per step
        "train_acc": [0.81, 0.93, 0.96],
        "test_acc": [0.80, 0.91, 0.95],
    }
    a = assert_png(saved.plot_history(h, tmp_path / "a.png"), 1000, 400)
    np.testing.assert_array_equal(a, pixels(saved.plot_history(dict(h), tmp_path / "s.png")))
    b = pixels(saved.plot_history({**h, "test_acc": [0.5, 0.6, 0.7]}, tmp_path / "b.png"))
    assert not np.array_equal(a, b)


@pytest.mark.parametrize(
    "h",
    [
        {"train_loss": [2.0, 1.0, 0.5]},
        {"test_acc": [0.9]},
        {"train_loss": [], "train_acc": [0.5, 0.7], "test_acc": None},
        {"train_loss": np.array([1.0, np.nan, 0.5]), "train_acc": [90.0, 95.0]},  # percent
    ],
)
def test_plot_history_partial(tmp_path: Path, h: dict) -> None:
    assert_png(saved.plot_history(h, tmp_path / "a.png"), 1000, 400)


@pytest.mark.parametrize("h", [{}, {"train_loss": [], "test_acc": []}, {"other": [1.0]}])
def test_plot_history_nothing_to_plot(tmp_path: Path, h: dict) -> None:
    with pytest.raises(ValueError, match="nothing to plot"):
        saved.plot_history(h, tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


# ---------------------------------------------------------------------------
# misclassified
# ---------------------------------------------------------------------------


def test_plot_misclassified_selects_wrong(tmp_path: Path, rng: np.random.Generator) -> None:
    n = 20
    images = rng.random((n, 1, 28, 28))
    t_true = rng.integers(0, 10, n)
    t_pred = t_true.copy()
    wrong = [1, 4, 7, 8, 13, 19]
    t_pred[wrong] = (t_true[wrong] + 1) % 10
    # 6 wrong -> 2 rows of 150 px + 75 px title, 5 columns of 150 px
    a = assert_png(saved.plot_misclassified(images, t_true, t_pred, tmp_path / "a.png"), 750, 375)

    changed_right = images.copy()
    changed_right[0] = rng.random((1, 28, 28))  # correctly classified: not shown
    b = pixels(saved.plot_misclassified(changed_right, t_true, t_pred, tmp_path / "b.png"))
    np.testing.assert_array_equal(a, b)

    changed_wrong = images.copy()
    changed_wrong[4] = rng.random((1, 28, 28))  # misclassified: shown
    c = pixels(saved.plot_misclassified(changed_wrong, t_true, t_pred, tmp_path / "c.png"))
    assert not np.array_equal(a, c)

    # one-hot labels / scores and (N, H, W) images give the same figure
    onehot = np.eye(10)[t_true]
    scores = np.eye(10)[t_pred] * 3.0
    d = pixels(saved.plot_misclassified(images[:, 0], onehot, scores, tmp_path / "d.png"))
    np.testing.assert_array_equal(a, d)


def test_plot_misclassified_limits_and_names(tmp_path: Path, rng: np.random.Generator) -> None:
    images = rng.random((40, 28 * 28))  # flat MNIST rows
    t_true = np.zeros(40, dtype=np.int64)
    t_pred = np.ones(40, dtype=np.int64)
    assert_png(
        saved.plot_misclassified(images, t_true, t_pred, tmp_path / "a.png", max_images=7),
        750,
        375,
    )
    a = pixels(saved.plot_misclassified(images, t_true, t_pred, tmp_path / "n.png"))
    assert a.shape[:2] == (825, 750)  # 25 shown by default
    b = pixels(
        saved.plot_misclassified(
            images, t_true, t_pred, tmp_path / "m.png", class_names=["zero", "one"]
        )
    )
    assert not np.array_equal(a, b)  # titles use the names


def test_plot_misclassified_titles_name_true_and_predicted(
    rng: np.random.Generator,
) -> None:
    images = rng.random((4, 28, 28))
    t_true, t_pred = np.array([7, 1, 3, 0]), np.array([9, 1, 8, 0])
    names = [f"class {k}" for k in range(10)]
    figures = [
        viz.plot_misclassified(images, t_true, t_pred),
        viz.plot_misclassified(images, t_true, t_pred, class_names=names),
    ]
    plain, named = ([ax.get_title() for ax in f.axes if ax.get_title()] for f in figures)
    assert plain == ["true 7\npredicted 9", "true 3\npredicted 8"]
    assert named == ["true class 7\npredicted class 9", "true class 3\npredicted class 8"]


def test_plot_misclassified_none_wrong_and_errors(tmp_path: Path) -> None:
    images = np.random.default_rng(1).random((3, 8, 8))
    t = np.array([0, 1, 2])
    assert png_size(saved.plot_misclassified(images, t, t, tmp_path / "a.png")) == (750, 225)
    with pytest.raises(ValueError, match="same length"):
        saved.plot_misclassified(images, t, t[:2], tmp_path / "b.png")


# ---------------------------------------------------------------------------
# confusion matrix
# ---------------------------------------------------------------------------


def naive_confusion(t: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    m = np.zeros((k, k), dtype=np.int64)
    for a, b in zip(t, y, strict=True):
        m[a, b] += 1
    return m


@pytest.mark.parametrize("k", [2, 10, 37])
def test_confusion_matrix_matches_naive(rng: np.random.Generator, k: int) -> None:
    t = rng.integers(0, k, 500)
    y = np.where(rng.random(500) < 0.6, t, rng.integers(0, k, 500))
    got = viz.confusion_matrix(t, y, k)
    assert got.dtype == np.int64 and got.shape == (k, k)
    np.testing.assert_array_equal(got, naive_confusion(t, y, k))
    assert got.sum() == 500
    # default K from the labels, uint8 labels, one-hot/score inputs
    kk = int(max(t.max(), y.max())) + 1
    np.testing.assert_array_equal(viz.confusion_matrix(t, y), naive_confusion(t, y, kk))
    if k <= 255:
        np.testing.assert_array_equal(
            viz.confusion_matrix(t.astype(np.uint8), y.astype(np.uint8), k), got
        )
    np.testing.assert_array_equal(viz.confusion_matrix(np.eye(k)[t], np.eye(k)[y], k), got)


def test_confusion_matrix_errors() -> None:
    assert viz.confusion_matrix([], [], 3).tolist() == [[0] * 3] * 3
    assert viz.confusion_matrix(np.array([], int), np.array([], int)).shape == (0, 0)
    with pytest.raises(ValueError, match="out of range"):
        viz.confusion_matrix([0, 3], [0, 1], num_classes=3)
    with pytest.raises(ValueError, match=">= 0"):
        viz.confusion_matrix([0, -1], [0, 1])
    with pytest.raises(ValueError, match="length"):
        viz.confusion_matrix([0, 1], [0])
    with pytest.raises(ValueError, match="integer"):
        viz.confusion_matrix([0.5, 1.0], [0, 1])


def test_plot_confusion_matrix(tmp_path: Path, rng: np.random.Generator) -> None:
    t = rng.integers(0, 10, 300)
    y = np.where(rng.random(300) < 0.7, t, rng.integers(0, 10, 300))
    a = assert_png(saved.plot_confusion_matrix(t, y, tmp_path / "a.png"), 650, 600)
    np.testing.assert_array_equal(a, pixels(saved.plot_confusion_matrix(t, y, tmp_path / "s.png")))
    y2 = y.copy()
    y2[:20] = (y2[:20] + 1) % 10
    b = pixels(saved.plot_confusion_matrix(t, y2, tmp_path / "b.png"))
    assert not np.array_equal(a, b)
    names = [f"class {i}" for i in range(12)]  # more classes than labels seen
    assert_png(saved.plot_confusion_matrix(t, y, tmp_path / "c.png", class_names=names), 650, 600)
    assert_png(  # many classes: no annotations, thinned tick labels
        saved.plot_confusion_matrix(
            rng.integers(0, 100, 500), rng.integers(0, 100, 500), tmp_path / "d.png"
        ),
        650,
        600,
    )
    with pytest.raises(ValueError, match="nothing to plot"):
        saved.plot_confusion_matrix([], [], tmp_path / "e.png")


# ---------------------------------------------------------------------------
# writing: directories, threads, no pyplot
# ---------------------------------------------------------------------------


def test_missing_directory(tmp_path: Path, W: np.ndarray) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        saved.plot_filters(W, tmp_path / "nope" / "a.png")
    assert str(tmp_path / "nope") in str(info.value)


def test_overwrite_and_threads(tmp_path: Path, W: np.ndarray, image: np.ndarray) -> None:
    ref_f = pixels(saved.plot_filters(W, tmp_path / "f.png"))
    ref_r = pixels(saved.plot_filter_responses(image, W, tmp_path / "r.png"))
    errors: list[BaseException] = []

    def work(fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(viz.plot_filters, W, tmp_path / "f.png")),
        threading.Thread(
            target=work, args=(viz.plot_filter_responses, image, W, tmp_path / "r.png")
        ),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    np.testing.assert_array_equal(pixels(tmp_path / "f.png"), ref_f)
    np.testing.assert_array_equal(pixels(tmp_path / "r.png"), ref_r)
    assert no_temp_files(tmp_path)


def test_headless_without_pyplot(tmp_path: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from xpcnn import viz\n"
        f"viz.plot_history({{'train_loss': [1.0, 0.5]}}, {str(tmp_path / 'h.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    # the repository first; keep the rest (dependencies installed with --target, say)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert png_size(tmp_path / "h.png") == (1000, 400)


# ---------------------------------------------------------------------------
# figures inline: returned, written only when given a path
# ---------------------------------------------------------------------------


def _every_plot(rng: np.random.Generator, image: np.ndarray, W: np.ndarray) -> dict:
    """Arguments (without the path) of every plot function, and its size in pixels."""
    t = rng.integers(0, 10, 40)
    return {
        "plot_filters": ((W,), (800, 200)),
        "plot_filter_responses": ((image, W), (750, 350)),
        "plot_feature_maps": ((image, [("conv1", rng.random((4, 6, 6)))]), (500, 250)),
        "plot_history": (({"train_loss": [1.0, 0.5], "test_acc": [0.5, 0.7]},), (1000, 400)),
        "plot_misclassified": ((rng.random((40, 8, 8)), t, (t + 1) % 10), (750, 825)),
        "plot_confusion_matrix": ((t, t), (650, 600)),
    }


def test_every_plot_returns_its_figure_and_writes_nothing_without_a_path(
    tmp_path: Path, rng: np.random.Generator, image: np.ndarray, W: np.ndarray, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    plots = _every_plot(rng, image, W)
    assert sorted(plots) == sorted(n for n in viz.__all__ if n.startswith("plot_"))
    for name, (args, (width, height)) in plots.items():
        fig = getattr(viz, name)(*args)
        assert isinstance(fig, Figure), name
        assert tuple(fig.get_size_inches() * fig.dpi) == (width, height), name
        assert fig.canvas is not None  # drawable in a notebook (Agg), no pyplot
    assert list(tmp_path.iterdir()) == []


def test_a_written_png_is_the_returned_figure(
    tmp_path: Path, rng: np.random.Generator, image: np.ndarray, W: np.ndarray
) -> None:
    for name, (args, size) in _every_plot(rng, image, W).items():
        fig = getattr(viz, name)(*args, tmp_path / f"{name}.png")
        again = viz.save_figure(fig, tmp_path / f"{name}-again.png")
        assert png_size(again) == size, name
        np.testing.assert_array_equal(pixels(tmp_path / f"{name}.png"), pixels(again), name)


def test_network_figures_of_a_trained_network() -> None:
    from xpcnn.data import load_dataset
    from xpcnn.models import SimpleConvNet

    data = load_dataset("mnist-sample")
    net = SimpleConvNet(hidden_size=10, seed=0)
    meta = {
        "model": net.config,
        "run": {"seed": 1},  # another seed: "before" differs from this network's filters
        "history": {"train_loss": [2.0, 1.0], "test_acc": [0.5]},
    }
    figures = viz.network_figures(net, data, meta, filters=[0, 2])
    assert list(figures) == [
        "filters_before",
        "filters_after",
        "filter_responses",
        "feature_maps",
        "curves",
        "misclassified",
        "confusion_matrix",
    ]
    assert all(isinstance(f, Figure) for f in figures.values())
    responses = figures["filter_responses"]
    assert [ax.get_title() for ax in responses.axes if ax.get_title()][1:] == [
        "filter 0",  # top row: the input, then the filters
        "filter 2",
        "response 0",  # bottom row: their responses
        "response 2",
    ]
    assert [ax.get_ylabel() for ax in figures["feature_maps"].axes if ax.get_ylabel()] == [
        "input",
        "conv1\n30x24x24\n16 of 30 maps",
    ]
    maps = viz.conv_feature_maps(net, data.x_test[0] / np.float32(255))
    assert [(n, m.shape) for n, m in maps] == [("conv1", (30, 24, 24))]
    # no seed or history in the metadata: no "before" filters and no curves
    assert list(viz.network_figures(net, data, what=("filters", "curves"))) == ["filters_after"]
    with pytest.raises(ValueError, match=r"unknown figures \['nonsense'\]"):
        viz.network_figures(net, data, what=("filters", "nonsense"))
