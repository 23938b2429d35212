"""Fixtures of the reliability suite (the harness itself is in harness.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import CLI


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> CLI:
    """Runs the CLI in-process and checks errors, tracebacks and untouched files."""
    return CLI(tmp_path, capsys)
