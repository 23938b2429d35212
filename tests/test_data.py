"""Tests for factorlens.data: every SPEC form, bad inputs, subsets, normalization, preprocessing."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from factorlens.data import ImageData, load_data, make_preprocess, parse_normalize
from factorlens.errors import FactorlensError

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def one_line(exc_info: pytest.ExceptionInfo) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------------------------
# IDX fixtures


def idx_bytes(arr: np.ndarray, dtype_code: int = 0x08) -> bytes:
    header = bytes([0, 0, dtype_code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_idx(path: Path, data: bytes) -> None:
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def small_mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 5, 4), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 5, 9], dtype=np.uint8)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_roundtrip(tmp_path: Path, small_mnist_arrays, gz: bool) -> None:
    images, labels = small_mnist_arrays
    ext = ".gz" if gz else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", idx_bytes(images))
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", idx_bytes(labels))
    data = load_data(f"mnist:{tmp_path}")
    assert data.images.shape == (7, 1, 5, 4)
    assert data.images.dtype == np.float32
    np.testing.assert_allclose(data.images[:, 0], images / 255.0, rtol=0, atol=1e-7)
    assert data.labels is not None and data.labels.dtype == np.int64
    np.testing.assert_array_equal(data.labels, labels)
    assert data.class_names == [str(i) for i in range(10)]
    assert "test" in data.description
    assert data.n_samples == 7


def test_mnist_train_split_and_missing_labels(tmp_path: Path, small_mnist_arrays) -> None:
    images, labels = small_mnist_arrays
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", idx_bytes(images[:3]))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(images))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(labels))
    train = load_data(f"mnist:{tmp_path}:train")
    assert train.images.shape == (3, 1, 5, 4)
    assert train.labels is None and train.class_names is None
    assert "train" in train.description
    test = load_data(f"mnist:{tmp_path}:test")
    assert test.n_samples == 7 and test.labels is not None


def test_mnist_missing_dir_and_files(tmp_path: Path) -> None:
    with pytest.raises(FactorlensError) as exc:
        load_data(f"mnist:{tmp_path / 'nope'}")
    assert "nope" in one_line(exc)
    with pytest.raises(FactorlensError) as exc:
        load_data(f"mnist:{tmp_path}")
    assert "t10k-images-idx3-ubyte" in one_line(exc)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_truncated(tmp_path: Path, small_mnist_arrays, gz: bool) -> None:
    images, _ = small_mnist_arrays
    ext = ".gz" if gz else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", idx_bytes(images)[:-10])
    with pytest.raises(FactorlensError) as exc:
        load_data(f"mnist:{tmp_path}")
    assert "truncated" in one_line(exc)


def test_mnist_truncated_gzip_stream(tmp_path: Path, small_mnist_arrays) -> None:
    images, _ = small_mnist_arrays
    full = gzip.compress(idx_bytes(images))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(full[: len(full) // 2])
    with pytest.raises(FactorlensError) as exc:
        load_data(f"mnist:{tmp_path}")
    assert "t10k-images-idx3-ubyte.gz" in one_line(exc)


def test_mnist_bad_magic_and_dims(tmp_path: Path, small_mnist_arrays) -> None:
    images, labels = small_mnist_arrays
    bad = b"\x12\x34" + idx_bytes(images)[2:]
    write_idx(tmp_path / "t10k-images-idx3-ubyte", bad)
    with pytest.raises(FactorlensError) as exc:
        load_data(f"mnist:{tmp_path}")
    assert "magic" in one_line(exc)
    # a labels file where the images file should be: wrong number of dimensions
    write_idx(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(labels))
    with pytest.raises(FactorlensError) as exc:
        load_data(f"mnist:{tmp_path}")
    assert "dimensions" in one_line(exc)
    # float IDX data type is refused
    write_idx(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(images, dtype_code=0x0D))
    with pytest.raises(FactorlensError) as exc:
        load_data(f"mnist:{tmp_path}")
    assert "0x0d" in one_line(exc)


def test_mnist_label_count_mismatch(tmp_path: Path, small_mnist_arrays) -> None:
    images, labels = small_mnist_arrays
    write_idx(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(images))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(labels[:5]))
    with pytest.raises(FactorlensError) as exc:
        load_data(f"mnist:{tmp_path}")
    assert "5 labels" in one_line(exc)


def test_mnist_empty(tmp_path: Path) -> None:
    write_idx(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(np.zeros((0, 28, 28), np.uint8)))
    with pytest.raises(FactorlensError) as exc:
        load_data(f"mnist:{tmp_path}")
    assert "N=0" in one_line(exc)


def test_real_mnist() -> None:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST files not present at {MNIST_DIR}")
    data = load_data(f"mnist:{MNIST_DIR}")
    assert data.images.shape == (10000, 1, 28, 28)
    assert data.images.dtype == np.float32
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    assert data.labels is not None
    assert np.bincount(data.labels).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009,
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# digits


def test_digits() -> None:
    data = load_data("digits")
    assert data.images.shape == (1797, 1, 8, 8)
    assert data.images.dtype == np.float32
    assert data.images.min() == 0.0 and data.images.max() == 1.0
    assert data.labels is not None and data.labels.dtype == np.int64
    assert sorted(set(data.labels.tolist())) == list(range(10))
    assert data.class_names == [str(i) for i in range(10)]
    assert load_data(" DIGITS ").n_samples == 1797


# --------------------------------------------------------------------------------------------
# npz


def test_npz_uint8_nhw(tmp_path: Path) -> None:
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10
    path = tmp_path / "d.npz"
    np.savez(path, images=imgs, labels=np.array([1, 0]), class_names=np.array(["cat", "dog"]))
    data = load_data(f"npz:{path}")
    assert data.images.shape == (2, 1, 3, 4)
    np.testing.assert_allclose(data.images[:, 0], imgs / 255.0, atol=1e-7)
    np.testing.assert_array_equal(data.labels, [1, 0])
    assert data.class_names == ["cat", "dog"]


def test_npz_float_nchw_and_nd(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    imgs = rng.random((4, 3, 5, 6)).astype(np.float64)
    path = tmp_path / "c.npz"
    np.savez(path, images=imgs)
    data = load_data(f"npz:{path}")
    assert data.images.shape == (4, 3, 5, 6) and data.images.dtype == np.float32
    assert data.labels is None and data.class_names is None
    np.testing.assert_allclose(data.images, imgs, atol=1e-6)

    tab = rng.random((10, 7)).astype(np.float32)
    np.savez(tmp_path / "t.npz", images=tab, labels=np.arange(10, dtype=np.float64) % 3)
    data = load_data(f"npz:{tmp_path / 't.npz'}")
    assert data.images.shape == (10, 7)
    np.testing.assert_array_equal(data.labels, np.arange(10) % 3)


def test_npz_errors(tmp_path: Path) -> None:
    with pytest.raises(FactorlensError) as exc:
        load_data(f"npz:{tmp_path / 'missing.npz'}")
    assert "missing.npz" in one_line(exc)

    np.savez(tmp_path / "big.npz", images=np.full((2, 4, 4), 3.0))
    with pytest.raises(FactorlensError) as exc:
        load_data(f"npz:{tmp_path / 'big.npz'}")
    assert "[0, 1]" in one_line(exc) and "scale" in str(exc.value)

    np.savez(tmp_path / "neg.npz", images=np.full((2, 4, 4), -0.5))
    with pytest.raises(FactorlensError, match=r"\[0, 1\]"):
        load_data(f"npz:{tmp_path / 'neg.npz'}")

    nan = np.zeros((2, 4, 4))
    nan[0, 1, 1] = np.nan
    np.savez(tmp_path / "nan.npz", images=nan)
    with pytest.raises(FactorlensError, match="NaN"):
        load_data(f"npz:{tmp_path / 'nan.npz'}")

    inf = np.zeros((2, 4, 4))
    inf[1, 0, 0] = np.inf
    np.savez(tmp_path / "inf.npz", images=inf)
    with pytest.raises(FactorlensError, match="Inf"):
        load_data(f"npz:{tmp_path / 'inf.npz'}")

    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 4, 4), np.uint8))
    with pytest.raises(FactorlensError) as exc:
        load_data(f"npz:{tmp_path / 'empty.npz'}")
    assert "N=0" in one_line(exc)

    np.savez(tmp_path / "nokey.npz", x=np.zeros((2, 4, 4)))
    with pytest.raises(FactorlensError) as exc:
        load_data(f"npz:{tmp_path / 'nokey.npz'}")
    assert "'images'" in one_line(exc) and "x" in str(exc.value)

    np.savez(tmp_path / "lab.npz", images=np.zeros((3, 4, 4)), labels=np.array([0, 1]))
    with pytest.raises(FactorlensError, match="2 labels for 3"):
        load_data(f"npz:{tmp_path / 'lab.npz'}")

    np.savez(tmp_path / "hwc.npz", images=np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(FactorlensError, match="channels-last"):
        load_data(f"npz:{tmp_path / 'hwc.npz'}")

    np.savez(tmp_path / "int.npz", images=np.zeros((3, 4, 4), np.int64))
    with pytest.raises(FactorlensError, match="integer dtype"):
        load_data(f"npz:{tmp_path / 'int.npz'}")

    np.savez(tmp_path / "names.npz", images=np.zeros((2, 4, 4)), labels=[0, 2], class_names=["a"])
    with pytest.raises(FactorlensError, match="class names"):
        load_data(f"npz:{tmp_path / 'names.npz'}")

    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(FactorlensError) as exc:
        load_data(f"npz:{tmp_path / 'junk.npz'}")
    assert "junk.npz" in one_line(exc)


# --------------------------------------------------------------------------------------------
# folder


def make_folder(root: Path, mode: str, size=(6, 5), per_class=(2, 3)) -> None:
    rng = np.random.default_rng(2)
    for cls, count in zip(["zebra", "apple"], per_class, strict=True):
        (root / cls).mkdir(parents=True)
        for i in range(count):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
            ext = "png" if i % 2 == 0 else "bmp"
            Image.fromarray(arr, mode=None).convert(mode).save(root / cls / f"img{i}.{ext}")


def test_folder_grayscale(tmp_path: Path) -> None:
    make_folder(tmp_path, "L")
    (tmp_path / "apple" / "notes.txt").write_text("ignored")
    data = load_data(f"folder:{tmp_path}")
    assert data.images.shape == (5, 1, 5, 6)
    assert data.class_names == ["apple", "zebra"]
    np.testing.assert_array_equal(data.labels, [0, 0, 0, 1, 1])
    expected = np.asarray(Image.open(tmp_path / "apple" / "img0.png"), np.float32) / 255
    np.testing.assert_allclose(data.images[0, 0], expected, atol=1e-7)


def test_folder_rgb(tmp_path: Path) -> None:
    make_folder(tmp_path, "RGB")
    data = load_data(f"folder:{tmp_path}")
    assert data.images.shape == (5, 3, 5, 6)
    expected = np.asarray(Image.open(tmp_path / "zebra" / "img1.bmp"), np.float32) / 255
    np.testing.assert_allclose(data.images[4], expected.transpose(2, 0, 1), atol=1e-7)


def test_folder_mixed_modes_become_rgb(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    Image.new("L", (4, 4), 128).save(tmp_path / "a" / "g.png")
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "a" / "c.png")
    data = load_data(f"folder:{tmp_path}")
    assert data.images.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(data.images[1], 128 / 255, atol=1e-7)  # g.png sorts after c.png
    np.testing.assert_allclose(data.images[0, 0], 1.0)


def test_folder_unlabelled(tmp_path: Path) -> None:
    for i in range(3):
        Image.new("L", (3, 3), i * 100).save(tmp_path / f"{i}.gif")
    data = load_data(f"folder:{tmp_path}")
    assert data.images.shape == (3, 1, 3, 3)  # gray-palette GIFs count as grayscale
    np.testing.assert_allclose(data.images[:, 0, 0, 0], [0, 100 / 255, 200 / 255], atol=1e-7)
    assert data.labels is None and data.class_names is None


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FactorlensError) as exc:
        load_data(f"folder:{tmp_path / 'absent'}")
    assert "absent" in one_line(exc)

    with pytest.raises(FactorlensError, match="no images"):
        load_data(f"folder:{tmp_path}")

    make_folder(tmp_path / "ds", "L")
    Image.new("L", (7, 9)).save(tmp_path / "ds" / "zebra" / "odd.png")
    with pytest.raises(FactorlensError) as exc:
        load_data(f"folder:{tmp_path / 'ds'}")
    msg = one_line(exc)
    assert "odd.png" in msg and "7×9" in msg and "6×5" in msg

    (tmp_path / "bad" / "c").mkdir(parents=True)
    (tmp_path / "bad" / "c" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(FactorlensError) as exc:
        load_data(f"folder:{tmp_path / 'bad'}")
    assert "broken.png" in one_line(exc)


# --------------------------------------------------------------------------------------------
# SPEC errors


@pytest.mark.parametrize("spec", ["", "cifar", "http://x", "foo:bar", "digits:3", "npz:"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(FactorlensError) as exc:
        load_data(spec)
    one_line(exc)


def test_unknown_scheme_lists_forms() -> None:
    with pytest.raises(FactorlensError) as exc:
        load_data("imagenet:/data")
    msg = one_line(exc)
    for form in ("digits", "mnist:DIR", "npz:FILE", "folder:DIR"):
        assert form in msg


# --------------------------------------------------------------------------------------------
# subset


def tiny_data(n: int) -> ImageData:
    images = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) / max(n, 1)
    return ImageData(images, np.arange(n, dtype=np.int64), None, "tiny")


@settings(max_examples=60, deadline=None)
@given(n_total=st.integers(1, 60), n=st.integers(1, 80), seed=st.integers(0, 2**32 - 1))
def test_subset_properties(n_total: int, n: int, seed: int) -> None:
    data = tiny_data(n_total)
    sub = data.subset(n, seed)
    if n >= n_total:
        assert sub is data
        return
    assert sub.n_samples == n
    assert sub.labels is not None
    idx = sub.labels
    assert np.all(np.diff(idx) > 0)  # sorted, no repeats
    np.testing.assert_array_equal(sub.images[:, 0, 0, 0], data.images[idx, 0, 0, 0])
    again = data.subset(n, seed)
    np.testing.assert_array_equal(again.labels, sub.labels)
    assert "subset" in sub.description


def test_subset_none_and_invalid() -> None:
    data = tiny_data(10)
    assert data.subset(None, 0) is data
    for bad in (0, -3):
        with pytest.raises(FactorlensError) as exc:
            data.subset(bad, 0)
        one_line(exc)
    # different seeds give different subsets (C(10, 5) = 252 choices)
    assert len({tuple(data.subset(5, s).labels.tolist()) for s in range(10)}) > 1
    no_labels = ImageData(data.images, None, None, "x").subset(3, 0)
    assert no_labels.labels is None and no_labels.n_samples == 3


# --------------------------------------------------------------------------------------------
# normalize


def test_parse_normalize_examples() -> None:
    assert parse_normalize("0.1307,0.3081") == ((0.1307,), (0.3081,))
    means, stds = parse_normalize(" 0.485, 0.456,0.406 ,0.229,0.224,0.225")
    assert means == (0.485, 0.456, 0.406) and stds == (0.229, 0.224, 0.225)


@pytest.mark.parametrize(
    "text", ["", "0.5", "a,b", "0.5,0", "0.5,-1", "1,2,3", "0.5,,0.2", "nan,1", "0.5,inf"]
)
def test_parse_normalize_errors(text: str) -> None:
    with pytest.raises(FactorlensError) as exc:
        parse_normalize(text)
    one_line(exc)


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
positive = st.floats(1e-6, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda c: st.tuples(
            st.lists(finite, min_size=c, max_size=c), st.lists(positive, min_size=c, max_size=c)
        )
    )
)
def test_parse_normalize_roundtrip(pair) -> None:
    means, stds = pair
    text = ",".join(repr(v) for v in [*means, *stds])
    assert parse_normalize(text) == (tuple(means), tuple(stds))


# --------------------------------------------------------------------------------------------
# preprocess


def test_preprocess_identity_normalize_and_hook() -> None:
    x = torch.rand(3, 2, 4, 4)
    assert torch.equal(make_preprocess()(x), x)
    pre = make_preprocess(((0.5, 0.25), (0.5, 2.0)))
    y = pre(x)
    torch.testing.assert_close(y[:, 0], (x[:, 0] - 0.5) / 0.5)
    torch.testing.assert_close(y[:, 1], (x[:, 1] - 0.25) / 2.0)

    calls = []

    def hook(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.clone())
        return t * 10

    both = make_preprocess(((0.5, 0.25), (0.5, 2.0)), hook)
    z = both(x)
    torch.testing.assert_close(calls[0], y)  # hook sees the normalized images
    torch.testing.assert_close(z, y * 10)
    assert "normalize" in repr(both) and "hook" in repr(both)


def test_preprocess_errors() -> None:
    pre = make_preprocess(((0.1307,), (0.3081,)))
    with pytest.raises(FactorlensError) as exc:
        pre(torch.rand(2, 3, 4, 4))
    assert "3" in one_line(exc)
    with pytest.raises(FactorlensError, match="non-image"):
        pre(torch.rand(2, 5))

    bad = make_preprocess(hook=lambda t: t.numpy())
    with pytest.raises(FactorlensError, match=r"torch\.Tensor"):
        bad(torch.rand(1, 1, 2, 2))

    def broken(t: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom\nsecond line")

    with pytest.raises(FactorlensError) as exc:
        make_preprocess(hook=broken)(torch.rand(1, 1, 2, 2))
    assert "boom" in one_line(exc) and "RuntimeError" in str(exc.value)

    with pytest.raises(FactorlensError):
        make_preprocess(((0.5,), (0.0,)))


def test_named_data_sets_come_from_entry_points_not_imports(monkeypatch) -> None:
    import ast
    from pathlib import Path

    import factorlens.data as data_module

    tree = ast.parse(Path(data_module.__file__).read_text())
    imported = [
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    ] + [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    assert not [m for m in imported if "research" in m]  # data.py never reaches up

    class Entry:  # an installed package's entry point
        def __init__(self, value, fn) -> None:
            self.value, self._fn = value, fn

        def load(self):
            return self._fn

    good = data_module.from_arrays(np.zeros((3, 2, 2)), None, None, "three blanks", "blank")
    fake = {
        "blank": Entry("pkg:blank", lambda: good),
        "broken": Entry("pkg:broken", lambda: 1 / 0),
        "wrong": Entry("pkg:wrong", lambda: np.zeros(3)),
    }
    monkeypatch.setattr(data_module, "named_datasets", lambda: fake)
    assert data_module.load_data("blank") is good
    with pytest.raises(FactorlensError, match=r"'broken' .*failed to load: ZeroDivisionError"):
        data_module.load_data("broken")
    with pytest.raises(FactorlensError, match="returned a ndarray, not an ImageData"):
        data_module.load_data("wrong")
    with pytest.raises(FactorlensError, match="takes no argument"):
        data_module.load_data("blank:x")
    with pytest.raises(FactorlensError, match="use one of: digits, blank, broken, wrong, mnist"):
        data_module.load_data("other")
