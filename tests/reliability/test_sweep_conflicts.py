"""The third hostile sweep: options that conflict or do nothing are refused before any work,
stores named through links, results of one kind written over another's, quality's --json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import analyze_args, snapshot

from factorlens.modelio import build_model
from factorlens.output import read_manifest


def _model(p: dict[str, Path]) -> list[str]:
    return ["--model", f"{p['model']}:TinyNet", "--data", f"npz:{p['data']}"]


def _quality(p: dict[str, Path], *extra: object) -> list[object]:
    """``factorlens quality --no-rank`` of the tiny model's two checkpoints, plus ``extra``."""
    second = p["root"] / "second.pt"
    if not second.exists():
        state = torch.load(p["weights"])["state_dict"]
        torch.save({"state_dict": {k: v * 0.5 for k, v in state.items()}}, second)
    return ["quality", *_model(p), "--no-rank", "--quiet", *extra, p["weights"], second]


# ---------------------------------------------------------------- refused before any work
CONFLICTS = {
    "nonneg with center": (("--nonneg", "--center"), ("--nonneg", "--center")),
    "nonneg with compress-rows": (("--nonneg", "--compress-rows", "20"), ("--compress-rows",)),
    "sketch with a store": (("--sketch", "40", "--store", "{root}/acts"), ("--sketch", "--store")),
    "tensor layer not captured": (
        ("--tensor-layers", "nothing", "--store", "{root}/acts"),
        ("--tensor-layers", "nothing", "features.0"),
    ),
    "select of a layer that returns a tensor": (
        ("--select", "features.0=0", "--store", "{root}/acts"),
        ("features.0", "Tensor"),
    ),
}


@pytest.mark.parametrize(
    ("command", "case"),
    [(c, k) for c in ("analyze", "rank") for k in sorted(CONFLICTS)
     if not (c == "rank" and "--compress-rows" in CONFLICTS[k][0])],  # no such flag there
)  # fmt: skip
def test_conflicting_options_are_refused_before_the_capture(cli, project, command, case) -> None:
    extra, needles = CONFLICTS[case]
    extra = tuple(e.format(root=project["root"]) for e in extra)
    args = analyze_args(project, project["root"] / "out", *extra)
    if command == "rank":  # the same options on the rank scan's command line
        args = ["rank", *args[1:]]
        i = args.index("--rank")
        del args[i : i + 2]
        args += ["--max-rank", "2"]
    cli.fails(args, *needles)
    assert not (project["root"] / "out").exists()
    assert not (project["root"] / "acts").exists()  # no capture was made, then dropped


def test_an_existing_store_is_not_replaced_by_a_run_that_cannot_fit(cli, project) -> None:
    store = project["root"] / "acts"
    cli.ok(analyze_args(project, project["root"] / "first", "--store", store))
    before = snapshot(store)
    again = ("--store", store, "--overwrite", "--nonneg", "--center")
    cli.fails(analyze_args(project, project["root"] / "out", *again), "--center")
    assert snapshot(store) == before


def test_the_demo_refuses_conflicting_options_before_it_trains(cli, project) -> None:
    out = project["root"] / "demo"
    cli.fails(["demo", "--nonneg", "--compress-rows", "10", "--out", out, "--quiet"], "--nonneg")
    assert not out.exists()


def test_options_that_would_do_nothing_are_refused(cli, project) -> None:
    cli.fails(_quality(project, "--max-rank", "5"), "--max-rank", "--no-rank")
    scratch = project["root"] / "scratch"
    scratch.mkdir()
    args = ["quality", *_model(project), "--quiet", "--scratch", scratch, "--sketch", "40",
            project["weights"]]  # fmt: skip
    cli.fails(args, "--sketch", "--scratch")


def test_more_samples_asked_than_the_data_holds_is_said(cli, project) -> None:
    res = cli.ok(analyze_args(project, project["root"] / "out", "--n-samples", "500"))
    assert "--n-samples 500 is more than the data holds; all its 60 inputs are used" in res.err


