"""Interruptions: Ctrl-C and SIGTERM end a run at once, cleanly; a killed capture resumes to a
bit-identical store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from harness import snapshot

from factorlens.store import PROGRESS_JSON, open_store

#: a model with one wide layer (64 channels at 32×32: 256 KiB a row, so 64 rows a 16 MiB
#: chunk) that sleeps in every forward, so a capture of 640 inputs spans several chunks and
#: lasts long enough to be killed in the middle
SLOW_MODEL = """
import time
import torch
from torch import nn


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 64, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(256, 3)

    def forward(self, x):
        time.sleep(0.15)
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))
"""


def _cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "factorlens", *map(str, args)]


def _one_error(err: str) -> str:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture
def slow(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "wide.py").write_text(SLOW_MODEL)
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "data.npz", images=rng.random((640, 32, 32)).astype(np.float32))
    return {"root": tmp_path, "model": tmp_path / "wide.py", "data": tmp_path / "data.npz"}


def _start(args: list[str], **kwargs) -> subprocess.Popen:
    """Start a CLI run whose Ctrl-C works even when these tests run in the background.

    A shell starts background jobs with SIGINT ignored, and a Python started with SIGINT
    ignored keeps ignoring it: the child is given the default disposition back.
    """

    def default_signals() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return subprocess.Popen(args, preexec_fn=default_signals, **kwargs)


def _capture_args(slow: dict[str, Path], store: Path, out: Path) -> list[str]:
    return _cmd(
        "analyze", "--model", f"{slow['model']}:Wide", "--data", f"npz:{slow['data']}",
        "--layers", "conv,fc", "--batch-size", "32", "--store", store, "--rank", "2",
        "--n-init", "1", "--max-iter", "20", "--l1", "0", "--out", out, "--quiet",
    )  # fmt: skip


def _chunks(store: Path, key: str = "b001") -> int:
    return sum(1 for f in (store / key / "c").rglob("*") if f.is_file())


def _wait_until(ready, proc: subprocess.Popen, limit: float = 120) -> None:
    """Until ``ready()`` holds, while ``proc`` still runs."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        assert proc.poll() is None, "the capture ended before it could be interrupted"
        if ready():
            return
        time.sleep(0.05)
    raise AssertionError("the capture made no progress")


