"""Model zoos: the new architectures, build_zoo on quick digits and a tiny MNIST folder, reading a
zoo back, and the `factorlens zoo` command."""

from __future__ import annotations

import itertools
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from factorlens.cli import main
from factorlens.errors import FactorlensError
from factorlens.research.models import BNGapCNN, DeepBNGapCNN, SmallResNet, accuracy
from factorlens.research.zoo import (
    ENTRY_FIELDS,
    STEP_GROWTH,
    build_zoo,
    load_zoo,
    model_class,
    model_spec,
    parse_kinds,
    zoo_model,
    zoo_plan,
    zoo_test_data,
)


@pytest.fixture(scope="module")
def digits_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zoo") / "digits-digitscnn"
    build_zoo("digits", out, quick=True, progress=False)
    return out


# --------------------------------------------------------------------------------------------
# architectures


@pytest.mark.parametrize("cls", [BNGapCNN, DeepBNGapCNN, SmallResNet])
@pytest.mark.parametrize("size", [(8, 8), (28, 28), (9, 13)])
def test_new_architectures_take_any_size(cls: type[nn.Module], size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = cls().eval()
    assert model(torch.rand(3, 1, *size)).shape == (3, 10)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears == ["classifier.2"]
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _receptive_field(model: nn.Module) -> int:
    """Receptive field (px) of the last conv of a plain chain of convs, walked in order."""
    field, jump = 1, 1
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1:
            field += (m.kernel_size[0] - 1) * jump
            jump *= m.stride[0]
    return field


def test_deep_bngap_sees_whole_shapes_and_takes_colour() -> None:
    # the reason it exists: BN-GAP's last conv sees 9 px of a 32×32 image, this one 23
    assert _receptive_field(BNGapCNN()) == 9
    assert _receptive_field(DeepBNGapCNN()) == 23
    torch.manual_seed(0)
    model = DeepBNGapCNN(in_channels=3, width=4).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 4, 8, 8, 16, 16]
    assert [c.stride[0] for c in convs] == [1, 1, 2, 1, 2, 1]


def test_resnet_block_output_is_its_own_relu() -> None:
    model = SmallResNet().eval()
    seen = {}
    block = model.features[3]
    handle = block.relu.register_forward_hook(lambda m, i, o: seen.setdefault("relu", o))
    try:
        with torch.no_grad():
            out = block(torch.rand(2, 16, 8, 8))
    finally:
        handle.remove()
    assert torch.equal(seen["relu"], out)
    assert out.shape == (2, 32, 4, 4)


# --------------------------------------------------------------------------------------------
# build_zoo on digits


def test_quick_digits_zoo_entries(digits_zoo: Path) -> None:
    raw = json.loads((digits_zoo / "zoo.json").read_text())
    assert isinstance(raw, list)
    plan = zoo_plan("digits", quick=True)
    expected = len(plan.step_schedule) + len(plan.noise_levels) + len(plan.n_trains)
    assert len(raw) == expected
    for e in raw:
        assert set(ENTRY_FIELDS) <= set(e)
        assert e["arch"] == "digitscnn"
        assert e["model"] == "factorlens.research.models:DigitsCNN"
        assert e["dataset"] == "digits"
        assert e["seed"] == 0
        assert 0.0 <= e["test_accuracy"] <= 1.0
        assert e["checkpoint"] == f"{e['kind']}/{Path(e['checkpoint']).name}"
        assert (digits_zoo / e["checkpoint"]).is_file()
    steps = [e for e in raw if e["kind"] == "steps"]
    assert [e["steps"] for e in steps] == list(plan.step_schedule)
    assert steps[0]["steps"] == 0 and steps[0]["checkpoint"] == "steps/step-000000.pt"
    assert sorted({e["label_noise"] for e in raw if e["kind"] == "noise"}) == [0.0, 1.0]
    assert [e["n_train"] for e in raw if e["kind"] == "data"] == list(plan.n_trains)
    # training helps: the last step beats the initialisation by far
    assert steps[-1]["test_accuracy"] > 0.6 > steps[0]["test_accuracy"]


def test_full_label_noise_gives_chance_accuracy(digits_zoo: Path) -> None:
    noise = {
        e["label_noise"]: e["test_accuracy"] for e in load_zoo(digits_zoo) if e["kind"] == "noise"
    }
    assert noise[1.0] < 0.25
    assert noise[0.0] > 0.6


def test_zoo_model_reproduces_recorded_accuracy(digits_zoo: Path) -> None:
    entries = load_zoo(digits_zoo)
    test = zoo_test_data(entries[0])
    assert test.n_samples == 1797 - 1300
    for e in entries[:3]:
        model = zoo_model(e)
        assert not model.training
        assert Path(e["path"]).is_absolute()
        assert accuracy(model, test.images, test.labels) == pytest.approx(e["test_accuracy"])
    # by relative checkpoint and root
    bare = {k: v for k, v in entries[0].items() if k != "path"}
    model = zoo_model(bare, root=digits_zoo)
    assert accuracy(model, test.images, test.labels) == pytest.approx(entries[0]["test_accuracy"])


