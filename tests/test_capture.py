"""Tests for layer selection and activation capture."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from factorlens.capture import capture, default_layers, select_layers
from factorlens.errors import FactorlensError
from factorlens.store import MemoryStore, ZarrStore, open_store
from factorlens.wording import flags_for_cli

CNN_DEFAULT = [
    "features.0",
    "features.1",
    "features.2",
    "features.3",
    "features.4",
    "features.5",
    "classifier.1",
    "classifier.3",
    "classifier.4",
]


class TinyCNN(nn.Module):
    """1×8×8 images → 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Dropout(0.5),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(24, 8),
            nn.BatchNorm1d(8),
            nn.Tanh(),
            nn.Linear(8, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Split(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :2], x[:, 2:]


class Named(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"double": 2 * x, "neg": -x}


class Log(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class MultiOut(nn.Module):
    """(N, 5) → a Linear, a tuple-returning split, a dict-returning module and a log."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 5)
        self.split = Split()
        self.named = Named()
        self.log = Log()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.split(self.lin(x))
        d = self.named(a)
        return d["double"].sum(1) + b.sum(1) + self.log(x).sum(1)


@dataclass
class FakeImageData:
    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str]
    description: str


def _cnn(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    model = TinyCNN()
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        model.classifier[2].running_mean.uniform_(-0.5, 0.5)
        model.classifier[2].running_var.uniform_(0.5, 2.0)
    return model


def _images(n: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, channels, 8, 8), dtype=np.float32)


def _preprocess(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.25


def _reference(model: TinyCNN, images: np.ndarray, preprocess=None) -> dict[str, np.ndarray]:
    """Every submodule's output, by running the Sequentials module by module in eval mode."""
    model = model.eval()
    out = {}
    with torch.no_grad():
        x = torch.from_numpy(images.copy())
        if preprocess is not None:
            x = preprocess(x)
        for prefix, seq in (("features", model.features), ("classifier", model.classifier)):
            for i, module in enumerate(seq):
                x = module(x)
                out[f"{prefix}.{i}"] = x.clone().numpy()
    return out


def _all_hooks_removed(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


# ----------------------------------------------------------------------- layer selection
def test_default_layers():
    assert default_layers(_cnn()) == CNN_DEFAULT
    assert default_layers(MultiOut()) == ["lin"]


def test_select_layers_default_exact_and_globs():
    model = _cnn()
    assert select_layers(model, None) == CNN_DEFAULT
    assert select_layers(model, ["classifier.4", "features.0"]) == ["features.0", "classifier.4"]
    assert select_layers(model, "classifier.4, features.0") == ["features.0", "classifier.4"]
    assert select_layers(model, "features.*") == [f"features.{i}" for i in range(7)]
    assert select_layers(model, ["features.[03]", "features.0", "classifier.?"]) == [
        "features.0",
        "features.3",
        "classifier.0",
        "classifier.1",
        "classifier.2",
        "classifier.3",
        "classifier.4",
    ]
    assert select_layers(model, "features") == ["features"]


def test_unknown_layer_suggests_close_match():
    with pytest.raises(FactorlensError, match=r"unknown layer 'featurs\.3'") as err:
        select_layers(_cnn(), "features.0,featurs.3")
    assert "did you mean: features.3" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(FactorlensError, match="matches no module"):
        select_layers(_cnn(), "decoder.*")
    with pytest.raises(FactorlensError, match="no layer names"):
        select_layers(_cnn(), " , ")
    with pytest.raises(FactorlensError, match="root module"):
        select_layers(_cnn(), [""])


def test_no_default_layers_error():
    model = nn.Sequential(nn.Flatten(), nn.Dropout())
    with pytest.raises(FactorlensError, match=r"\(`layers`\)"):
        select_layers(model, None)


# ----------------------------------------------------------------------- round trips
@pytest.mark.parametrize("backend", ["memory", "zarr"])
@pytest.mark.parametrize("batch_size", [4, 7, 64])
def test_capture_matches_forward_pass(tmp_path, backend, batch_size):
    model = _cnn()
    images = _images(17)
    store = None if backend == "memory" else tmp_path / "acts"
    result = capture(
        model, images, batch_size=batch_size, preprocess=_preprocess, store=store, progress=False
    )
    assert isinstance(result, MemoryStore if backend == "memory" else ZarrStore)
    assert result.closed
    ref = _reference(model, images, _preprocess)
    assert result.names == ["input", *CNN_DEFAULT]
    assert result.n_samples == 17
    # the input block is the data as given (before preprocess), channel axis squeezed
    assert result.block("input").shape == (17, 8, 8)
    np.testing.assert_array_equal(result.block("input")[:], images[:, 0])
    for name in CNN_DEFAULT:
        blk = result.block(name)
        assert blk.shape == ref[name].shape
        got = blk[0:17]
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref[name], rtol=1e-5, atol=1e-6)
    # the inplace ReLU after features.0 must not have changed the stored conv output
    assert (result.block("features.0")[:] < 0).any()
    assert result.info("features.0")["module"] == "Conv2d"
    assert result.info("classifier.4")["module"] == "Linear"
    assert result.info("input")["kind"] == "input"
    meta = result.meta
    assert meta["layers"] == CNN_DEFAULT
    assert meta["modules"]["features.2"] == "MaxPool2d"
    assert meta["shapes"]["features.3"] == [17, 6, 2, 2]
    assert meta["batch_size"] == batch_size
    assert meta["n_samples"] == 17
    assert meta["device"] == "cpu"
    assert meta["model"] == "TinyCNN"
    if backend == "zarr":
        again = open_store(tmp_path / "acts")
        assert again.names == result.names
        for name in result.names:
            np.testing.assert_array_equal(again.block(name)[:], result.block(name)[:])
        assert again.meta == result.meta


def test_capture_torch_tensor_and_matrix_data():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 4), nn.GELU(), nn.Linear(4, 2), nn.Softmax(dim=1))
    data = torch.rand(9, 6)
    store = capture(model, data, batch_size=4, progress=False)
    assert store.names == ["input", "0", "1", "2", "3"]
    np.testing.assert_array_equal(store.block("input"), data.numpy())
    with torch.no_grad():
        expected = model(data).numpy()
    np.testing.assert_allclose(store.block("3"), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["memory", "zarr"])
