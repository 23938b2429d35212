"""The reliability suite's harness: run the CLI, check the one-line error, and prove that no
file that existed before the run was changed or removed."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from factorlens.cli import main
from tinyproject import analyze_args as shared_analyze_args


def snapshot(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (links by their target)."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


@dataclass
class Outcome:
    rc: int
    out: str
    err: str


class CLI:
    """Runs ``factorlens`` in-process and checks what every reliability test must hold."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self.capsys = capsys

    def run(self, args: Sequence[str]) -> Outcome:
        self.capsys.readouterr()
        rc = main([str(a) for a in args])
        captured = self.capsys.readouterr()
        assert "Traceback" not in captured.err, captured.err
        return Outcome(rc, captured.out, captured.err)

    def ok(self, args: Sequence[str]) -> Outcome:
        """The run succeeds (exit 0)."""
        res = self.run(args)
        assert res.rc == 0, res.err
        return res

    def fails(
        self, args: Sequence[str], *needles: str, keep: Path | None = None, rc: int = 2
    ) -> str:
        """The run exits ``rc`` (2, a usage error; 1, a failure at run time) with exactly one
        ``error:`` line containing every needle, and no file under ``keep`` (default: the
        test's folder) that existed before was changed."""
        where = keep or self.root
        before = snapshot(where)
        res = self.run(args)
        after = snapshot(where)
        lines = [line for line in res.err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error: ")]
        assert res.rc == rc, (res.rc, res.err)
        assert len(errors) == 1, res.err
        for needle in needles:
            assert needle in errors[0], (needle, errors[0])
        changed = {k for k in before if before[k] != after.get(k)}
        assert not changed, f"files changed or removed: {sorted(changed)}"
        return errors[0]

    def usage_error(self, args: Sequence[str], *needles: str, keep: Path | None = None) -> str:
        """argparse refuses the command line: exit 2, its usage and exactly one
        ``factorlens <command>: error:`` line containing every needle, no file changed."""
        where = keep or self.root
        before = snapshot(where)
        self.capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            main([str(a) for a in args])
        err = self.capsys.readouterr().err
        after = snapshot(where)
        assert "Traceback" not in err, err
        assert stop.value.code == 2, (stop.value.code, err)
        errors = [line for line in err.splitlines() if ": error: " in line]
        assert len(errors) == 1 and errors[0].startswith("factorlens "), err
        for needle in needles:
            assert needle in errors[0], (needle, errors[0])
        changed = {k for k in before if before[k] != after.get(k)}
        assert not changed, f"files changed or removed: {sorted(changed)}"
        return errors[0]


def analyze_args(p: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """``factorlens analyze`` of the tiny project at rank 2, one start (quiet)."""
    return shared_analyze_args(p, out, "--n-init", "1", *extra, rank=2)
