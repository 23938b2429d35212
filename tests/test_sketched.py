"""Wide layers sketched while the batches stream past, against the full capture they replace."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from factorlens.capture import capture
from factorlens.errors import FactorlensError, FactorlensRuntimeError
from factorlens.factorize import CMTF, factor_match_score
from factorlens.factorize.reduced import ReducedBlock
from factorlens.sketched import (
    MIN_OVERSAMPLE,
    SketchedStore,
    capture_sketched,
    plan_sketch,
)


class WideNet(nn.Module):
    """Two wide conv layers on 3×12×12 inputs (1,152 and 576 features), a linear head.

    ``dropout`` is on in eval mode too (not deterministic): after the wide layers, or between
    them with ``between``.
    """

    def __init__(self, dropout: float = 0.0, between: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 12 * 12, 5)
        self.dropout, self.between = dropout, between

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv1(x))
        if self.dropout and self.between:
            h = nn.functional.dropout(h, self.dropout, training=True)
        h = self.relu(self.conv2(h))
        if self.dropout and not self.between:
            h = nn.functional.dropout(h, self.dropout, training=True)
        return self.fc(h.flatten(1))


def _images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.random((4, 3, 12, 12)).astype(np.float32)
    mix = rng.random((n, 4)).astype(np.float32)
    x = np.einsum("nk,kchw->nchw", mix, base) / 2 + 0.1 * rng.random((n, 3, 12, 12))
    return np.clip(x, 0, 1).astype(np.float32)


def _fms(a, b) -> float:
    names = a.block_names
    fa = [a.A] + [f for n in names for f in a.factors[n]]
    fb = [b.A] + [f for n in names for f in b.factors[n]]
    return float(factor_match_score(fa, fb))


def _net() -> WideNet:
    torch.manual_seed(0)
    return WideNet().eval()


def test_a_sketch_of_at_least_n_directions_fits_exactly_like_the_full_capture() -> None:
    x = _images(60)
    full = capture(_net(), x, progress=False)
    sketched = capture_sketched(_net(), x, sketch=64, memory_budget=1, progress=False)
    assert isinstance(sketched, SketchedStore)
    assert set(sketched.sketched) == {"conv1", "relu", "conv2", "relu#2"}
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in sketched.captured().values())
    a = CMTF(3, random_state=0).fit(full).result_
    b = CMTF(3, random_state=0).fit(sketched).result_
    assert b.factors["conv1"][0].shape == (8 * 12 * 12, 3)  # loadings in the full features
    assert _fms(a, b) >= 0.999
    assert b.loss / a.loss == pytest.approx(1.0, abs=1e-3)
    for name in a.block_names:
        assert b.block_fit[name] == pytest.approx(a.block_fit[name], abs=1e-3)


def test_a_truncated_sketch_states_each_layers_captured_energy(tmp_path) -> None:
    from factorlens.pipeline import analyze

    x = _images(80)
    out = tmp_path / "out"
    res = analyze(_net(), x, out=out, rank=3, sketch=12, memory_budget=1, progress=False)
    sketch = res.meta["sketch"]
    assert sketch["size"] == 12 and "conv1" in sketch["layers"]
    captured = sketch["captured_energy"]
    assert all(0.5 < v <= 1.0 for v in captured.values())
    assert min(captured.values()) < 0.9999  # 80 inputs in 12 directions: truncated
    summary = json.loads((out / "result.json").read_text())
    assert summary["meta"]["sketch"]["captured_energy"] == pytest.approx(captured)
    # the fit on a truncated sketch is the fit with loadings kept in the basis: each
    # layer's reported fit cannot exceed the energy its basis captured
    for name, share in captured.items():
        assert res.block_fit[name] <= share + 1e-6
    assert "captured" in (out / "index.html").read_text()


def test_8_bit_inputs_stay_levels_through_a_sketched_store_and_fit_alike(tmp_path) -> None:
    from factorlens.data import ImageData
    from factorlens.pipeline import analyze
    from factorlens.rows import Levels

    levels = (_images(48) * 255).round().astype(np.uint8)
    as_float = levels.astype(np.float32) / np.float32(255.0)
    store = capture_sketched(_net(), Levels(levels), sketch=64, memory_budget=1, progress=False)
    held = store.block("input")  # not the float32 array (4x the memory) on every call
    assert isinstance(held, Levels) and held.shape == (48, 3, 12, 12)
    data = ImageData(Levels(levels), None, None, "levels")
    res = analyze(_net(), data, out=tmp_path / "a", rank=3, sketch=64, memory_budget=1,
                  progress=False)  # fmt: skip
    ref = analyze(_net(), as_float, out=tmp_path / "b", rank=3, sketch=64, memory_budget=1,
                  progress=False)  # fmt: skip
    assert np.load(tmp_path / "a" / "inputs.npz")["images_uint8"].shape == (48, 3, 12, 12)
    assert _fms(res, ref) >= 0.999
    assert res.loss == pytest.approx(ref.loss, rel=1e-4)


def test_auto_holds_every_layer_whole_when_the_activations_fit() -> None:
    store = capture_sketched(_net(), _images(20), progress=False)
    assert not isinstance(store, SketchedStore)
    assert store.block("conv1").shape == (20, 8, 12, 12)


def test_a_model_that_answers_differently_twice_is_refused() -> None:
    torch.manual_seed(0)
    model = WideNet(dropout=0.5, between=True).eval()  # the second wide layer changes
    with pytest.raises(FactorlensRuntimeError, match="not deterministic in eval mode"):
        capture_sketched(model, _images(30), rank=3, sketch=8, memory_budget=1, progress=False)


def test_randomness_after_the_sketched_layers_is_warned_about_as_in_one_pass(capsys) -> None:
    # pass 2 stops before the dropout: every block then comes from one evaluation (the head
    # from pass 1), which the one-pass capture also takes, with the same warning
    torch.manual_seed(0)
    model = WideNet(dropout=0.5).eval()
    store = capture_sketched(model, _images(30), rank=3, sketch=8, memory_budget=1, progress=False)
    assert set(store.sketched) == {"conv1", "relu", "conv2", "relu#2"}
    assert "different outputs for the same inputs in eval mode" in capsys.readouterr().err


def test_sketched_layers_refuse_nonneg_and_cp_models_with_one_line() -> None:
    store = capture_sketched(_net(), _images(40), rank=3, sketch=8, memory_budget=1, progress=False)
    with pytest.raises(FactorlensError, match="`nonneg` needs every layer whole"):
        CMTF(2, nonneg=True).fit(store)
    with pytest.raises(FactorlensError, match="CP model needs a layer's natural shape"):
        CMTF(2, tensor_blocks=["input", "conv1"]).fit(store)
    with pytest.raises(FactorlensError, match="rows are not held"):
        next(store.iter_rows("conv1"))


def test_the_rank_scan_runs_on_the_sketched_coordinates() -> None:
    from factorlens.rank import estimate_rank

    store = capture_sketched(_net(), _images(90), sketch=20, memory_budget=1, progress=False)
    scan = estimate_rank(store, 4, random_state=0)
    assert 1 <= scan.chosen <= 4 and len(scan.criteria["fit"]) == 4
    assert all(0.0 <= f <= 1.0 for f in scan.criteria["fit"])


def test_the_scans_halves_read_a_sketched_layers_noise_floor_at_its_full_width() -> None:
    """A half holds k coordinates of a P-wide layer; its floor is that of N/2 rows × P."""
    from factorlens.factorize.engine import _as_named_arrays
    from factorlens.factorize.penalty import noise_threshold
    from factorlens.rank.scan import _chain_data, _scan_options

    store = capture_sketched(_net(), _images(90), sketch=20, memory_budget=1, progress=False)
    opts = _scan_options({}, 50, 1e-5, 0)
    full = CMTF(1, **opts).prepare(store)
    names, arrays = _as_named_arrays(store)
    chains, _ = _chain_data(
        full, names, arrays, 1, 4, opts, np.random.default_rng(0), compress=True
    )
    sketched = [i for i, a in enumerate(arrays) if isinstance(a, ReducedBlock)]
    assert sketched
    for i in sketched:
        whole, halves = full[i], [chain[i] for chain in chains[1:]]
        for h in halves:
            assert h.spectrum[2] == (45, whole.spectrum[2][1])  # half the rows, every feature
            # the same noise per entry: a floor of the same size (it was under a tenth)
            assert noise_threshold(h, 0) / h.scale > 0.5 * noise_threshold(whole, 0) / whole.scale


def test_the_scans_halves_of_a_wide_block_held_whole_come_from_its_row_space(monkeypatch) -> None:
    """Rows of its exact coordinates: the same halves (Gram, norm, floor) as rows of the block."""
    from factorlens.factorize.engine import _as_named_arrays
    from factorlens.rank import scan

    store = capture(_net(), _images(120), progress=False)  # every layer whole, N <= 1,024
    opts = scan._scan_options({}, 50, 1e-5, 0)

    def chains(exact: bool) -> list:
        if not exact:
            monkeypatch.setattr(scan, "_row_space_coordinates", lambda *args: {})
        full = CMTF(1, **opts).prepare(store)
        names, arrays = _as_named_arrays(store)
        data, _ = scan._chain_data(
            full, names, arrays, 1, 4, opts, np.random.default_rng(0), compress=True
        )
        monkeypatch.undo()
        return data

    through, rows = chains(True), chains(False)
    for half_through, half_rows in zip(through[1:], rows[1:], strict=True):
        for a, b in zip(half_through, half_rows, strict=True):
            assert a.sumsq == pytest.approx(b.sumsq, rel=1e-5) and a.spectrum[2] == b.spectrum[2]
            ga, gb = (np.asarray(x._data, dtype=np.float64) for x in (a, b))
            np.testing.assert_allclose(ga @ ga.T, gb @ gb.T, atol=1e-5 * np.abs(gb @ gb.T).max())
    wide = [b for b in through[1] if b.data_basis]
    assert {b.name for b in wide} == {"conv1", "relu", "conv2", "relu#2"}  # 576+ wide, 60 rows
    assert all(b.basis[0].shape[1] <= 120 for b in wide)  # the whole block's row space


def test_a_reduced_block_splits_by_rows_with_exact_energies() -> None:
    store = capture_sketched(_net(), _images(30), rank=3, sketch=8, memory_budget=1, progress=False)
    block = store.block("conv1")
    assert isinstance(block, ReducedBlock)
    half = block[np.arange(0, 30, 2)]
    assert half.shape == (15, 8, 12, 12)
    assert half.sumsq == pytest.approx(block.row_sumsq[::2].sum())
    np.testing.assert_array_equal(half.coords, block.coords[::2])


@settings(max_examples=60, deadline=None)
@given(
    widths=st.lists(st.integers(1, 5000), min_size=1, max_size=12),
    n=st.integers(2, 3000),
    rank=st.integers(1, 20),
    budget=st.integers(1, 50_000_000),
)
def test_the_plan_sketches_the_widest_layers_and_fits_the_budget_where_it_can(
    widths, n, rank, budget
) -> None:
    named = {f"l{i}": w for i, w in enumerate(widths)}
    plan = plan_sketch(named, n, rank, "auto", budget)
    whole = sum(4 * n * w for w in widths)
    if whole <= budget:
        assert plan.sketched == ()  # everything fits: one pass, nothing sketched
        return
    if plan.sketched:
        assert rank + MIN_OVERSAMPLE <= plan.size < n
        assert all(named[nm] > plan.size for nm in plan.sketched)
        # the widest first: a layer held whole is no wider than any sketched one
        whole_wide = [w for nm, w in named.items() if nm not in plan.sketched and w > plan.size]
        assert not whole_wide or max(whole_wide) <= min(named[nm] for nm in plan.sketched)
        assert plan.held < whole  # sketching holds less than the layers themselves


def test_bad_sketch_settings_are_one_line_errors() -> None:
    x = _images(10)
    for sketch, match in (("all", "`sketch` must be"), (-3, "`sketch` must be"), (2, "exceed")):
        with pytest.raises(FactorlensError, match=match):
            capture_sketched(_net(), x, rank=5, sketch=sketch, progress=False)
    with pytest.raises(FactorlensError, match="`memory_budget` must be a number of bytes >= 1"):
        capture_sketched(_net(), x, memory_budget=0, progress=False)


def test_default_layers_that_never_run_are_left_out_and_named_ones_refused(capsys) -> None:
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(6, 6)
            self.attn = nn.MultiheadAttention(6, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.proj(x.reshape(len(x), 2, 6))
            return self.attn(h, h, h, need_weights=False)[0].flatten(1)

    torch.manual_seed(0)
    model = Attention().eval()
    x = np.random.default_rng(0).random((8, 12)).astype(np.float32)
    store = capture(model, x, progress=False)
    assert store.names == ["input", "proj"]  # attn.out_proj runs inside the attention
    assert "attn.out_proj" in capsys.readouterr().err
    with pytest.raises(FactorlensError, match="did not run in the forward pass"):
        capture(model, x, ["proj", "attn.out_proj"], progress=False)
    picked = capture(model, x, ["attn"], select={"attn": 0}, progress=False)
    assert picked.block("attn").shape == (8, 2, 6)


def test_the_cli_sketches_when_told_and_reports_it(project, capsys) -> None:
    from factorlens.cli import main
    from tinyproject import analyze_args

    out = project["root"] / "out"
    args = [
        a
        for a in analyze_args(
            project, out, "--memory", "1K", "--sketch", "12", "--batch-size", "16"
        )
        if a != "--quiet"
    ]
    assert main(args) == 0
    summary = json.loads((out / "result.json").read_text())
    assert summary["meta"]["sketch"]["size"] == 12
    assert "features.0" in summary["meta"]["sketch"]["layers"]
    assert math.isfinite(summary["loss"])
    printed = capsys.readouterr()
    assert "pass 1/2" in printed.err and "pass 2/2" in printed.err
    row = next(line for line in printed.out.splitlines() if line.strip().startswith("features.0"))
    share = 100 * summary["meta"]["sketch"]["captured_energy"]["features.0"]
    assert f"{share:.1f}%" in row  # the table states what share of the layer was fitted
    assert "layers were sketched" in printed.out


def test_a_large_image_input_held_whole_is_fitted_compressed_then_refined(
    tmp_path, monkeypatch
) -> None:
    from factorlens import pipeline
    from factorlens.pipeline import analyze

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                        nn.Flatten(), nn.Linear(64, 5)).eval()  # fmt: skip
    x = np.repeat(np.repeat(_images(70), 2, axis=2), 2, axis=3)  # 3×24×24: a side of 2(R + 10)
    store = capture(net, x, progress=False)
    assert not pipeline.wide_input(store, 2)  # 1,728 features (MNIST-size): fitted plainly
    monkeypatch.setattr(pipeline, "WIDE_INPUT", 1024)  # as if it were a 224 px image
    assert pipeline.wide_input(store, 2) and not pipeline.wide_input(store, 3)  # 24 < 26
    res = analyze(net, x, out=tmp_path / "a", rank=2, progress=False)
    assert res.options["compress_rows"] == 32  # max(4R, R + 30), with 70 > 2 × 32 inputs
    assert "refine on all rows" in [stage for stage, _ in res.options["loss_stages"]]
    plain = CMTF(2, random_state=0).fit(store).result_  # every row, full image sides
    assert res.loss / plain.loss == pytest.approx(1.0, abs=2e-3)
    assert res.factors["input"][2].shape == (24, 2)  # the image's sides mapped back
    kept = analyze(net, x, out=tmp_path / "b", rank=2, nonneg=True, progress=False)
    assert kept.options["compress_rows"] == 0  # a nonnegative fit is never compressed


def test_the_second_pass_stops_each_batch_after_the_last_sketched_layer() -> None:
    net, calls = _net(), {"conv1": 0, "fc": 0}
    for name in calls:  # counted in every run of the model: probe, check, both passes
        getattr(net, name).register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))  # fmt: skip
    x = _images(40)
    store = capture_sketched(
        net, x, rank=3, sketch=8, memory_budget=1, batch_size=16, progress=False
    )
    assert set(store.sketched) == {"conv1", "relu", "conv2", "relu#2"}
    assert calls["conv1"] - calls["fc"] == 3  # the head never ran in pass 2's three batches
    assert store.block("fc").shape == (40, 5)  # kept whole from pass 1
    full = capture(_net(), x, progress=False)
    for name in ("conv1", "relu#2"):  # the coordinates are the layer's own rows in its basis
        block = store.block(name)
        rows = full.block(name)[:].reshape(40, -1)
        assert np.allclose(block.coords, rows @ block.basis.astype(np.float32), atol=1e-3)


def test_a_sketched_class_output_leaves_the_predictions_out_instead_of_failing(tmp_path) -> None:
    from factorlens.data import ImageData
    from factorlens.pipeline import analyze

    x = _images(40)
    data = ImageData(x, np.arange(40) % 5, ["a", "b", "c", "d", "e"], "five")
    res = analyze(_net(), data, out=tmp_path / "o", rank=2, sketch=3, memory_budget=1,
                  progress=False)  # fmt: skip
    assert "fc" in res.meta["sketch"]["layers"]  # the 5 class outputs, wider than k = 3
    assert "predictions" not in np.load(tmp_path / "o" / "inputs.npz").files
    assert (tmp_path / "o" / "index.html").is_file()
