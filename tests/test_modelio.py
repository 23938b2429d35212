"""Tests for factorlens.modelio: model files, checkpoint formats, pickles, hooks, devices."""

from __future__ import annotations

import argparse
import os
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from factorlens.errors import FactorlensError
from factorlens.modelio import build_model, find_preprocess_hook, load_model_class, resolve_device

MODEL_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
            self.head = nn.Linear(2 * 2 * 2, 3)

        def forward(self, x):
            return self.head(self.features(x).flatten(1))


    class OtherNet(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.lin = nn.Linear(width, 1)


    class HookedNet(TinyNet):
        @staticmethod
        def factorlens_preprocess(x):
            return x * 3


    def make_tiny():
        return TinyNet()


    def not_a_model():
        return 42


    def factorlens_preprocess(x):
        return x - 1


    NUMBER = 5
    """
)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_model.py"
    path.write_text(MODEL_SOURCE)
    return path


def one_line(exc_info: pytest.ExceptionInfo) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def reference_state(model_file: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    cls = load_model_class(f"{model_file}:TinyNet")
    return {k: v.clone() for k, v in cls().state_dict().items()}


def assert_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


# --------------------------------------------------------------------------------------------
# model class


def test_load_model_class(model_file: Path) -> None:
    cls = load_model_class(f"{model_file}:TinyNet")
    assert isinstance(cls, type) and issubclass(cls, nn.Module)
    out = cls()(torch.zeros(2, 1, 4, 4))
    assert out.shape == (2, 3)
    # importing again gives the same class (cached), a factory function also works
    assert load_model_class(f"{model_file}:TinyNet") is cls
    assert isinstance(load_model_class(f"{model_file}:make_tiny")(), nn.Module)


def test_load_model_class_errors(model_file: Path, tmp_path: Path) -> None:
    with pytest.raises(FactorlensError) as exc:
        load_model_class(f"{tmp_path / 'missing.py'}:Net")
    assert "missing.py" in one_line(exc)

    with pytest.raises(FactorlensError) as exc:
        load_model_class(f"{model_file}:TinyNt")
    msg = one_line(exc)
    assert "did you mean: TinyNet" in msg

    with pytest.raises(FactorlensError) as exc:
        load_model_class(str(model_file))
    msg = one_line(exc)
    assert "FILE.py:ClassName" in msg and "TinyNet" in msg

    with pytest.raises(FactorlensError, match="not a class"):
        load_model_class(f"{model_file}:NUMBER")

    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise ImportError('no module named fancy_layers\\nat all')\n")
    with pytest.raises(FactorlensError) as exc:
        load_model_class(f"{broken}:Net")
    msg = one_line(exc)
    assert "ImportError" in msg and "fancy_layers" in msg

    syntax = tmp_path / "syntax.py"
    syntax.write_text("class Net(:\n")
    with pytest.raises(FactorlensError, match="SyntaxError"):
        load_model_class(f"{syntax}:Net")


def test_model_file_can_import_siblings(tmp_path: Path) -> None:
    (tmp_path / "layers_helper_xyz.py").write_text("from torch import nn\nWIDTH = 4\n")
    (tmp_path / "net.py").write_text(
        "from torch import nn\nimport layers_helper_xyz as h\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin = nn.Linear(h.WIDTH, 2)\n"
    )
    model = build_model(f"{tmp_path / 'net.py'}:Net")
    assert model.lin.in_features == 4


# --------------------------------------------------------------------------------------------
# preprocess hook


def test_find_preprocess_hook(model_file: Path, tmp_path: Path) -> None:
    x = torch.ones(1, 1, 2, 2)
    module_hook = find_preprocess_hook(f"{model_file}:TinyNet")
    assert module_hook is not None
    assert torch.equal(module_hook(x), x - 1)
    class_hook = find_preprocess_hook(f"{model_file}:HookedNet")
    assert class_hook is not None
    assert torch.equal(class_hook(x), x * 3)  # the class's staticmethod wins

    plain = tmp_path / "plain.py"
    plain.write_text("from torch import nn\nclass Net(nn.Module):\n    pass\n")
    assert find_preprocess_hook(f"{plain}:Net") is None

    bad = tmp_path / "badhook.py"
    bad.write_text(
        "from torch import nn\nfactorlens_preprocess = 3\nclass Net(nn.Module):\n    pass\n"
    )
    with pytest.raises(FactorlensError, match="not a function"):
        find_preprocess_hook(f"{bad}:Net")

    method = tmp_path / "methodhook.py"
    method.write_text(
        "from torch import nn\nclass Net(nn.Module):\n"
        "    def factorlens_preprocess(self, x):\n        return x\n"
    )
    with pytest.raises(FactorlensError, match="staticmethod"):
        find_preprocess_hook(f"{method}:Net")


# --------------------------------------------------------------------------------------------
# checkpoints


def test_build_without_weights(model_file: Path) -> None:
    model = build_model(f"{model_file}:TinyNet")
    assert not model.training
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "model_state_dict"])
def test_checkpoint_formats(model_file: Path, tmp_path: Path, wrap: str) -> None:
    state = reference_state(model_file)
    obj = state if wrap == "plain" else {wrap: state, "epoch": 7, "optimizer": {"lr": 0.1}}
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    model = build_model(f"{model_file}:TinyNet", weights=str(path))
    assert_weights(model, state)
    assert not model.training


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_prefix_stripped(model_file: Path, tmp_path: Path, prefix: str) -> None:
    state = reference_state(model_file)
    path = tmp_path / "dp.pt"
    torch.save({"state_dict": {prefix + k: v for k, v in state.items()}}, path)
    assert_weights(build_model(f"{model_file}:TinyNet", weights=path), state)


def test_legacy_serialization(model_file: Path, tmp_path: Path) -> None:
    state = reference_state(model_file)
    path = tmp_path / "legacy.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert_weights(build_model(f"{model_file}:TinyNet", weights=path), state)


def test_wrong_keys_named(model_file: Path, tmp_path: Path) -> None:
    state = reference_state(model_file)
    state["head.extra"] = torch.zeros(1)
    state["features.0.weight"] = torch.zeros(5, 1, 3, 3)
    del state["head.bias"]
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(FactorlensError) as exc:
        build_model(f"{model_file}:TinyNet", weights=path)
    msg = one_line(exc)
    assert "missing keys: head.bias" in msg
    assert "unexpected keys: head.extra" in msg
    assert "features.0.weight (5, 1, 3, 3) vs model (2, 1, 3, 3)" in msg


def test_many_wrong_keys_capped(model_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "many.pt"
    torch.save({f"layer{i}.weight": torch.zeros(1) for i in range(9)}, path)
    with pytest.raises(FactorlensError) as exc:
        build_model(f"{model_file}:TinyNet", weights=path)
    msg = one_line(exc)
    assert "layer4.weight" in msg and "layer5.weight" not in msg and "+4 more" in msg


def test_dict_without_weights(model_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "note": "hello"}, path)
    with pytest.raises(FactorlensError) as exc:
        build_model(f"{model_file}:TinyNet", weights=path)
    assert "'epoch'" in one_line(exc) and "'state_dict'" in str(exc.value)
    torch.save([torch.zeros(2)], path)
    with pytest.raises(FactorlensError, match="holds a list"):
        build_model(f"{model_file}:TinyNet", weights=path)


def test_pickled_full_model(model_file: Path, tmp_path: Path) -> None:
    cls = load_model_class(f"{model_file}:TinyNet")
    torch.manual_seed(5)
    full = cls()
    path = tmp_path / "full.pt"
    torch.save(full, path)
    with pytest.raises(FactorlensError) as exc:
        build_model(f"{model_file}:TinyNet", weights=path)
    msg = one_line(exc)
    assert "pickled" in msg and "pass `trust_pickle=True`" in msg and "TinyNet" in msg
    model = build_model(f"{model_file}:TinyNet", weights=path, trust_pickle=True)
    assert_weights(model, full.state_dict())
    assert not model.training

    # a trusted pickle holding a state dict plus other Python objects
    torch.save({"model": full.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(FactorlensError, match="`trust_pickle=True`"):
        build_model(f"{model_file}:TinyNet", weights=path)
    model = build_model(f"{model_file}:TinyNet", weights=path, trust_pickle=True)
    assert_weights(model, full.state_dict())


def test_pickled_from_script_main(model_file: Path, tmp_path: Path) -> None:
    """A model pickled from a training script (class saved as __main__.TinyNet) still loads."""
    cls = load_model_class(f"{model_file}:TinyNet")
    net = cls()
    original = cls.__module__
    try:
        cls.__module__ = "__main__"
        import __main__

        __main__.TinyNet = cls  # as if defined in the script that saved it
        path = tmp_path / "main.pt"
        torch.save(net, path)
    finally:
        cls.__module__ = original
        del __main__.TinyNet
    model = build_model(f"{model_file}:TinyNet", weights=path, trust_pickle=True)
    assert_weights(model, net.state_dict())


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "text", "legacy_truncated"])
@pytest.mark.parametrize("trust", [False, True])
def test_unreadable_checkpoints(model_file: Path, tmp_path: Path, kind: str, trust: bool) -> None:
    path = tmp_path / f"{kind}.pt"
    if kind == "garbage":
        path.write_bytes(os.urandom(2000))
    elif kind == "truncated":
        torch.save(reference_state(model_file), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "legacy_truncated":
        torch.save(reference_state(model_file), path, _use_new_zipfile_serialization=False)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("these are not the weights you are looking for")
    with pytest.raises(FactorlensError) as exc:
        build_model(f"{model_file}:TinyNet", weights=path, trust_pickle=trust)
    msg = one_line(exc)
    assert str(path) in msg and "cannot read checkpoint" in msg


def test_missing_checkpoint(model_file: Path, tmp_path: Path) -> None:
    with pytest.raises(FactorlensError) as exc:
        build_model(f"{model_file}:TinyNet", weights=tmp_path / "nope.pt")
    assert "nope.pt" in one_line(exc)


def test_constructor_problems(model_file: Path) -> None:
    with pytest.raises(FactorlensError) as exc:
        build_model(f"{model_file}:OtherNet")
    assert "OtherNet()" in one_line(exc) and "TypeError" in str(exc.value)
    with pytest.raises(FactorlensError, match=r"not a torch\.nn\.Module"):
        build_model(f"{model_file}:not_a_model")


# --------------------------------------------------------------------------------------------
# devices


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(FactorlensError) as exc:
        resolve_device("tpu-ish")
    one_line(exc)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error; CUDA is present")
def test_cuda_unavailable(model_file: Path) -> None:
    for name in ("cuda", "cuda:0"):
        with pytest.raises(FactorlensError) as exc:
            resolve_device(name)
        assert "CUDA is not available" in one_line(exc)
    with pytest.raises(FactorlensError, match="CUDA is not available"):
        build_model(f"{model_file}:TinyNet", device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_build_on_cuda(model_file: Path) -> None:
    model = build_model(f"{model_file}:TinyNet", device="cuda")
    assert next(model.parameters()).device.type == "cuda"
    with pytest.raises(FactorlensError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
