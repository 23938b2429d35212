"""Writes that never lose a user's file: the manifest, nesting, the lock, stale staging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import analyze_args, snapshot

from factorlens.errors import FactorlensError
from factorlens.output import MANIFEST, publish, read_manifest


def _dead_pid() -> int:
    """A pid no process has (the largest pid the kernel hands out, plus one)."""
    limit = Path("/proc/sys/kernel/pid_max")
    return int(limit.read_text()) + 1 if limit.is_file() else 2**22 + 1


def test_overwrite_keeps_a_users_files_in_figures(cli, project) -> None:
    out = project["root"] / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "mine.png").write_bytes(b"my own figure")
    (out / "notes.txt").write_text("my notes")
    cli.ok(analyze_args(project, out, "--overwrite"))
    assert (out / "figures" / "mine.png").read_bytes() == b"my own figure"
    assert (out / "notes.txt").read_text() == "my notes"
    ours = read_manifest(out)
    assert "result.json" in ours and "figures/mine.png" not in ours and "notes.txt" not in ours
    # and a second --overwrite still leaves them, while replacing all of ours
    cli.ok(analyze_args(project, out, "--overwrite", "--rank", "3"))
    assert (out / "figures" / "mine.png").read_bytes() == b"my own figure"
    assert json.loads((out / "result.json").read_text())["rank"] == 3


def test_overwrite_refuses_a_users_file_with_a_name_we_write(cli, project) -> None:
    out = project["root"] / "out"
    out.mkdir()
    (out / "index.html").write_text("<p>my page</p>")
    cli.fails(analyze_args(project, out, "--overwrite"), "index.html", "not written by factorlens")


def test_overwrite_removes_only_files_of_the_old_result(cli, project) -> None:
    out = project["root"] / "out"
    cli.ok(analyze_args(project, out))
    old = read_manifest(out)
    stray = sorted(f for f in old if f.startswith("figures/"))[0]
    (out / "figures" / "extra-of-mine.txt").write_text("keep")
    cli.ok(analyze_args(project, out, "--overwrite"))
    assert (out / "figures" / "extra-of-mine.txt").read_text() == "keep"
    assert (out / stray).is_file()  # rewritten by the new result


def test_store_inside_out_and_out_inside_store_are_refused(cli, project) -> None:
    out = project["root"] / "out"
    cli.fails(analyze_args(project, out, "--store", out / "acts"), "lies inside --out")
    store = project["root"] / "acts"
    cli.ok(analyze_args(project, project["root"] / "first", "--store", store))
    cli.fails(
        analyze_args(project, store / "result", "--store", store, "--overwrite"),
        "lies inside --store",
    )
    cli.fails(analyze_args(project, store, "--store", store, "--overwrite"), "--store")


def test_a_result_that_appears_while_working_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"

    def produce(stage: Path) -> None:
        (stage / "result.json").write_text("{}")
        # meanwhile another run publishes into the same folder
        publish(out, lambda s: (s / "result.json").write_text('{"other": 1}'), ("result.json",))

    with pytest.raises(FactorlensError, match="appeared while this run was working"):
        publish(out, produce, ("result.json",))
    assert json.loads((out / "result.json").read_text()) == {"other": 1}
    assert not list(tmp_path.glob(".out.staging-*"))


def test_two_concurrent_runs_into_one_new_out(project) -> None:
    out = project["root"] / "out"
    args = [sys.executable, "-m", "factorlens", *analyze_args(project, out)]
    procs = [subprocess.Popen(args, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=240), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    err = next(e for rc, e in results if rc == 2)
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error: ")]) == 1, err
    # the loser either finds the winner's result (already there) or the winner still moving
    # it in (the lock): which one depends on timing, and both say what to do
    assert "--overwrite" in err or "is being written by process" in err, err
    json.loads((out / "result.json").read_text())  # the one result is whole
    assert not list(project["root"].glob(".out.*"))


def test_a_live_lock_refuses_and_a_dead_one_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "out"
    lock = tmp_path / ".out.lock"
    lock.write_text(str(os.getppid()))  # a process that runs
    with pytest.raises(FactorlensError, match=r"is being written by process \d+, which holds"):
        publish(out, lambda s: (s / "a.txt").write_text("a"), ("a.txt",))
    lock.write_text(str(_dead_pid()))
    publish(out, lambda s: (s / "a.txt").write_text("a"), ("a.txt",))
    assert (out / "a.txt").read_text() == "a" and not lock.exists()


def test_stale_staging_of_a_dead_process_is_removed_with_a_note(cli, project) -> None:
    out = project["root"] / "out"
    stale = project["root"] / f".out.staging-{_dead_pid()}-x1y2"
    stale.mkdir()
    (stale / "result.json").write_text("{}")
    legacy = project["root"] / ".out.staging-abcd"
    legacy.mkdir()
    res = cli.ok(analyze_args(project, out))
    assert not stale.exists()
    assert "removed" in res.err and "interrupted run" in res.err
    assert legacy.is_dir() and f"{legacy} is left over" in res.err


def test_stale_staging_of_a_reused_live_pid_and_a_planted_link(cli, project) -> None:
    out = project["root"] / "out"
    reused = project["root"] / f".out.staging-{os.getppid()}.1-x1y2"  # a live pid, another start
    reused.mkdir()
    victim = project["root"] / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    planted = project["root"] / f".out.staging-{_dead_pid()}-link"
    planted.symlink_to(victim, target_is_directory=True)
    res = cli.ok(analyze_args(project, out))
    assert not reused.exists() and f"removed {reused}" in res.err
    assert not planted.is_symlink() and (victim / "keep.txt").read_text() == "keep"
    assert f"removed {planted}" in res.err


def test_a_killed_runs_scratch_folder_is_removed_by_the_next(tmp_path, capsys) -> None:
    from factorlens.quality import SCRATCH_PREFIX, scratch_store

    left = tmp_path / f"{SCRATCH_PREFIX}{_dead_pid()}.5-abcd"
    (left / "store").mkdir(parents=True)
    with scratch_store(tmp_path) as store:
        assert store is not None and store.parent.name.startswith(SCRATCH_PREFIX)
    assert not left.exists() and "removed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_dangling_symlink_out_says_so(cli, project) -> None:
    out = project["root"] / "out"
    out.symlink_to(project["root"] / "gone")
    cli.fails(analyze_args(project, out), "symbolic link", "does not exist")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_a_read_only_parent_of_out_fails_before_the_work(cli, project) -> None:
    parent = project["root"] / "ro"
    (parent / "out").mkdir(parents=True)
    parent.chmod(0o555)
    try:
        cli.fails(analyze_args(project, parent / "out", "--overwrite"), "not writable")
    finally:
        parent.chmod(0o755)


def test_a_damaged_manifest_refuses_overwrite(cli, project) -> None:
    out = project["root"] / "out"
    cli.ok(analyze_args(project, out))
    (out / MANIFEST).write_text("{not json")
    cli.fails(analyze_args(project, out, "--overwrite"), "damaged", MANIFEST)


def test_report_in_place_rewrites_only_the_report(cli, project) -> None:
    out = project["root"] / "out"
    cli.ok(analyze_args(project, out))
    (out / "figures" / "mine.txt").write_text("keep")
    before = snapshot(out)
    cli.ok(["report", out])
    after = snapshot(out)
    assert after["figures/mine.txt"] == before["figures/mine.txt"]
    assert after["result.json"] == before["result.json"]
    assert after["factors.npz"] == before["factors.npz"]


def test_helper_files_of_a_dead_lock_holder_are_removed(tmp_path: Path) -> None:
    dead = _dead_pid()
    for name in (f".out.lock.{dead}", f".out.lock.stale-{dead}"):
        (tmp_path / name).write_text(str(dead))
    publish(tmp_path / "out", lambda s: (s / "a.txt").write_text("a"), ("a.txt",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_live_lock_is_refused_before_the_work(cli, project) -> None:
    out = project["root"] / "out"
    lock = project["root"] / ".out.lock"
    lock.write_text(str(os.getppid()))  # a running process (a forged lock looks the same)
    line = cli.fails(analyze_args(project, out), "is being written by process", "delete that lock")
    assert str(lock) in line
    assert not list(project["root"].glob(".out.staging-*"))  # refused before any staging


def test_odd_manifest_entries_neither_crash_nor_delete(cli, project) -> None:
    out = project["root"] / "out"
    cli.ok(analyze_args(project, out))
    doc = json.loads((out / MANIFEST).read_text())
    doc["files"] += ["figures", "bad\x00name.png"]  # a folder and a NUL byte
    (out / MANIFEST).write_text(json.dumps(doc))
    (out / "figures" / "mine.txt").write_text("keep")
    cli.ok(analyze_args(project, out, "--overwrite", "--rank", "3"))
    assert (out / "figures" / "mine.txt").read_text() == "keep"
    assert json.loads((out / "result.json").read_text())["rank"] == 3


def test_report_of_several_into_one_of_them_needs_overwrite(cli, project) -> None:
    d1, d2 = project["root"] / "d1", project["root"] / "d2"
    cli.ok(analyze_args(project, d1))
    cli.ok(analyze_args(project, d2))
    cli.fails(["report", d1, d2, "--out", d1], "would replace", "own report", "--overwrite")
    cli.fails(["report", d1, d2], "would replace")  # in place is d1 too
    cli.ok(["report", d1, d2, "--out", d1, "--overwrite"])
    assert 'id="checkpoints-summary"' in (d1 / "index.html").read_text()


def _result(text: str):
    def produce(stage: Path) -> None:
        (stage / "figures").mkdir()
        for i in range(3):
            (stage / "figures" / f"f{i}.png").write_text(text)
        (stage / "result.json").write_text(json.dumps({"format": "factorlens-result", "x": text}))

    return produce


NAMES = ("result.json", "figures")


def _disk_full_at(monkeypatch, call: int, what: str = "replace") -> None:
    """Make the ``call``-th ``Path.replace`` (a file moved in) or ``Path.mkdir`` under ``out``
    fail as a disk out of inodes does."""
    import errno

    real = getattr(Path, what)
    seen = [0]

    def failing(self, *args, **kwargs):
        if "out" in self.parts or any("out" in Path(a).parts for a in args if isinstance(a, Path)):
            seen[0] += 1
            if seen[0] == call:
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, what, failing)


@pytest.mark.parametrize("what", ["replace", "mkdir"])
def test_a_publish_that_runs_out_of_room_leaves_no_part_of_a_new_result(
    tmp_path, monkeypatch, what
) -> None:
    out = tmp_path / "out"
    _disk_full_at(monkeypatch, 2, what)
    with pytest.raises(FactorlensError, match=r"could not finish writing .*nothing was written"):
        publish(out, _result("new"), NAMES)
    monkeypatch.undo()
    assert not out.exists()
    assert not list(tmp_path.glob(".out.*"))  # no staging folder or lock left either
    publish(out, _result("new"), NAMES)  # once there is room it simply works
    assert json.loads((out / "result.json").read_text())["x"] == "new"


def test_a_replace_that_runs_out_of_room_keeps_every_file_listed(tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    publish(out, _result("old"), NAMES)
    (out / "notes.txt").write_text("mine")
    _disk_full_at(monkeypatch, 3)  # two files of the new result moved in, then the disk fails
    with pytest.raises(FactorlensError, match="holds part of the new result"):
        publish(out, _result("new"), NAMES, overwrite=True)
    monkeypatch.undo()
    assert read_manifest(out) >= {"result.json", "figures/f0.png", "figures/f1.png"}
    publish(out, _result("new"), NAMES, overwrite=True)  # the rerun is not refused
    assert json.loads((out / "result.json").read_text())["x"] == "new"
    assert (out / "notes.txt").read_text() == "mine"
