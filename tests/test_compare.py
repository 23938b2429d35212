"""Comparing models in one joint factorization: the model set, sharing, CKA, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from factorlens.cli import main
from factorlens.comparison import (
    component_sharing,
    label_of,
    linear_cka,
    matched_layers,
    strength_contrasts,
)
from factorlens.errors import FactorlensError
from factorlens.factorize.compare import congruence
from factorlens.modelset import ModelSet, check_label, model_layers
from factorlens.pipeline import compare, compare_store, load
from factorlens.testing import memory_store, model_pair_blocks, random_unit


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 3))


def _planted(seed: int, *, self_compare: bool = False):
    blocks, owners = model_pair_blocks(seed)
    if self_compare:  # the second model's layers are the first's
        blocks = {k: v for k, v in blocks.items() if not k.startswith("b.")}
        blocks.update({"b." + k[2:]: v.copy() for k, v in blocks.items() if k.startswith("a.")})
        owners = [["a", "b"] if "a" in o else [] for o in owners]
    store = memory_store(blocks, {"models": {"a": "model a", "b": "model b"}})
    return store, owners


def test_planted_shared_and_unique_components_are_recovered(tmp_path) -> None:
    recovered = 0
    for seed in range(5):
        store, owners = _planted(seed)
        result = compare_store(
            store, out=tmp_path / str(seed), rank=len(owners), progress=False, report=False
        )
        sharing = component_sharing(result)
        truth = random_unit(np.random.default_rng(seed), 300, len(owners))  # the planted A
        cong = np.abs(congruence(truth, result.A))
        rows, cols = linear_sum_assignment(-cong)
        assert cong[rows, cols].min() > 0.6  # every planted component found
        recovered += all(
            sorted(sharing.carriers(c)) == sorted(owners[r])
            for r, c in zip(rows, cols, strict=True)
        )
    assert recovered >= 4
    kinds = sharing.kinds
    assert kinds.count("all") == 3 and kinds.count("unique") == 4
    # a unique component has no strength at all in the other model: an infinite contrast
    unique = {r for r, k in enumerate(kinds) if k == "unique"}
    assert {
        c.component for c in strength_contrasts(result, "a", "b") if c.ratio == np.inf
    } == unique
    saved = json.loads((tmp_path / "4" / "result.json").read_text())
    assert saved["meta"]["comparison"]["sharing"]["labels"] == ["a", "b"]
    assert saved["meta"]["comparison"]["cka"]["pairs"][0]["a"] == "a"


def test_a_model_compared_with_itself_shares_everything(tmp_path) -> None:
    store, _ = _planted(0, self_compare=True)
    result = compare_store(store, out=tmp_path / "self", rank=7, progress=False, report=False)
    sharing = component_sharing(result)
    assert set(sharing.kinds) <= {"all", "none"}
    assert sharing.counts()["all"] >= 5  # the first model's 5 planted components
    assert strength_contrasts(result, "a", "b") == []
    cka = result.meta["comparison"]["cka"]["pairs"][0]["layers"]
    assert [round(v, 4) for _, _, v in cka] == [1.0, 1.0, 1.0]


def test_linear_cka_matches_the_formula_and_its_invariances() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((80, 20))
    Q, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    Y = rng.standard_normal((80, 15))
    blocks = {
        "input": rng.standard_normal((80, 4)),
        "m.l1": X,
        "m.l2": Y,
        "n.l1": 3.0 * X @ Q + 5.0,  # rotated, scaled, shifted: the same representation
        "n.l2": X[:, :15],
    }
    store = memory_store(blocks, {"models": {"m": "", "n": ""}})
    out = linear_cka(store, ["m", "n"])
    values = {(a, b): v for a, b, v in out["pairs"][0]["layers"]}
    assert values[("l1", "l1")] == pytest.approx(1.0, abs=1e-5)

    def cka(a, b):  # the definition, in float64
        a, b = a - a.mean(0), b - b.mean(0)
        return np.linalg.norm(a.T @ b) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))

    assert values[("l2", "l2")] == pytest.approx(cka(Y, X[:, :15]), abs=1e-5)
    small = linear_cka(store, ["m", "n"], memory_budget=4 * 4 * 50**2)  # four Grams of 50×50
    assert small["n"] == 50


def test_layers_match_by_name_else_by_relative_depth() -> None:
    assert matched_layers(["c1", "c2", "fc"], ["c1", "c2", "fc"]) == [(0, 0), (1, 1), (2, 2)]
    assert matched_layers(["a", "b"], ["x", "y", "z"]) == [(0, 0), (1, 2)]
    assert matched_layers(["x", "y", "z"], ["a", "b"]) == [(0, 0), (2, 1)]
    assert matched_layers([], ["a"]) == []


def test_model_set_prefixes_every_block_and_copies_a_repeated_model() -> None:
    net = _net(0)
    models = ModelSet({"clean": net, "again": net})
    assert models.clean is net and models.again is not net  # its own modules
    names = model_layers(models, {"clean": "3"})
    assert names == ["clean.3", "again.1", "again.2", "again.3"]
    assert label_of("again.2", models.labels) == "again"
    assert label_of("input", models.labels) is None
    x = torch.zeros(2, 1, 8, 8)
    assert torch.equal(models(x), net(x))


@pytest.mark.parametrize("label", ["", "a.b", "input", "eval", "-x", "a b", 3])
def test_unusable_labels_are_refused(label) -> None:
    with pytest.raises(FactorlensError, match="label"):
        check_label(label)


def test_model_set_refuses_one_model_and_unknown_layer_labels() -> None:
    with pytest.raises(FactorlensError, match="two or more models"):
        ModelSet({"a": _net(0)})
    models = ModelSet({"a": _net(0), "b": _net(1)})
    with pytest.raises(FactorlensError, match="not model labels"):
        model_layers(models, {"c": "1"})
    with pytest.raises(FactorlensError, match="model 'b': unknown layer 'fc'"):
        model_layers(models, {"b": "fc"})


def test_compare_api_end_to_end_on_digits(tmp_path) -> None:
    from factorlens.data import load_data

    data = load_data("digits").subset(120, random_state=0)
    result = compare(
        {"one": _net(0), "two": _net(1)},
        data,
        out=tmp_path / "cmp",
        rank=3,
        progress=False,
    )
    assert result.block_names[0] == "input"
    assert {n.split(".")[0] for n in result.block_names[1:]} == {"one", "two"}
    assert result.meta["models"] == {"one": "Sequential", "two": "Sequential"}
    page = (tmp_path / "cmp" / "index.html").read_text()
    assert 'id="compare"' in page and "Linear CKA between matched layers" in page
    again = load(tmp_path / "cmp")
    assert component_sharing(again).labels == ["one", "two"]


def test_cli_compare_two_checkpoints_then_from_the_store(project, tmp_path, capsys) -> None:
    other = tmp_path / "other.pt"
    state = torch.load(project["weights"])["state_dict"]
    torch.save({k: v + 0.05 * torch.randn_like(v) for k, v in state.items()}, other)
    args = [
        "compare",
        "--model", f"{project['model']}:TinyNet",
        "--weights", str(project["weights"]),
        "--weights", str(other),
        "--data", f"npz:{project['data']}",
        "--layers", "features.*",
        "--layers", "other=classifier.1",
        "--rank", "3",
        "--store", str(tmp_path / "acts.zarr"),
        "--out", str(tmp_path / "cmp"),
        "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "components shared by all 2 models" in out and "report:" in out
    assert "linear CKA of tiny and other, matched layers in order:" in out
    assert "inf×" not in out
    result = load(tmp_path / "cmp")
    assert list(result.meta["models"]) == ["tiny", "other"]
    assert [n for n in result.block_names if n.startswith("other.")] == ["other.classifier.1"]
    assert len([n for n in result.block_names if n.startswith("tiny.")]) == 3
    again = ["compare", "--store", str(tmp_path / "acts.zarr"), "--rank", "2"]
    assert main([*again, "--out", str(tmp_path / "cmp2"), "--quiet"]) == 0
    assert load(tmp_path / "cmp2").rank == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "two or more models"),
        (["--weights", "W"] * 3 + ["--model", "M"], "give one --weights per --model"),
        (["--weights", "W", "--weights", "W", "--label", "x"], "give one per model"),
        (["--weights", "W", "--weights", "W", "--label", "x", "--label", "x"], "twice"),
    ],
)
def test_cli_compare_refuses_unpaired_models(project, tmp_path, capsys, extra, message) -> None:
    spec = f"{project['model']}:TinyNet"
    extra = [str(project["weights"]) if e == "W" else spec if e == "M" else e for e in extra]
    args = ["compare", "--model", spec, *extra, "--data", f"npz:{project['data']}"]
    assert main([*args, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "o").exists()


def test_a_model_set_of_model_files_travels_to_dask_workers(project, tmp_path) -> None:
    """Each model file's classes go by value: a worker cannot import a file by name."""
    import subprocess
    import sys

    from factorlens.modelio import build_model
    from factorlens.sharded import _model_bytes

    spec = f"{project['model']}:TinyNet"
    models = ModelSet({"a": build_model(spec, project["weights"]), "b": build_model(spec)})
    pickled = tmp_path / "models.pkl"
    pickled.write_bytes(_model_bytes(models))
    code = (
        "import cloudpickle, sys, torch; m = cloudpickle.loads(open(sys.argv[1], 'rb').read()); "
        "print(type(m.a).__name__, tuple(m(torch.zeros(2, 1, 8, 8)).shape))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(pickled)], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["TinyNet", "(2,", "3)"]