def test_a_sketch_for_a_fixed_rank_is_checked_against_that_rank(cli, project) -> None:
    """--no-rank fits --rank alone: a sketch of 8 directions serves rank 2 (not --max-rank)."""
    out = project["root"] / "q"
    cli.ok(_quality(project, "--rank", "2", "--sketch", "8", "--memory", "1K", "--out", out))
    result = json.loads((out / "checkpoints" / "01-tiny" / "result.json").read_text())
    assert result["rank"] == 2
    again = ("--rank", "2", "--sketch", "2", "--memory", "1K", "--out", out, "--overwrite")
    err = cli.fails(_quality(project, *again), "--sketch")
    assert "at least rank + 1" in err


def test_the_rank_scan_refuses_too_few_inputs_in_one_line(cli, project) -> None:
    for n in ("1", "3"):
        args = ["rank", *_model(project), "--weights", project["weights"], "--n-samples", n,
                "--out", project["root"] / "out", "--quiet"]  # fmt: skip
        cli.fails(args, "at least 4 inputs", f"got {n}")


# ---------------------------------------------------------------------------- stores by link
def test_a_store_named_by_a_link_is_replaced_where_the_link_points(cli, project) -> None:
    real = project["root"] / "acts"
    cli.ok(analyze_args(project, project["root"] / "a", "--store", real))
    link = project["root"] / "acts-link"
    link.symlink_to(real, target_is_directory=True)
    cli.ok(analyze_args(project, project["root"] / "b", "--store", link, "--overwrite",
                        "--n-samples", "40"))  # fmt: skip
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads((real / "zarr.json").read_text())["attributes"]["n_samples"] == 40
    assert not [p.name for p in project["root"].iterdir() if ".staging-" in p.name]


def test_a_store_named_by_a_dangling_link_is_refused_before_the_capture(cli, project) -> None:
    link = project["root"] / "acts"
    link.symlink_to(project["root"] / "nowhere")
    cli.fails(analyze_args(project, project["root"] / "out", "--store", link),
              "symbolic link", "does not exist")  # fmt: skip
    assert not (project["root"] / "nowhere").exists()


def test_resume_of_a_complete_store_says_how_to_use_it(cli, project) -> None:
    store = project["root"] / "acts"
    cli.ok(analyze_args(project, project["root"] / "a", "--store", store))
    err = cli.fails(analyze_args(project, project["root"] / "b", "--store", store, "--resume"),
                    "already complete")  # fmt: skip
    assert "--store without --model" in err and "drop --resume to use it" not in err


# ------------------------------------------------------- one result kind written over another
def _listed(out: Path) -> set[str]:
    return read_manifest(out) or set()


def test_an_analysis_over_a_quality_run_leaves_none_of_its_files(cli, project) -> None:
    out = project["root"] / "out"
    cli.ok(_quality(project, "--rank", "2", "--out", out))
    assert (out / "quality.json").exists() and (out / "checkpoints").is_dir()
    (out / "notes.txt").write_text("mine")
    cli.ok(analyze_args(project, out, "--overwrite"))
    assert not (out / "quality.json").exists() and not (out / "checkpoints").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert {f for f in _listed(out) if f.startswith("checkpoints/")} == set()
    assert all((out / f).exists() for f in _listed(out))


def test_a_quality_run_over_an_analysis_leaves_none_of_its_files(cli, project) -> None:
    out = project["root"] / "out"
    cli.ok(analyze_args(project, out))
    cli.ok(_quality(project, "--rank", "2", "--out", out, "--overwrite"))
    for stale in ("result.json", "factors.npz", "inputs.npz"):
        assert not (out / stale).exists(), stale
    cli.fails(["report", out, "--out", project["root"] / "rep"], "result.json")