def test_zoo_is_reproducible(digits_zoo: Path, tmp_path: Path) -> None:
    build_zoo("digits", tmp_path / "again", kinds="steps", quick=True, progress=False)
    last = "steps/step-000040.pt"
    a = torch.load(digits_zoo / last, weights_only=True)
    b = torch.load(tmp_path / "again" / last, weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the same settings trained under another kind are the same weights too
    c = torch.load(digits_zoo / "noise/noise-000.pt", weights_only=True)
    assert all(torch.equal(a[k], c[k]) for k in a)


@given(steps=st.integers(1, 20_000), dataset=st.sampled_from(["digits", "mnist", "shapes"]))
def test_with_steps_ends_there_and_keeps_the_schedule_log_spaced(steps: int, dataset: str) -> None:
    plan = zoo_plan(dataset)
    longer = plan.with_steps(steps)
    schedule = longer.step_schedule
    assert longer.total_steps == steps and schedule[0] == 0
    assert all(a < b for a, b in itertools.pairwise(schedule))
    # the plan's own points below the end are kept; nothing else of the plan changes
    assert [s for s in schedule if s <= plan.total_steps and s < steps] == [
        s for s in plan.step_schedule if s < steps
    ]
    assert longer.noise_levels == plan.noise_levels and longer.lr == plan.lr
    # beyond the plan, consecutive checkpoints are at most STEP_GROWTH apart (the end aside)
    beyond = [s for s in schedule[:-1] if s >= plan.total_steps]
    assert all(b <= round(a * STEP_GROWTH) for a, b in itertools.pairwise(beyond))
    assert plan.with_steps(plan.total_steps) == plan


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "100"])
def test_with_steps_refuses_what_is_not_a_positive_integer(bad: object) -> None:
    with pytest.raises(FactorlensError, match="steps must be a positive integer"):
        zoo_plan("digits").with_steps(bad)  # type: ignore[arg-type]


def test_other_arch_and_seed(tmp_path: Path) -> None:
    path = build_zoo(
        "digits", tmp_path / "z", arch="bngap", kinds=["steps"], seed=3, quick=True, progress=False
    )
    entries = load_zoo(path)
    assert {e["arch"] for e in entries} == {"bngap"}
    assert {e["seed"] for e in entries} == {3}
    assert isinstance(zoo_model(entries[-1]), BNGapCNN)
    # seed 3 holds out other digits than seed 0
    assert not np.array_equal(
        zoo_test_data(entries[0]).images, zoo_test_data({**entries[0], "seed": 0}).images
    )