def _progress(store: Path) -> int:
    try:
        return json.loads((store / PROGRESS_JSON).read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_killed_capture_resumes_to_a_bit_identical_store(slow, sig) -> None:
    store, out = slow["root"] / "acts", slow["root"] / "out"
    proc = _start(_capture_args(slow, store, out), stderr=subprocess.PIPE, text=True)
    _wait_until(lambda: _chunks(store) >= 2, proc)
    proc.send_signal(sig)
    rc = proc.wait(timeout=60)
    err = proc.stderr.read()
    if sig == signal.SIGINT:
        assert rc == 130 and "interrupted" in _one_error(err) and "--resume" in err
    assert not out.exists()
    again = subprocess.run(
        [*_capture_args(slow, store, out), "--resume"], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    whole = slow["root"] / "whole"
    plain = subprocess.run(
        _capture_args(slow, whole, slow["root"] / "out2"), capture_output=True, text=True
    )
    assert plain.returncode == 0, plain.stderr
    assert snapshot(store) == snapshot(whole)  # every file, byte for byte
    resumed = open_store(store)
    assert resumed.n_samples == 640 and resumed.shape("conv") == (640, 64, 32, 32)


#: the capture through the API, writing resume points after every batch
API_CAPTURE = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from wide import Wide
from factorlens.capture import capture
from factorlens.store import ZarrStore

ZarrStore.sync_seconds = 0.0
images = np.load(sys.argv[2])["images"][:, None]
capture(Wide(), images, "conv,fc", batch_size=32, store=sys.argv[3], progress=False,
        nonfinite="zero", resume=len(sys.argv) > 4)
"""


def _api_capture_killed_at(slow, rows: int) -> tuple[list, Path]:
    """Run API_CAPTURE into ``acts`` and SIGKILL it once ``rows`` rows are recorded; return
    its command line (without the store) and the store."""
    script = slow["root"] / "cap.py"
    script.write_text(API_CAPTURE)
    base = [sys.executable, script, slow["root"], slow["data"]]
    store = slow["root"] / "acts"
    proc = _start([*base, store])
    _wait_until(lambda: _progress(store) >= rows, proc)
    proc.kill()
    proc.wait(timeout=60)
    return base, store


@pytest.mark.slow
def test_a_capture_killed_midway_resumes_from_the_middle(slow) -> None:
    base, store = _api_capture_killed_at(slow, 256)
    start = _progress(store)
    assert 256 <= start < 640 and start % 32 == 0
    subprocess.run([*base, store, "--resume"], check=True)
    whole = slow["root"] / "whole"
    subprocess.run([*base, whole], check=True)
    assert snapshot(store) == snapshot(whole)


def test_resume_refuses_other_settings_and_a_complete_store(slow, tmp_path) -> None:
    store, out = slow["root"] / "acts", slow["root"] / "out"
    proc = _start(_capture_args(slow, store, out), stderr=subprocess.PIPE, text=True)
    _wait_until(lambda: _chunks(store) >= 1, proc)
    proc.kill()
    proc.wait(timeout=60)
    other = [a if a != "32" else "16" for a in _capture_args(slow, store, out)]
    res = subprocess.run([*other, "--resume"], capture_output=True, text=True)
    assert res.returncode == 2
    assert "other settings" in _one_error(res.stderr) and "batch_size" in res.stderr
    res = subprocess.run(  # --compression is not silently ignored on --resume
        [*_capture_args(slow, store, out), "--compression", "zstd", "--resume"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "compression" in _one_error(res.stderr)
    res = subprocess.run(  # the normalization decides the rows: not a path to ignore
        [*_capture_args(slow, store, out), "--normalize", "0.5,0.2", "--resume"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "meta" in _one_error(res.stderr)
    fresh = slow["root"] / "fresh"
    res = subprocess.run(
        [*_capture_args(slow, fresh, slow["root"] / "o3"), "--resume"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "no interrupted capture" in _one_error(res.stderr)


def _killed_midway(slow, *extra: str) -> tuple[Path, Path]:
    store, out = slow["root"] / "acts", slow["root"] / "out"
    proc = _start([*_capture_args(slow, store, out), *extra], stderr=subprocess.PIPE, text=True)
    _wait_until(lambda: _chunks(store) >= 1, proc)
    proc.kill()
    proc.wait(timeout=60)
    return store, out


def test_resume_refuses_an_edited_model_file(slow) -> None:
    _killed_midway(slow)
    source = slow["model"].read_text()
    slow["model"].write_text(source.replace("return", "return 1.0 *", 1))  # forward changed
    try:
        res = subprocess.run(
            [*_capture_args(slow, slow["root"] / "acts", slow["root"] / "out"), "--resume"],
            capture_output=True,
            text=True,
        )
    finally:
        slow["model"].write_text(source)
    assert res.returncode == 2, res.stderr
    assert "the model file's code" in _one_error(res.stderr)


def test_resume_accepts_a_copy_of_the_weights_and_a_relative_model_path(slow) -> None:
    import shutil

    weights = slow["root"] / "w.pt"
    make = f"import sys, torch; sys.path.insert(0, {str(slow['root'])!r}); from wide import Wide; "
    subprocess.run([sys.executable, "-c", make + f"torch.save(Wide().state_dict(), {str(weights)!r})"], check=True)  # fmt: skip
    store, out = _killed_midway(slow, "--weights", str(weights))
    copy = slow["root"] / "copy-of-weights.pt"
    shutil.copy(weights, copy)
    args = [*_capture_args(slow, store, out), "--weights", str(copy)]
    at = args.index("--model") + 1
    path, _, cls = args[at].rpartition(":")
    args[at] = f"{os.path.relpath(path, slow['root'])}:{cls}"
    res = subprocess.run([*args, "--resume"], capture_output=True, text=True, cwd=slow["root"])
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("edit", ["mid-batch", "past the disk"])
def test_resume_refuses_a_progress_file_the_store_does_not_back(slow, edit) -> None:
    from factorlens.store import _progress_check, _read_root_attrs

    base, store = _api_capture_killed_at(slow, 128)
    doc = json.loads((store / PROGRESS_JSON).read_text())
    doc["rows"] = 13 if edit == "mid-batch" else doc["rows"] + 192
    (store / PROGRESS_JSON).write_text(json.dumps(doc))  # edited by hand: its digest fails
    res = subprocess.run([*base, store, "--resume"], capture_output=True, text=True)
    assert res.returncode != 0
    assert "was edited" in res.stderr.splitlines()[-1]
    # forged with a matching digest: the chunk files on disk still refuse it
    capture = _read_root_attrs(store)["capture"]
    doc["check"] = _progress_check(doc["rows"], doc["nonfinite"], capture)
    (store / PROGRESS_JSON).write_text(json.dumps(doc))
    res = subprocess.run([*base, store, "--resume"], capture_output=True, text=True)
    assert res.returncode != 0
    assert "which the store on disk does not hold" in res.stderr.splitlines()[-1]


def _scan_in_progress(tmp_path: Path, out: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """A ``rank`` scan of a 1,500-input store running in a subprocess, once its progress bar
    has started; returns the process and the stderr read so far."""
    from factorlens.capture import capture
    from factorlens.research.models import DigitsCNN

    images = np.random.default_rng(0).random((1500, 1, 8, 8)).astype(np.float32)
    store = tmp_path / "acts"
    capture(DigitsCNN(), images, store=store, progress=False)
    args = _cmd("rank", "--store", store, "--max-rank", "20", "--out", out, *extra)
    proc = _start(args, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "rank scan" not in seen:
        char = proc.stderr.read(1)
        assert char, f"the run ended first: {seen}"
        seen += char
    return proc, seen


def test_ctrl_c_stops_a_rank_scan_at_once_and_keeps_the_previous_result(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.json").write_text('{"previous": true}')
    (out / ".factorlens-files.json").write_text('{"files": ["result.json"]}')
    before = snapshot(out)
    proc, seen = _scan_in_progress(tmp_path, out, "--overwrite")
    time.sleep(0.2)  # soon: since issue 27 the whole scan can end within a second or two
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=60)
    latency = time.monotonic() - sent
    err = seen + proc.stderr.read()
    assert rc == 130, err
    assert "interrupted" in _one_error(err.replace("\r", "\n"))
    assert snapshot(out) == before
    assert not list(tmp_path.glob(".out.*"))
    print(f"Ctrl-C latency during the rank scan: {latency:.2f} s")


def test_sigterm_leaves_no_staging_behind(tmp_path) -> None:
    out = tmp_path / "out"
    proc, seen = _scan_in_progress(tmp_path, out)
    os.kill(proc.pid, signal.SIGTERM)
    rc = proc.wait(timeout=60)
    assert rc == 143, seen + proc.stderr.read()
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_the_cli_starts_without_torch_so_an_early_ctrl_c_is_caught() -> None:
    """Heavy imports happen inside main(), where Ctrl-C is turned into one line; the package
    still offers every public name, and ``factorlens.capture`` stays the function."""
    code = (
        "import sys, factorlens, factorlens.cli\n"
        "assert 'torch' not in sys.modules, 'torch imported at start'\n"
        "import factorlens.capture, factorlens.pipeline\n"
        "assert callable(factorlens.capture) and factorlens.capture.__name__ == 'capture'\n"
        "assert all(hasattr(factorlens, n) for n in factorlens.__all__)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_ctrl_c_in_a_dask_capture_ends_it_cleanly(slow) -> None:
    """Ctrl-C at a terminal reaches the whole process group: the CLI and the local cluster's
    worker processes. The run ends with exit 130, one line, no worker traceback, and no store
    that looks complete (the partial one is removed)."""
    pytest.importorskip("distributed")
    store, out = slow["root"] / "acts", slow["root"] / "out"
    proc = subprocess.Popen(
        [*_capture_args(slow, store, out), "--dask"],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    _wait_until(lambda: _chunks(store) >= 1, proc, limit=180)
    os.killpg(proc.pid, signal.SIGINT)
    rc = proc.wait(timeout=120)
    err = proc.stderr.read()
    assert rc == 130, err
    assert "interrupted" in _one_error(err)
    assert "Error" not in err.replace("error: ", ""), err  # no worker's logged exception
    assert not out.exists()
    assert not store.exists(), sorted(p.name for p in store.rglob("*"))  # no debris left


def test_a_store_another_run_is_writing_is_refused_as_busy_not_interrupted(slow) -> None:
    store, out = slow["root"] / "acts", slow["root"] / "out"
    slower = slow["root"] / "slower.py"  # a second a batch: the first run outlasts the checks
    slower.write_text(SLOW_MODEL.replace("time.sleep(0.15)", "time.sleep(1.0)"))
    args = _capture_args(slow, store, out)
    args[args.index(f"{slow['model']}:Wide")] = f"{slower}:Wide"
    first = _start(args, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until(lambda: _chunks(store) >= 1, first)
        for extra in ([], ["--resume"], ["--overwrite"]):
            other = _capture_args(slow, store, slow["root"] / "out2")
            res = subprocess.run([*other, *extra], capture_output=True, text=True)
            assert res.returncode == 2, res.stderr
            line = _one_error(res.stderr)
            assert "is being written right now by process" in line and "interrupted" not in line
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.kill()
        first.wait(timeout=60)
    # once that run is gone, its store is an interrupted capture again (here of another model)
    res = subprocess.run(
        [*_capture_args(slow, store, out), "--resume"], capture_output=True, text=True
    )
    assert res.returncode == 2 and "other settings" in _one_error(res.stderr)


def test_a_swallowed_sigterm_still_stops_the_work_and_moves_no_output_in(tmp_path) -> None:
    """SIGTERM's exception can be lost (raised while a weakref callback runs, Python only
    prints it); the flag it leaves stops the next loop and the move of the output."""
    from factorlens.interrupt import TERMINATED, Terminated, check, raise_terminated
    from factorlens.output import publish

    out = tmp_path / "out"
    try:
        with pytest.raises(Terminated):
            raise_terminated(signal.SIGTERM, None)  # as if its exception was then swallowed
        with pytest.raises(Terminated):
            check()
        with pytest.raises(Terminated):
            publish(out, lambda stage: (stage / "result.json").write_text("{}"), ("result.json",))
    finally:
        TERMINATED.clear()
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    check()  # cleared: later work runs
