"""The Dask engine: the same fit as the single-process path, on two local workers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from factorlens.errors import FactorlensError
from factorlens.factorize import CMTF, factor_match_score
from factorlens.testing import planted_blocks, zarr_store

distributed = pytest.importorskip("distributed", reason="needs pip install 'factorlens[dask]'")


@pytest.fixture(scope="module")
def cluster():
    from factorlens.factorize.distributed import dask_cluster

    with dask_cluster(n_workers=2) as client:
        yield client


def test_dask_fit_equals_the_single_process_fit(cluster, tmp_path) -> None:
    blocks, truth = planted_blocks(N=3000, R=3, seed=4)
    store = zarr_store(tmp_path / "acts", blocks, 500)  # the workers read its chunks from disk
    # streamed from zarr (no block held in memory), one start: the same fit, a few seconds
    opts = {"random_state": 0, "check_fewer": False, "memory_budget": 0, "n_init": 1, "tol": 1e-6}
    single = CMTF(3, **opts).fit(store).result_
    dask = CMTF(3, backend="dask", **opts).fit(store).result_
    assert factor_match_score([single.A], [dask.A]) >= 0.999
    assert dask.loss == pytest.approx(single.loss, rel=1e-4)
    np.testing.assert_allclose(dask.flow, single.flow, atol=1e-3)
    assert factor_match_score([dask.A], [truth["A"]]) > 0.99


def test_dask_backend_without_a_client_is_one_line(monkeypatch) -> None:
    import dask.distributed

    def no_client(*_a, **_k):
        raise ValueError("No clients found")

    monkeypatch.setattr(dask.distributed, "get_client", no_client)
    blocks, _ = planted_blocks(N=50, seed=0)
    with pytest.raises(FactorlensError, match=r"needs a running dask.distributed client"):
        CMTF(2, backend="dask").fit(blocks)


def test_dask_and_scheduler_flags_run_the_fit_on_that_cluster(project, monkeypatch) -> None:
    """``--dask`` / ``--scheduler ADDRESS`` open that cluster around the command and give the
    engine ``backend="dask"`` (the fit itself is checked above, against one process)."""
    import contextlib

    from factorlens import commands
    from factorlens.cli import main
    from factorlens.factorize import distributed as D
    from tinyproject import analyze_args

    seen = []

    @contextlib.contextmanager
    def fake_cluster(scheduler=None, **_):
        seen.append(("open", scheduler))
        try:
            yield None
        finally:  # closed however the command ends
            seen.append(("closed", scheduler))

    class Stop(Exception):
        """Ends the command after the run was entered (the CLI lets it through)."""

    def fake_run(args, engine, capture):
        seen.append(("run", engine.backend))  # an EngineOptions, replaced, not edited
        raise Stop

    monkeypatch.setattr(D, "dask_cluster", fake_cluster)
    monkeypatch.setattr(commands, "run_analyze", fake_run)
    root = project["root"]
    with pytest.raises(Stop):
        main(analyze_args(project, root / "a", "--dask"))
    with pytest.raises(Stop):
        main(analyze_args(project, root / "b", "--scheduler", "tcp://10.0.0.5:8786"))
    assert seen == [
        ("open", None), ("run", "dask"), ("closed", None),
        ("open", "tcp://10.0.0.5:8786"), ("run", "dask"), ("closed", "tcp://10.0.0.5:8786"),
    ]  # fmt: skip


def test_a_sharded_capture_writes_the_store_one_process_writes(cluster, tmp_path) -> None:
    import torch

    from factorlens.capture import capture
    from factorlens.data import load_data
    from factorlens.research.models import DigitsCNN
    from factorlens.sharded import capture_sharded
    from factorlens.store import open_store

    data = load_data("digits")  # 1,797 inputs, 1×8×8: 15 shards of 2 batches of 64 here
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    one = capture(model, data, batch_size=64, progress=False, store=tmp_path / "one")
    many = capture_sharded(model, data, tmp_path / "many", batch_size=64, progress=False)
    again = open_store(tmp_path / "many")  # complete, every chunk file there
    assert again.names == one.names and again.n_samples == 1797
    for name in one.names:
        np.testing.assert_allclose(again.block(name)[:], one.block(name)[:], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(again.labels, data.labels)
    for key in ("layers", "modules", "shapes", "n_samples", "batch_size", "nonfinite"):
        assert again.meta[key] == one.meta[key], key
    assert many.meta["data"] == one.meta["data"]


def test_a_failing_shard_leaves_no_store(cluster, tmp_path) -> None:
    from factorlens.research.models import DigitsCNN
    from factorlens.sharded import capture_sharded

    images = np.random.default_rng(0).random((1000, 1, 8, 8), dtype=np.float32)
    images[900, 0, 0, 0] = np.nan  # in the last shards, not the batch the client runs
    with pytest.raises(FactorlensError, match=r"the input data produced 1 non-finite .* 896"):
        capture_sharded(DigitsCNN(), images, tmp_path / "acts", batch_size=64, progress=False)
    assert not (tmp_path / "acts").exists()


def test_analyze_on_a_cluster_captures_into_the_store_on_its_workers(
    cluster, project, monkeypatch
) -> None:
    """``analyze --dask --store`` shards the capture over the workers (the model class comes
    from a model file the workers cannot import) and fits on the same cluster."""
    import contextlib

    from factorlens import load, open_store, sharded
    from factorlens.cli import main
    from factorlens.factorize import distributed as D
    from tinyproject import analyze_args

    calls = []
    real = sharded.capture_sharded

    def spy(*args, **kwargs):
        calls.append(kwargs["options"].batch_size)  # the CaptureOptions, travelled
        return real(*args, **kwargs)

    @contextlib.contextmanager
    def this_cluster(scheduler=None, **_):
        yield cluster

    monkeypatch.setattr(D, "dask_cluster", this_cluster)
    monkeypatch.setattr(sharded, "capture_sharded", spy)
    root = project["root"]
    args = analyze_args(project, root / "out", "--dask", "--store", str(root / "acts"),
                        "--batch-size", "16", "--n-init", "1", "--max-iter", "5")  # fmt: skip
    assert main(args) == 0
    assert calls == [16]
    store = open_store(root / "acts")
    assert store.n_samples == 60 and store.meta["batch_size"] == 16
    assert load(root / "out").n_samples == 60


def test_compare_on_a_cluster_captures_every_model_on_its_workers(
    cluster, project, monkeypatch
) -> None:
    """``compare --dask --store``: the models of two model files' checkpoints travel to the
    workers by value, the store holds every model's layers, the fit runs there too."""
    import contextlib

    import torch

    from factorlens import load, open_store
    from factorlens.cli import main
    from factorlens.factorize import distributed as D

    @contextlib.contextmanager
    def this_cluster(scheduler=None, **_):
        yield cluster

    from factorlens import sharded

    calls = []
    real = sharded.capture_sharded

    def spy(model, *args, **kwargs):
        calls.append(sorted(model.labels))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(D, "dask_cluster", this_cluster)
    monkeypatch.setattr(sharded, "capture_sharded", spy)
    root = project["root"]
    other = root / "other.pt"
    state = torch.load(project["weights"])["state_dict"]
    torch.save({k: -v for k, v in state.items()}, other)
    args = [
        "compare", "--model", f"{project['model']}:TinyNet",
        "--weights", str(project["weights"]), "--weights", str(other),
        "--data", f"npz:{project['data']}", "--rank", "3", "--batch-size", "16",
        "--store", str(root / "acts"), "--out", str(root / "cmp"), "--dask", "--quiet",
        "--n-init", "1", "--max-iter", "5",  # the fit on dask is checked above; keep it short
    ]  # fmt: skip
    assert main(args) == 0
    store = open_store(root / "acts")
    assert store.n_samples == 60 and store.meta["batch_size"] == 16
    assert {n.split(".")[0] for n in store.names[1:]} == {"tiny", "other"}
    assert calls == [["other", "tiny"]]  # one sharded capture of the model set
    result = load(root / "cmp")
    assert result.meta["comparison"]["sharing"]["labels"] == ["tiny", "other"]


def test_a_sharded_float16_capture_writes_what_one_process_writes(cluster, tmp_path) -> None:
    import torch

    from factorlens.capture import capture
    from factorlens.data import load_data
    from factorlens.research.models import DigitsCNN
    from factorlens.sharded import capture_sharded
    from factorlens.store import open_store

    data = load_data("digits").subset(600, random_state=0)
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    half = {"batch_size": 64, "progress": False, "store_dtype": "float16"}
    one = capture(model, data, store=tmp_path / "one", **half)
    capture_sharded(model, data, tmp_path / "many", **half)
    again = open_store(tmp_path / "many")
    assert again.names == one.names
    attrs = json.loads((tmp_path / "many" / "zarr.json").read_text())["attributes"]
    assert attrs["factorlens_store"] == 2  # the format of float16 chunks
    for record in attrs["blocks"]:
        array = json.loads((tmp_path / "many" / record["array"] / "zarr.json").read_text())
        assert array["data_type"] == "float16", record["name"]
    for name in one.names:  # the same rounding on the workers as in one process
        np.testing.assert_array_equal(again.block(name)[:], one.block(name)[:])