# --------------------------------------------------------------------------------------------
# MNIST folder (a tiny fake one in the real layout)


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def test_mnist_folder_zoo(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    np.savez(
        mnist / "train-10k.npz",
        images=rng.integers(0, 256, (120, 28, 28), dtype=np.uint8),
        labels=rng.integers(0, 10, 120),
    )
    (mnist / "t10k-images-idx3-ubyte").write_bytes(_idx(rng.integers(0, 256, (40, 28, 28))))
    (mnist / "t10k-labels-idx1-ubyte").write_bytes(_idx(rng.integers(0, 10, 40)))
    path = build_zoo(
        f"mnist:{mnist}", tmp_path / "z", kinds="steps,data", quick=True, progress=False
    )
    entries = load_zoo(path)
    assert {e["dataset"] for e in entries} == {f"mnist:{mnist.resolve()}"}
    assert {e["arch"] for e in entries} == {"mnistcnn"}
    assert {e["n_test"] for e in entries} == {40}
    # the data sizes are capped at the 120 training images there are
    assert [e["n_train"] for e in entries if e["kind"] == "data"] == [120, 120]
    assert zoo_test_data(entries[0]).n_samples == 40

    with pytest.raises(FactorlensError, match="needs 28×28"):
        build_zoo("digits", tmp_path / "bad", arch="mnistcnn", quick=True, progress=False)
    with pytest.raises(FactorlensError, match="without a split"):
        build_zoo(f"mnist:{mnist}:test", tmp_path / "bad", quick=True, progress=False)
    with pytest.raises(FactorlensError, match="does not exist"):
        build_zoo(f"mnist:{tmp_path / 'nope'}", tmp_path / "bad", quick=True, progress=False)
    assert not (tmp_path / "bad").exists()


def test_input_errors(tmp_path: Path) -> None:
    assert parse_kinds("data, steps") == ("steps", "data")
    with pytest.raises(FactorlensError, match="unknown zoo kind 'stpes'"):
        parse_kinds("stpes")
    with pytest.raises(FactorlensError, match="no zoo kinds"):
        parse_kinds(" , ")
    with pytest.raises(FactorlensError, match="digits, glyphs, shapes or mnist:DIR"):
        build_zoo("npz:x.npz", tmp_path / "z", progress=False)
    with pytest.raises(FactorlensError, match="unknown architecture 'resnt'"):
        build_zoo("digits", tmp_path / "z", arch="resnt", progress=False)
    with pytest.raises(FactorlensError, match="seed"):
        build_zoo("digits", tmp_path / "z", seed=-1, progress=False)
    with pytest.raises(FactorlensError, match="not a zoo"):
        load_zoo(tmp_path)
    (tmp_path / "zoo.json").write_text('[{"checkpoint": "a.pt"}]')
    with pytest.raises(FactorlensError, match="lacks"):
        load_zoo(tmp_path)
    with pytest.raises(FactorlensError, match="does not exist"):
        zoo_model({"arch": "digitscnn", "checkpoint": "a.pt"}, root=tmp_path)
    with pytest.raises(FactorlensError, match="unknown architecture"):
        zoo_model({"arch": "vgg", "checkpoint": "a.pt"}, root=tmp_path)


def test_zoo_written_before_the_move_still_loads(tmp_path: Path) -> None:
    # zoos built before the reference models moved to factorlens.research name the old module
    torch.manual_seed(0)
    net = SmallResNet().eval()
    (tmp_path / "steps").mkdir()
    torch.save(net.state_dict(), tmp_path / "steps" / "step-000000.pt")
    old = {
        "checkpoint": "steps/step-000000.pt",
        "kind": "steps",
        "arch": "resnet",
        "model": "factorlens.models:SmallResNet",
        "dataset": "digits",
        "test_accuracy": 0.1,
        "steps": 0,
        "label_noise": 0.0,
        "n_train": 1300,
        "seed": 0,
    }
    (tmp_path / "zoo.json").write_text(json.dumps([old]))
    (entry,) = load_zoo(tmp_path)
    assert entry["model"] == "factorlens.research.models:SmallResNet"
    assert json.loads((tmp_path / "zoo.json").read_text())[0]["model"] == old["model"]
    assert model_class(old["model"]) is SmallResNet
    assert model_class(entry["model"]) is SmallResNet
    model = zoo_model(entry)
    assert type(model) is model_class(entry["model"])
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in model.state_dict().items())

    assert model_spec("factorlens.research.models:DigitsCNN") == (
        "factorlens.research.models:DigitsCNN"
    )
    assert model_spec("mypkg.nets:Net") == "mypkg.nets:Net"
    with pytest.raises(FactorlensError, match="not a reference model"):
        model_class("os:system")
    with pytest.raises(FactorlensError, match="not a reference model"):
        model_class("factorlens.models:Nope")


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_zoo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "zoo"
    args = ["zoo", "--data", "digits", "--out", str(out), "--quick", "--kinds", "steps,noise"]
    assert main([*args, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed
    assert "steps/step-000000.pt" in printed and "noise/noise-100.pt" in printed
    entries = load_zoo(out)
    assert {e["kind"] for e in entries} == {"steps", "noise"}

    # an existing zoo is refused without --overwrite, and left alone
    before = (out / "zoo.json").read_text()
    assert main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "zoo.json").read_text() == before

    # --overwrite replaces it; progress lines go to stderr
    assert (
        main(
            [
                "zoo",
                "--data",
                "digits",
                "--out",
                str(out),
                "--quick",
                "--kinds",
                "steps",
                "--overwrite",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "building a quick digitscnn zoo" in captured.err
    assert {e["kind"] for e in load_zoo(out)} == {"steps"}
    assert not list((out / "noise").glob("*.pt"))


def test_cli_zoo_steps_trains_every_run_that_long(tmp_path: Path) -> None:
    out = tmp_path / "zoo"
    argv = ["zoo", "--data", "digits", "--out", str(out), "--quick", "--kinds", "steps,noise"]
    assert main([*argv, "--steps", "60", "--quiet"]) == 0
    entries = load_zoo(out)
    plan = zoo_plan("digits", quick=True).with_steps(60)
    assert [e["steps"] for e in entries if e["kind"] == "steps"] == list(plan.step_schedule)
    assert plan.step_schedule[-2:] == (40, 60)  # the quick plan ends at 40
    assert {e["steps"] for e in entries if e["kind"] == "noise"} == {60}
    # the longest steps checkpoint and the 0 % noise run are the same 60-step model
    a = torch.load(out / "steps/step-000060.pt", weights_only=True)
    b = torch.load(out / "noise/noise-000.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_zoo_refuses_bad_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["zoo", "--data", "digits", "--out", str(tmp_path / "z"), "--steps", "0"])
    assert "--steps" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()


def test_cli_zoo_refuses_other_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["zoo", "--data", "digits", "--out", str(tmp_path), "--quick", "--quiet"]) == 2
    assert "already holds other files" in capsys.readouterr().err
    assert (
        main(["zoo", "--data", "digits", "--out", str(tmp_path / "x"), "--arch", "mnistcnn"]) == 2
    )
    assert "needs 28×28" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"
