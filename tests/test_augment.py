"""Augmentation (random crop after zero padding, left-right flip): on every backend
equal to a plain NumPy loop over the same draws; the draws a function of the seed,
the epoch and the example; the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn.errors import ConfigError
from xpcnn.inputs import as_input
from xpcnn.models import SimpleConvNet
from xpcnn.optim import Adam
from xpcnn.train import Augment, StandardUpdater, check_augment, crop_flip


def reference(x: np.ndarray, top, left, flip, pad: int) -> np.ndarray:
    """One image at a time: pad, cut the window, mirror it."""
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    N, _, H, W = x.shape
    out = np.empty_like(x)
    for n in range(N):
        window = padded[n, :, top[n] : top[n] + H, left[n] : left[n] + W]
        out[n] = window[:, :, ::-1] if flip[n] else window
    return out


@pytest.mark.parametrize("kinds", ["crop,flip", "crop", "flip"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_batches_equal_a_numpy_loop_over_the_same_draws(backend, kinds, dtype):
    rng = np.random.default_rng(0)
    n = 40  # the training set
    x_train = rng.integers(0, 256, (n, 3, 7, 6), dtype=np.uint8).astype(dtype)
    rows = rng.permutation(n)[:13]
    aug = Augment(kinds, pad=3, seed=5)
    top, left, flip = aug.draw(2, n)
    expected = reference(x_train[rows], top[rows], left[rows], flip[rows], 3)
    x = backend.asarray(x_train[rows], dtype)
    out = aug(x, backend.asarray(rows), 2, n)
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_array_equal(backend.to_numpy(out), expected)


def test_an_empty_batch_stays_empty(backend):
    x = backend.asarray(np.zeros((0, 1, 4, 4), np.uint8))
    out = Augment(seed=0)(x, backend.asarray(np.zeros(0, np.int64)), 0, 10)
    assert tuple(out.shape) == (0, 1, 4, 4)


def test_crop_flip_keeps_the_image_at_the_centre_without_a_flip():
    x = np.arange(2 * 1 * 3 * 4, dtype=np.uint8).reshape(2, 1, 3, 4)
    same = crop_flip(x, np.array([2, 2]), np.array([2, 2]), np.array([False, True]), pad=2)
    np.testing.assert_array_equal(same[0], x[0])
    np.testing.assert_array_equal(same[1], x[1, :, :, ::-1])
    corner = crop_flip(x[:1], np.array([0]), np.array([0]), np.array([False]), pad=2)
    np.testing.assert_array_equal(corner[0, 0, 2:, 2:], x[0, 0, :1, :2])  # shifted by 2
    assert not corner[0, 0, :2].any() and not corner[0, 0, :, :2].any()  # zeros padded in


def test_draws_are_a_function_of_seed_epoch_and_example():
    aug = Augment("crop,flip", pad=4, seed=7)
    top, left, flip = aug.draw(3, 5000)
    again = Augment("crop,flip", pad=4, seed=7).draw(3, 5000)
    for a, b in zip((top, left, flip), again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert top.min() == left.min() == 0 and top.max() == left.max() == 8
    assert abs(np.bincount(top, minlength=9) / 5000 - 1 / 9).max() < 0.02  # uniform corners
    assert 0.47 < flip.mean() < 0.53
    other_epoch, other_seed = aug.draw(4, 5000), Augment(seed=8).draw(3, 5000)
    assert (other_epoch[0] != top).mean() > 0.8 and (other_seed[2] != flip).mean() > 0.4
    crop_only, flip_only = Augment("crop", seed=7).draw(3, 10), Augment("flip", seed=7).draw(3, 10)
    assert not crop_only[2].any()
    assert (flip_only[0] == 4).all() and (flip_only[1] == 4).all()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rotate", "unknown 'rotate'"),
        ("crop,crop", "a repeated one"),
        ("", "unknown ''"),
        ("crop,", "unknown ''"),
    ],
)
def test_bad_kinds_are_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        Augment(text)


def test_kinds_are_put_in_one_order():
    assert Augment("FLIP, crop").kinds == ("crop", "flip")
    assert repr(Augment(("flip",), pad=2, seed=3)) == "Augment('flip', pad=2, seed=3)"


@pytest.mark.parametrize("dataset", ["mnist", "mnist-sample", "MNIST_sample"])
def test_flipping_digits_is_refused(dataset):
    with pytest.raises(ConfigError, match="a mirrored digit") as e:
        check_augment("crop,flip", dataset)
    assert "use --augment crop" in str(e.value) and "\n" not in str(e.value)
    check_augment("crop", dataset)


@pytest.mark.parametrize("dataset", ["fashion-mnist", "cifar10"])
def test_flipping_clothes_and_photos_is_allowed(dataset):
    check_augment("crop,flip", dataset)


def test_the_updater_augments_the_stored_pixels_before_scaling(backend):
    rng = np.random.default_rng(1)
    x_train = rng.integers(0, 256, (30, 1, 8, 8), dtype=np.uint8)
    t_train = rng.integers(0, 10, 30).astype(np.uint8)
    net = SimpleConvNet((1, 8, 8), {"filter_num": 2, "filter_size": 3}, 4, device=backend)
    aug = Augment(seed=2)
    up = StandardUpdater(net, Adam(), backend.asarray(x_train), backend.asarray(t_train), aug)
    rows = np.array([3, 29, 0, 17])
    x, t = up.take(rows, epoch=1)
    top, left, flip = aug.draw(1, 30)
    pixels = reference(x_train[rows], top[rows], left[rows], flip[rows], 4)
    expected = as_input(backend.asarray(pixels), net.dtype)  # cropped as uint8, then scaled
    np.testing.assert_array_equal(backend.to_numpy(x), backend.to_numpy(expected))
    np.testing.assert_array_equal(backend.to_numpy(t), t_train[rows])
    plain = StandardUpdater(net, Adam(), backend.asarray(x_train), backend.asarray(t_train))
    assert not np.array_equal(backend.to_numpy(plain.take(rows, 1)[0]), backend.to_numpy(x))


# -- xpcnn train --augment ---------------------------------------------------------------


def test_cli_flipping_digits_is_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    from xpcnn.cli import main

    out = tmp_path / "run"
    assert main(["train", "--augment", "flip,crop", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "xpcnn train: error: --augment flip would mirror mnist-sample's images, and a mirrored "
        "digit (2, 3, 4, 5, 7, 9) is no digit: use --augment crop\n"
    )
    assert not out.exists()


def test_cli_bad_augment_names_the_option(capsys):
    from xpcnn.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--augment", "crop,rotate"])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        "xpcnn train: error: argument --augment: augmentation 'crop,rotate' has unknown "
        "'rotate': give crop, flip or crop,flip"
    )


def test_cli_crop_on_digits_trains(tmp_path, capsys):
    from xpcnn.cli import main

    out = tmp_path / "run"
    argv = ["train", "--augment", "crop", "--epochs", "1", "--train-size", "200",
            "--eval-samples", "100", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert "augment crop" in capsys.readouterr().err
    assert (out / "checkpoint.npz").is_file()
