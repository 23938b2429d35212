"""The third sweep: what people's models and image folders do. A model or hook that changes its
input in place, a hidden last layer, sys.exit in model code, folders with empty or hidden
class folders, a dict-returning model under quality, complex or train-mode layers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import analyze_args

HEAD = "import sys\nimport torch\nfrom torch import nn\n"
BODY = "        self.fc1 = nn.Linear(64, 3)\n        self.fc2 = nn.Linear(3, 3)\n"
MODELS = {
    "MulInput": "x.mul_(2)\n        return self.fc2(torch.relu(self.fc1(x.flatten(1))))",
    "ZeroInput": "y = self.fc2(torch.relu(self.fc1(x.flatten(1))))\n        x.zero_()\n"
    "        return y",
    "Negated": "return -self.fc2(torch.relu(self.fc1(x.flatten(1))))",
    "Plain": "return self.fc2(torch.relu(self.fc1(x.flatten(1))))",
    "Exits": "sys.exit(0)",
    "Dict": "return {'logits': self.fc2(torch.relu(self.fc1(x.flatten(1))))}",
    "TrainMode": "self.train()\n        return self.fc2(torch.relu(self.fc1(x.flatten(1))))",
    "RandomDict": "return {'y': self.fc2(torch.nn.functional.dropout(self.fc1(x.flatten(1))))}",
}


def _model_file(root: Path) -> Path:
    text = HEAD
    for name, forward in MODELS.items():
        text += (
            f"class {name}(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
            f"{BODY}    def forward(self, x):\n        {forward}\n"
        )
    text += (
        "class Fourier(nn.Module):\n    def forward(self, x):\n        return torch.fft.fft(x)\n"
        "class Complex(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.c = Fourier()\n        self.fc = nn.Linear(64, 3)\n"
        "    def forward(self, x):\n        return self.fc(self.c(x).real.flatten(1))\n"
        "Instance = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n"
        "class NeedsMask(Plain):\n    def forward(self, x, *, mask):\n"
        "        return super().forward(x * mask)\n"
    )
    path = root / "zoo_of_models.py"
    path.write_text(text)
    return path


def _analyze(p: dict[str, Path], cls: str, out: str, *extra: str) -> list[str]:
    args = analyze_args(p, p["root"] / out, *extra)
    i = args.index("--model")
    args[i + 1] = f"{_model_file(p['root'])}:{cls}"
    j = args.index("--weights")
    del args[j : j + 2]
    return args


def _inputs(out: Path) -> np.ndarray:
    with np.load(out / "inputs.npz") as f:
        return f["images_uint8"].copy()


@pytest.mark.parametrize("cls", ["MulInput", "ZeroInput"])
def test_a_model_that_changes_its_input_leaves_the_input_block_as_loaded(cli, project, cls):
    res = cli.ok(_analyze(project, cls, "out"))
    with np.load(project["data"]) as f:
        np.testing.assert_array_equal(_inputs(project["root"] / "out"), f["images"])
    assert "randomness" not in res.err  # the check ran each answer on its own copy


def test_a_preprocess_hook_that_works_in_place_leaves_the_input_block(cli, project) -> None:
    source = project["model"].read_text() + (
        "\n\ndef factorlens_preprocess(x):\n    return x.mul_(2).sub_(1)\n"
    )
    project["model"].write_text(source)
    cli.ok(analyze_args(project, project["root"] / "out"))
    with np.load(project["data"]) as f:
        np.testing.assert_array_equal(_inputs(project["root"] / "out"), f["images"])


@pytest.mark.parametrize(
    ("cls", "extra", "kept"),
    [("Plain", (), True), ("Negated", (), False), ("Plain", ("--layers", "fc1"), False)],
)
def test_predictions_are_saved_only_from_the_models_own_output(cli, project, cls, extra, kept):
    """A hidden last layer of K units, or an output changed after its layer, is no prediction."""
    names = project["root"] / "named.npz"
    with np.load(project["data"]) as f:
        np.savez(names, images=f["images"], labels=f["labels"], class_names=["a", "b", "c"])
    args = _analyze(project, cls, "out", *extra)
    args[args.index("--data") + 1] = f"npz:{names}"
    cli.ok(args)
    with np.load(project["root"] / "out" / "inputs.npz") as f:
        assert ("predictions" in f.files) is kept


def test_sys_exit_in_the_models_code_is_one_error(cli, project) -> None:
    cli.fails(_analyze(project, "Exits", "out"), "called sys.exit(0)", rc=1)


def test_quality_scores_a_model_that_returns_a_dict_with_select(cli, project) -> None:
    from factorlens.modelio import build_model

    model = f"{_model_file(project['root'])}:Dict"
    weights = project["root"] / "dict.pt"
    torch.save({"state_dict": build_model(model, seed=0).state_dict()}, weights)
    base = ["quality", "--model", model, "--data", f"npz:{project['data']}", "--no-rank",
            "--quiet", "--json", project["root"] / "q.json", weights]  # fmt: skip
    err = cli.fails(base, "returns a dict", "--select 'model output=logits'")
    cli.ok([*base, "--select", "model output=logits"])
    (row,) = json.loads((project["root"] / "q.json").read_text())
    assert 0 <= row["score"] <= 1, err


def test_a_complex_layer_is_refused_and_train_mode_is_warned_once(cli, project) -> None:
    cli.fails(_analyze(project, "Complex", "out", "--layers", "c,fc"), "complex", "'c'")
    res = cli.ok(_analyze(project, "TrainMode", "out2"))
    assert res.err.count("puts modules back in training mode") == 1


def test_a_spec_may_name_a_module_built_in_the_file(cli, project) -> None:
    cli.ok(_analyze(project, "Instance", "out", "--layers", "1"))
    assert json.loads((project["root"] / "out" / "result.json").read_text())["rank"] == 2


# ------------------------------------------------------------------------------ image folders
def _folder(root: Path, layout: dict[str, int], mode: str = "L") -> Path:
    from PIL import Image

    top = root / "imgs"
    rng = np.random.default_rng(0)
    for rel, count in layout.items():
        (top / rel).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = (rng.random((8, 8)) * 255).astype(np.uint8)
            Image.fromarray(pixels).convert(mode).save(top / rel / f"{i}.png")
    return top


def _on_folder(p: dict[str, Path], top: Path) -> list[str]:
    args = analyze_args(p, p["root"] / "out")
    args[args.index("--data") + 1] = f"folder:{top}"
    return args


def test_an_empty_class_folder_is_refused(cli, project) -> None:
    top = _folder(project["root"], {"a": 3, "b": 0, "c": 3})
    cli.fails(_on_folder(project, top), "class folder", "b holds no images")


def test_a_hidden_folder_is_no_class_and_what_is_not_read_is_said(cli, project) -> None:
    top = _folder(project["root"], {"a": 3, "b": 3, ".ipynb_checkpoints": 2, "a/sub": 2})
    res = cli.ok(_on_folder(project, top))
    assert "not read: .ipynb_checkpoints; 1 folder(s) inside class folders" in res.err
    result = json.loads((project["root"] / "out" / "result.json").read_text())
    assert result["meta"]["class_names"] == ["a", "b"] and result["n_samples"] == 6


def test_an_image_too_large_to_open_is_one_error(cli, project, monkeypatch) -> None:
    from PIL import Image

    top = _folder(project["root"], {"a": 2, "b": 2})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 8×8 = 64 > 2 × 10: a "bomb"
    cli.fails(_on_folder(project, top), "cannot read image", "0.png")


def test_a_stray_colour_image_is_named(cli, project) -> None:
    top = _folder(project["root"], {"a": 3, "b": 3})
    from PIL import Image

    Image.new("RGBA", (8, 8), (9, 9, 9, 255)).save(top / "b" / "stray.png")
    res = cli.run(_on_folder(project, top))
    assert "1 of the 7 images are in colour" in res.err and "stray.png" in res.err


def test_randomness_is_warned_about_when_the_model_returns_a_dict(cli, project) -> None:
    res = cli.ok(_analyze(project, "RandomDict", "out", "--layers", "fc1"))
    assert "gives different outputs for the same inputs" in res.err


def test_a_forward_that_needs_more_arguments_is_told_how_it_is_called(cli, project) -> None:
    args = _analyze(project, "NeedsMask", "out")
    cli.fails(args, "'mask'", "calls model(x) with one batch tensor", rc=1)


# ------------------------------------------------------------------ data with nothing to fit
def test_constant_blocks_are_named_and_all_constant_data_is_refused(project) -> None:
    from factorlens import CMTF
    from factorlens.errors import FactorlensError

    rng = np.random.default_rng(0)
    blocks = {"input": rng.random((30, 8)), "dead": np.zeros((30, 5)), "h": rng.random((30, 6))}
    notes = CMTF(2, n_init=1).fit(blocks).result_.spare_components()
    assert "dead is constant across the inputs (e.g. all zeros): no component can be in it" in notes
    same = {"input": np.ones((30, 8)), "h": np.tile(rng.random(6), (30, 1))}
    with pytest.raises(FactorlensError, match="every block is constant across the inputs"):
        CMTF(1, center=True).fit(same)


def test_a_penalty_that_zeroes_everything_says_so(project) -> None:
    from factorlens import CMTF

    rng = np.random.default_rng(0)
    blocks = {"input": rng.random((30, 8)), "h": rng.random((30, 6))}
    notes = CMTF(2, n_init=1, l1_penalty=1e6).fit(blocks).result_.spare_components()
    assert notes == [
        "the penalty (`l1_penalty` = 1e+06) set every component's strength to zero in every "
        "block: use a smaller one, or 'auto'"
    ]


@pytest.mark.parametrize(
    ("labels", "needle"),
    [(np.array([2**63 + 5] * 60, np.uint64), "beyond any class index"),
     (-np.ones(60, np.int64), "has negative labels")],
)  # fmt: skip
def test_npz_label_errors_name_the_labels_not_the_images(cli, project, labels, needle) -> None:
    bad = project["root"] / "bad.npz"
    with np.load(project["data"]) as f:
        np.savez(bad, images=f["images"], labels=labels)
    args = analyze_args(project, project["root"] / "out")
    args[args.index("--data") + 1] = f"npz:{bad}"
    err = cli.fails(args, needle)
    assert "'images' has" not in err