def test_a_report_into_another_result_folder_replaces_that_result(cli, project) -> None:
    source, other = project["root"] / "source", project["root"] / "other"
    cli.ok(analyze_args(project, source))
    cli.ok(analyze_args(project, other, "--rank", "3"))
    cli.ok(["report", source, "--out", other, "--overwrite"])
    assert not (other / "result.json").exists() and (other / "index.html").exists()
    assert _listed(other) <= {f for f in _listed(other) if f == "index.html" or "figures/" in f}
    # in place, the result the report shows stays
    cli.ok(["report", source])
    assert (source / "result.json").exists() and (source / "factors.npz").exists()


def test_a_quality_report_rewritten_from_its_checkpoints_keeps_them(cli, project) -> None:
    out = project["root"] / "q"
    cli.ok(_quality(project, "--rank", "2", "--out", out))
    parts = sorted((out / "checkpoints").iterdir())
    cli.ok(["report", *parts, "--out", out, "--overwrite", "--main", "2"])
    assert all((p / "result.json").exists() for p in parts)
    assert (out / "quality.json").exists()


# ----------------------------------------------------------------------------- quality --json
def test_quality_json_into_a_folder_is_refused_in_one_line(cli, project) -> None:
    folder = project["root"] / "scores"
    folder.mkdir()
    cli.fails(_quality(project, "--json", folder, "--overwrite"), "is a folder")


def test_quality_json_onto_a_file_of_its_own_result_is_refused(cli, project) -> None:
    out = project["root"] / "q"
    cli.fails(_quality(project, "--out", out, "--json", out / "index.html"), "--json", "--out")
    assert not out.exists()
    cli.ok(_quality(project, "--out", out, "--json", out / "scores.json", "--overwrite"))
    assert json.loads((out / "scores.json").read_text()) == json.loads(
        (out / "quality.json").read_text()
    )


def test_quality_with_equal_scores_says_the_correlation_is_undefined(cli, project) -> None:
    res = cli.ok(["quality", *_model(project), "--no-rank", "--quiet", project["weights"],
                  project["weights"]])  # fmt: skip
    assert "undefined, every checkpoint has the same" in res.out
    assert "nan" not in res.out and "Warning" not in res.err


# ---------------------------------------------------------------------------------- the seed
def test_the_seed_sets_the_random_weights_of_a_model_without_weights(project) -> None:
    spec = f"{project['model']}:TinyNet"

    def first_weight(seed: int | None) -> np.ndarray:
        return build_model(spec, seed=seed).features[0].weight.detach().numpy().copy()

    torch.manual_seed(123)
    state = torch.get_rng_state()
    np.testing.assert_array_equal(first_weight(1), first_weight(1))
    assert not np.array_equal(first_weight(1), first_weight(2))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched


# ----------------------------------------------------------------------- compare and report
def _compare(p: dict[str, Path], out: Path, *extra: object) -> list[object]:
    """``factorlens compare`` of the tiny model's checkpoint against a second one."""
    _quality(p)  # writes second.pt
    return ["compare", "--model", f"{p['model']}:TinyNet", "--weights", p["weights"],
            "--weights", p["root"] / "second.pt", "--data", f"npz:{p['data']}", "--rank", "2",
            "--n-init", "1", "--out", out, "--quiet", *extra]  # fmt: skip


def test_compare_of_an_existing_store_refuses_the_capture_options(cli, project) -> None:
    store = project["root"] / "cs"
    cli.ok(_compare(project, project["root"] / "first", "--store", store))
    for extra in (("--label", "x", "--label", "y"), ("--batch-size", "7"), ("--n-samples", "9")):
        args = ["compare", "--store", store, "--rank", "2", "--out", project["root"] / "out",
                *extra]  # fmt: skip
        cli.fails(args, "--store without --model", extra[0])
    assert not (project["root"] / "out").exists()