def test_model_output_recorded_in_the_same_pass(tmp_path, backend):
    model = _cnn()
    images = _images(11)
    store = None if backend == "memory" else tmp_path / "acts"
    result = capture(
        model, images, "features.3", batch_size=4, preprocess=_preprocess, store=store,
        progress=False, output="scores",
    )  # fmt: skip
    assert result.names == ["input", "features.3", "scores"]
    assert result.info("scores")["kind"] == "output"
    with torch.no_grad():
        expected = model.eval()(_preprocess(torch.as_tensor(images))).numpy()
    np.testing.assert_allclose(result.block("scores")[:], expected, rtol=1e-5, atol=1e-6)
    if backend == "zarr":
        assert open_store(tmp_path / "acts").names == result.names
    for clash in ("input", "features.3"):
        with pytest.raises(FactorlensError, match="clashes"):
            capture(model, images, "features.3", output=clash, progress=False)
    only = capture(model, images, [], preprocess=_preprocess, output="scores", progress=False)
    assert only.names == ["input", "scores"]  # no layer: the input and the output alone
    np.testing.assert_allclose(only.block("scores")[:], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(FactorlensError, match="no layer names"):
        capture(model, images, [], progress=False)


def test_tuple_model_output_takes_select():
    model = nn.Sequential(nn.Linear(5, 5), Split())
    x = torch.rand(4, 5)
    with pytest.raises(FactorlensError, match=r"'out'.*select=\{'out': 0\}"):
        capture(model, x, layers="0", output="out", progress=False)
    store = capture(model, x, layers="0", output="out", select={"out": 1}, progress=False)
    with torch.no_grad():
        expected = model(x)[1].numpy()
    np.testing.assert_allclose(store.block("out"), expected, rtol=1e-6)


def test_colour_input_keeps_channels():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
    images = _images(5, channels=3)
    store = capture(model, images, layers="1", progress=False)
    assert store.names == ["input", "1"]
    assert store.block("input").shape == (5, 3, 8, 8)
    np.testing.assert_array_equal(store.block("input"), images)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(n=st.integers(1, 30), batch_size=st.integers(1, 12), chunk_rows=st.integers(1, 9))
def test_zarr_capture_chunk_boundaries(n, batch_size, chunk_rows):
    model = _cnn()
    images = _images(n, seed=n)
    layers = ["features.0", "features.5", "classifier.4"]
    mem = capture(model, images, layers, batch_size=n, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        zstore = ZarrStore.create(Path(tmp) / "acts", chunk_rows=chunk_rows)
        capture(model, images, layers, batch_size=batch_size, store=zstore, progress=False)
        again = open_store(Path(tmp) / "acts")
        assert again.names == mem.names
        for name in mem.names:
            assert again.block(name).chunks[0] == chunk_rows
            np.testing.assert_allclose(again.block(name)[:], mem.block(name), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------- labels and meta
def test_labels_from_image_data_and_explicit():
    images = _images(6)
    data = FakeImageData(images, np.array([0, 1, 2, 0, 1, 2]), ["a", "b", "c"], "six digits")
    store = capture(_cnn(), data, layers="features.1", progress=False, meta={"extra": 1})
    np.testing.assert_array_equal(store.labels, [0, 1, 2, 0, 1, 2])
    assert store.labels.dtype == np.int64
    assert store.meta["class_names"] == ["a", "b", "c"]
    assert store.meta["data"] == "six digits"
    assert store.meta["extra"] == 1
    store = capture(_cnn(), images, layers="features.1", labels=[5, 4, 3, 2, 1, 0], progress=False)
    np.testing.assert_array_equal(store.labels, [5, 4, 3, 2, 1, 0])
    assert capture(_cnn(), images, layers="features.1", progress=False).labels is None
    with pytest.raises(FactorlensError, match="one label per sample"):
        capture(_cnn(), images, layers="features.1", labels=[1, 2], progress=False)


def test_labels_kept_in_zarr(tmp_path):
    data = FakeImageData(_images(5), np.array([3, 1, 4, 1, 5]), ["x"], "five")
    capture(_cnn(), data, layers="classifier.4", store=tmp_path / "acts", progress=False)
    np.testing.assert_array_equal(open_store(tmp_path / "acts").labels, [3, 1, 4, 1, 5])


# ----------------------------------------------------------------------- output types
def test_tuple_output_needs_select():
    model = MultiOut()
    x = torch.rand(4, 5)
    with pytest.raises(FactorlensError) as err:
        capture(model, x, layers="split", progress=False)
    msg = str(err.value)
    assert "'split'" in msg and "tuple" in msg
    assert "`select={'split': 0}`" in msg and "--select" not in msg
    assert "--select split=0" in flags_for_cli(msg)
    assert _all_hooks_removed(model)
    store = capture(model, x, layers="lin,split", select={"split": 1}, progress=False)
    with torch.no_grad():
        lin = model.lin(x)
    np.testing.assert_allclose(store.block("split"), lin[:, 2:].numpy(), rtol=1e-6)
    assert store.block("split").shape == (4, 3)
    store = capture(model, x, layers="split", select={"split": "0"}, progress=False)
    np.testing.assert_allclose(store.block("split"), lin[:, :2].numpy(), rtol=1e-6)
    with pytest.raises(FactorlensError, match="does not fit"):
        capture(model, x, layers="split", select={"split": 5}, progress=False)


def test_dict_output_and_select_key():
    model = MultiOut()
    x = torch.rand(3, 5)
    with pytest.raises(FactorlensError, match=r"returns a dict.*select"):
        capture(model, x, layers="named", progress=False)
    store = capture(model, x, layers="named", select={"named": "neg"}, progress=False)
    with torch.no_grad():
        a = model.lin(x)[:, :2]
    np.testing.assert_allclose(store.block("named"), -a.numpy(), rtol=1e-6)
    with pytest.raises(FactorlensError, match=r"does not fit.*double"):
        capture(model, x, layers="named", select={"named": "nope"}, progress=False)
    with pytest.raises(FactorlensError, match="not captured"):
        capture(model, x, layers="lin", select={"named": "neg"}, progress=False)


# ----------------------------------------------------------------------- errors
def test_model_rejecting_data_names_shape(tmp_path):
    model = _cnn()
    bad = _images(5, channels=3)
    path = tmp_path / "acts"
    with pytest.raises(FactorlensError) as err:
        capture(model, bad, batch_size=4, store=path, progress=False)
    msg = str(err.value)
    assert "(4, 3, 8, 8)" in msg
    assert "channels" in msg  # the original torch message is kept
    assert "\n" not in msg
    assert _all_hooks_removed(model)
    assert not path.exists()  # no partial output left behind


def test_nonfinite_raise_and_zero():
    model = MultiOut()
    x = torch.rand(6, 5)
    x[1, 0] = -1.0  # log → NaN
    x[4, 2] = 0.0  # log → -Inf
    with pytest.raises(FactorlensError) as err:
        capture(model, x, layers="log,lin", batch_size=4, progress=False)
    msg = str(err.value)
    assert "'log'" in msg and "non-finite" in msg and 'pass `nonfinite="zero"`' in msg
    assert "pass --nonfinite zero to replace" in flags_for_cli(msg)
    assert "1 non-finite" in msg  # the first batch holds one bad value
    store = capture(model, x, layers="log,lin", nonfinite="zero", progress=False)
    logx = torch.log(x).numpy()
    bad = ~np.isfinite(logx)
    assert bad.sum() == 2
    got = store.block("log")
    assert np.isfinite(got).all()
    assert (got[bad] == 0).all()
    np.testing.assert_allclose(got[~bad], logx[~bad], rtol=1e-6)
    assert store.meta["nonfinite"] == {"input": 0, "lin": 0, "log": 2}
    assert store.meta["nonfinite_policy"] == "zero"
    with pytest.raises(FactorlensError, match="'raise' or 'zero'"):
        capture(model, x, layers="lin", nonfinite="ignore", progress=False)


def test_empty_and_bad_data():
    with pytest.raises(FactorlensError, match="no samples"):
        capture(_cnn(), np.zeros((0, 1, 8, 8), np.float32), progress=False)
    with pytest.raises(FactorlensError, match="sample axis"):
        capture(_cnn(), np.zeros(8, np.float32), progress=False)
    with pytest.raises(FactorlensError, match="numpy array"):
        capture(_cnn(), [[0.0, 1.0]], progress=False)
    with pytest.raises(FactorlensError, match="batch_size"):
        capture(_cnn(), _images(2), batch_size=0, progress=False)


def test_unused_modules():
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.unused = nn.Tanh()

        def forward(self, x):
            return self.lin(x)

    with pytest.raises(FactorlensError, match="did not run"):
        capture(Unused(), torch.rand(4, 3), layers="lin,unused", progress=False)


# ----------------------------------------------------------------------- modules called twice
class Reuse(nn.Module):
    """One ReLU called before and after a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.lin(self.act(x)))


@pytest.mark.parametrize("backend", ["memory", "zarr"])
def test_every_call_of_a_reused_module_is_a_block(tmp_path, backend):
    torch.manual_seed(0)
    model = Reuse()
    x = torch.randn(5, 3)
    store = None if backend == "memory" else tmp_path / "acts"
    result = capture(model, x, batch_size=2, store=store, progress=False)
    assert result.names == ["input", "act", "lin", "act#2"]  # call order
    with torch.no_grad():
        first = torch.relu(x)
        lin = model.lin(first)
    np.testing.assert_allclose(result.block("act")[:], first.numpy(), rtol=1e-6)
    np.testing.assert_allclose(result.block("lin")[:], lin.numpy(), rtol=1e-6)
    np.testing.assert_allclose(result.block("act#2")[:], torch.relu(lin).numpy(), rtol=1e-6)
    assert result.info("act#2")["module"] == "ReLU"
    meta = (open_store(tmp_path / "acts") if backend == "zarr" else result).meta
    assert meta["layers"] == ["act", "lin", "act#2"]
    assert meta["modules"] == {"act": "ReLU", "lin": "Linear", "act#2": "ReLU"}
    assert meta["shapes"]["act#2"] == [5, 3]
    # an explicit choice of the module gives every call of it
    only = capture(model, x, layers="act", progress=False)
    assert only.names == ["input", "act", "act#2"]
    assert only.meta["layers"] == ["act", "act#2"]


def test_select_applies_to_every_call():
    class SplitTwice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.split = Split()

        def forward(self, x):
            a, b = self.split(x)
            c, d = self.split(torch.cat([b, a], 1))
            return c.sum(1) + d.sum(1)

    x = torch.rand(4, 5)
    store = capture(SplitTwice(), x, layers="split", select={"split": 1}, progress=False)
    assert store.names == ["input", "split", "split#2"]
    np.testing.assert_allclose(store.block("split"), x[:, 2:].numpy())
    np.testing.assert_allclose(store.block("split#2"), x[:, [4, 0, 1]].numpy())


def test_call_count_changing_between_batches_is_refused():
    class Varies(nn.Module):
        """Calls its Tanh once per sample in the batch."""

        def __init__(self) -> None:
            super().__init__()
            self.act = nn.Tanh()

        def forward(self, x):
            for _ in range(len(x)):
                x = self.act(x)
            return x

    model = Varies()
    with pytest.raises(FactorlensError) as err:
        capture(model, torch.rand(5, 3), batch_size=2, progress=False)
    msg = str(err.value)
    assert "'act' ran 1 time(s) in the batch starting at sample 4 but 2 time(s)" in msg
    assert "same number of times for every batch" in msg and "\n" not in msg
    assert _all_hooks_removed(model)
    assert capture(model, torch.rand(4, 3), batch_size=2, progress=False).names == [
        "input",
        "act",
        "act#2",
    ]


def test_call_name_in_layers_says_to_name_the_module():
    with pytest.raises(FactorlensError) as err:
        select_layers(Reuse(), "act#2")
    msg = str(err.value)
    assert "unknown layer 'act#2'" in msg and "name#2 for the second call" in msg
    assert "('act')" in msg and "\n" not in msg
    with pytest.raises(FactorlensError, match="name#2 for the second call"):
        select_layers(Reuse(), "a*#2")
    with pytest.raises(FactorlensError) as err:
        select_layers(Reuse(), "acts")
    assert "#" not in str(err.value)
    with pytest.raises(FactorlensError, match="clashes with a captured call of layer 'act'"):
        capture(Reuse(), torch.rand(2, 3), output="act#2", progress=False)


# ----------------------------------------------------------------------- a torchvision-style ResNet-18
def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """As in torchvision: one inplace ReLU module, called twice."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """torchvision's resnet18 layout (layers [2, 2, 2, 2]) for 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        c_in = 64
        for i, width in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            layer = nn.Sequential(BasicBlock(c_in, width, stride), BasicBlock(width, width))
            setattr(self, f"layer{i}", layer)
            c_in = width
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _resnet() -> ResNet18:
    torch.manual_seed(0)
    model = ResNet18()
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine maps
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _block_by_hand(block: BasicBlock, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two ReLU outputs of a BasicBlock, without inplace operations."""
    first = torch.relu(block.bn1(block.conv1(x)))
    identity = x if block.downsample is None else block.downsample(x)
    return first, torch.relu(block.bn2(block.conv2(first)) + identity)


def test_resnet18_default_capture_has_every_relu_call():
    model = _resnet()
    images = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    store = capture(model, images, batch_size=2, output="scores", progress=False)
    names = store.names
    assert names[:5] == ["input", "conv1", "relu", "maxpool", "layer1.0.conv1"]
    assert names[-3:] == ["avgpool", "fc", "scores"]
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        for j in (0, 1):
            b = f"{layer}.{j}"
            assert {f"{b}.relu", f"{b}.relu#2"} <= set(names)
            # execution order: conv1, relu, conv2, (downsample), relu#2
            assert (
                names.index(f"{b}.conv1")
                < names.index(f"{b}.relu")
                < names.index(f"{b}.conv2")
                < names.index(f"{b}.relu#2")
            )
    assert names.index("layer2.0.conv2") < names.index("layer2.0.downsample.0")
    assert names.index("layer2.0.downsample.0") < names.index("layer2.0.relu#2")
    assert "relu#2" not in names  # the stem ReLU runs once
    assert store.meta["layers"] == names[1:-1]
    assert store.meta["modules"]["layer1.0.relu#2"] == "ReLU"
    assert store.meta["shapes"]["layer4.1.relu#2"] == [4, 512, 1, 1]
    with torch.no_grad():
        x = torch.from_numpy(images)
        stem = torch.relu(model.bn1(model.conv1(x)))
        pooled = model.maxpool(stem)
        l1_first, l1_second = _block_by_hand(model.layer1[0], pooled)
        l1_out = torch.tensor(store.block("layer1.1.relu#2")[:])
        l2_first, l2_second = _block_by_hand(model.layer2[0], l1_out)
        scores = model(x.clone())
    close = {"rtol": 1e-4, "atol": 1e-5}
    np.testing.assert_allclose(store.block("relu")[:], stem.numpy(), **close)
    np.testing.assert_allclose(store.block("maxpool")[:], pooled.numpy(), **close)
    np.testing.assert_allclose(store.block("layer1.0.relu")[:], l1_first.numpy(), **close)
    np.testing.assert_allclose(store.block("layer1.0.relu#2")[:], l1_second.numpy(), **close)
    np.testing.assert_allclose(store.block("layer2.0.relu")[:], l2_first.numpy(), **close)
    np.testing.assert_allclose(store.block("layer2.0.relu#2")[:], l2_second.numpy(), **close)
    np.testing.assert_allclose(store.block("scores")[:], scores.numpy(), **close)
    assert not np.allclose(store.block("layer1.0.relu")[:], store.block("layer1.0.relu#2")[:])


def test_resnet18_explicit_layer_gives_both_calls_and_inplace_is_harmless():
    model = _resnet()
    images = np.random.default_rng(1).random((4, 3, 32, 32), dtype=np.float32)
    layers = "layer1.0.bn1,layer1.0.relu,layer1.0.bn2"
    store = capture(model, images, layers, batch_size=2, progress=False)
    assert store.names == [
        "input",
        "layer1.0.bn1",
        "layer1.0.relu",
        "layer1.0.bn2",
        "layer1.0.relu#2",
    ]
    assert store.meta["layers"] == store.names[1:]
    with torch.no_grad():
        block = model.layer1[0]
        x = model.maxpool(torch.relu(model.bn1(model.conv1(torch.from_numpy(images)))))
        bn1 = block.bn1(block.conv1(x))
        bn2 = block.bn2(block.conv2(torch.relu(bn1)))
    close = {"rtol": 1e-4, "atol": 1e-5}
    # the inplace ReLU and `out += identity` ran on these tensors after the hooks copied them
    assert (store.block("layer1.0.bn1")[:] < 0).any()
    np.testing.assert_allclose(store.block("layer1.0.bn1")[:], bn1.numpy(), **close)
    np.testing.assert_allclose(store.block("layer1.0.bn2")[:], bn2.numpy(), **close)
    np.testing.assert_allclose(store.block("layer1.0.relu")[:], torch.relu(bn1).numpy(), **close)
    np.testing.assert_allclose(
        store.block("layer1.0.relu#2")[:], torch.relu(bn2 + x).numpy(), **close
    )


# ----------------------------------------------------------------------- model state
def test_hooks_removed_and_modes_restored():
    model = _cnn()
    model.train()
    model.classifier[2].eval()  # a mixed state must come back exactly
    modes = {name: m.training for name, m in model.named_modules()}
    running = model.classifier[2].running_mean.clone()
    capture(model, _images(9), batch_size=4, progress=False)
    assert _all_hooks_removed(model)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert model.training
    torch.testing.assert_close(model.classifier[2].running_mean, running)
    # after an exception as well
    with pytest.raises(FactorlensError):
        capture(model, _images(9, channels=2), progress=False)
    assert _all_hooks_removed(model)
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_store_argument_handling(tmp_path):
    path = tmp_path / "acts"
    capture(_cnn(), _images(3), layers="features.0", store=str(path), progress=False)
    with pytest.raises(FactorlensError, match="`overwrite=True`"):
        capture(_cnn(), _images(3), layers="features.0", store=path, progress=False)
    # the refused capture must not have touched the existing store
    assert open_store(path).n_samples == 3
    capture(_cnn(), _images(4), layers="features.0", store=path, overwrite=True, progress=False)
    assert open_store(path).n_samples == 4
    used = MemoryStore()
    capture(_cnn(), _images(2), layers="features.0", store=used, progress=False)
    with pytest.raises(FactorlensError, match="new, empty store"):
        capture(_cnn(), _images(2), layers="features.0", store=used, progress=False)


def test_progress_bar_runs(capsys):
    store = capture(_cnn(), _images(6), layers="features.0", batch_size=2, progress=True)
    assert store.n_samples == 6
    assert "capture" in capsys.readouterr().err


def test_preprocess_errors_reported():
    def bad(_x):
        raise RuntimeError("mean has 3 entries")

    with pytest.raises(FactorlensError, match=r"preprocess failed.*\(2, 1, 8, 8\).*3 entries"):
        capture(_cnn(), _images(2), preprocess=bad, progress=False)
