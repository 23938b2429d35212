"""Symbolic links planted in or beside an output folder never make factorlens write or remove
files outside it (issue 26's five data-loss cases)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness import analyze_args, snapshot

from factorlens.output import MANIFEST


def _outside(root: Path) -> Path:
    """A user's folder outside every output folder, with files of their own."""
    shared = root / "shared"
    shared.mkdir()
    (shared / "user-notes.png").write_bytes(b"a user's figure")
    (shared / "notes.txt").write_text("a user's notes")
    return shared


def _figures_as_link(cli, project, with_a_figure_name: bool) -> tuple[Path, Path]:
    out = project["root"] / "out"
    cli.ok(analyze_args(project, out))
    shared = _outside(project["root"])
    manifest = json.loads((out / MANIFEST).read_text())
    figure = next(f for f in manifest["files"] if f.startswith("figures/"))
    if with_a_figure_name:  # the shared folder holds a file with one of our figures' names
        (shared / Path(figure).name).write_bytes(b"a user's file with a figure's name")
    else:  # the manifest lists a file that lives in the shared folder
        manifest["files"].append("figures/user-notes.png")
        (out / MANIFEST).write_text(json.dumps(manifest))
    for f in (out / "figures").iterdir():
        f.unlink()
    (out / "figures").rmdir()
    (out / "figures").symlink_to(shared, target_is_directory=True)
    return out, shared


def test_overwrite_never_removes_through_a_linked_figures_folder(cli, project) -> None:
    out, shared = _figures_as_link(cli, project, with_a_figure_name=False)
    cli.fails(analyze_args(project, out, "--overwrite"), "figures", "symbolic link")
    assert (shared / "user-notes.png").read_bytes() == b"a user's figure"


def test_overwrite_never_replaces_through_a_linked_figures_folder(cli, project) -> None:
    out, shared = _figures_as_link(cli, project, with_a_figure_name=True)
    before = snapshot(shared)
    cli.fails(analyze_args(project, out, "--overwrite"), "figures", "symbolic link")
    assert snapshot(shared) == before


def test_another_tools_result_json_is_not_taken_for_ours(cli, project) -> None:
    out = project["root"] / "theirs"
    (out / "figures").mkdir(parents=True)
    (out / "result.json").write_text(json.dumps({"format_version": 3, "accuracy": 0.9}))
    (out / "figures" / "fig1.png").write_bytes(b"their figure")
    cli.fails(analyze_args(project, out, "--overwrite"), "result.json", "not written by factorlens")
    assert (out / "figures" / "fig1.png").read_bytes() == b"their figure"


def test_a_planted_lock_helper_link_is_not_written_through(cli, project) -> None:
    out = project["root"] / "out"
    victim = project["root"] / "victim.txt"
    victim.write_text("keep me")
    planted = out.parent / f".{out.name}.lock.{os.getpid()}"  # the lock's helper of this run
    planted.symlink_to(victim)
    cli.ok(analyze_args(project, out))
    assert victim.read_text() == "keep me"
    assert not planted.is_symlink() and not planted.exists()  # the helper is gone after use


def test_a_planted_manifest_temp_link_is_not_written_through(cli, project) -> None:
    out = project["root"] / "out"
    cli.ok(analyze_args(project, out))
    victim = project["root"] / "victim.txt"
    victim.write_text("keep me")
    (out / f".{MANIFEST}.tmp-{os.getpid()}").symlink_to(victim)
    cli.ok(analyze_args(project, out, "--overwrite"))
    assert victim.read_text() == "keep me"
    assert not (out / MANIFEST).is_symlink()
    assert "result.json" in json.loads((out / MANIFEST).read_text())["files"]