@pytest.mark.parametrize(
    ("layers", "blocks"),
    [  # a model given LABEL=NAMES takes only those; plain NAMES go to the others
        (("tiny=features.0", "tiny=features.2"), ["tiny.features.0", "tiny.features.2"]),
        (("features.0", "classifier.1"),
         ["tiny.features.0", "tiny.classifier.1", "second.features.0", "second.classifier.1"]),
        (("tiny=features.0", "classifier.1"), ["tiny.features.0", "second.classifier.1"]),
    ],
)  # fmt: skip
def test_repeated_compare_layers_add_up(cli, project, layers, blocks) -> None:
    out = project["root"] / "out"
    cli.ok(_compare(project, out, *[x for spec in layers for x in ("--layers", spec)]))
    names = [b["name"] for b in json.loads((out / "result.json").read_text())["blocks"]][1:]
    if len(layers) == 2 and all(spec.startswith("tiny=") for spec in layers):
        names = [n for n in names if n.startswith("tiny.")]  # second keeps its defaults
    assert names == blocks


def test_compare_checks_its_tensor_layers_before_the_capture(cli, project) -> None:
    store = project["root"] / "cs"
    cli.fails(_compare(project, project["root"] / "out", "--tensor-layers", "features.0",
                       "--store", store), "--tensor-layers", "tiny.features.0")  # fmt: skip
    assert not store.exists()


def test_compare_names_the_model_that_failed(cli, project) -> None:
    failing = project["root"] / "failing.py"
    failing.write_text(
        "import torch\nclass Failing(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.fc = torch.nn.Linear(64, 3)\n"
        "    def forward(self, x):\n        raise RuntimeError('boom in forward')\n"
    )
    args = ["compare", "--model", f"{project['model']}:TinyNet", "--model", f"{failing}:Failing",
            "--data", f"npz:{project['data']}", "--rank", "2", "--out",
            project["root"] / "out", "--quiet"]  # fmt: skip
    cli.fails(args, "model 'Failing' failed", "boom in forward", rc=1)


def test_compare_of_one_model_twice_says_so(cli, project) -> None:
    spec = f"{project['model']}:TinyNet"
    args = ["compare", "--model", spec, "--model", spec, "--data", f"npz:{project['data']}",
            "--rank", "2", "--n-init", "1", "--out", project["root"] / "out", "--quiet"]  # fmt: skip
    assert "are the same model file and weights" in cli.ok(args).err


def test_report_refuses_a_result_given_twice(cli, project) -> None:
    out = project["root"] / "a"
    cli.ok(analyze_args(project, out))
    cli.fails(["report", out, project["root"] / "." / "a", "--out", project["root"] / "r"],
              "given twice")  # fmt: skip


@pytest.mark.parametrize(
    "damage",
    ['"x"', '{"cka": {"pairs": [1]}}', '{"cka": {"pairs": [{"a": "tiny", "layers": [[1]]}]}}'],
)
def test_report_of_a_damaged_comparison_is_one_line(cli, project, damage: str) -> None:
    out = project["root"] / "c"
    cli.ok(_compare(project, out))
    doc = json.loads((out / "result.json").read_text())
    doc["meta"]["comparison"] = json.loads(damage)
    (out / "result.json").write_text(json.dumps(doc))
    cli.fails(["report", out, "--out", project["root"] / "r"], "is damaged", "comparison", rc=1)


def test_resume_of_a_complete_but_damaged_store_names_the_damage(cli, project) -> None:
    store = project["root"] / "acts"
    cli.ok(analyze_args(project, project["root"] / "a", "--store", store))
    chunk = next(p for p in sorted(store.rglob("c/*")) if p.is_file())
    chunk.unlink()
    err = cli.fails(analyze_args(project, project["root"] / "b", "--store", store, "--resume"),
                    "is damaged", rc=1)  # fmt: skip
    assert "already complete" not in err


def test_the_iteration_count_is_given_by_stage(cli, project) -> None:
    """Each stage has its own --max-iter: 9 iterations under --max-iter 5 is fit 5, refit 4."""
    res = cli.ok(analyze_args(project, project["root"] / "out", "--tol", "0", "--max-iter", "5"))
    line = next(x for x in res.out.splitlines() if x.startswith("joint factorization"))
    assert "iterations (fit 5, refit " in line and "stopped at --max-iter" in line
