"""numpy's huge-page advice: off while a factorlens entry point runs, restored after."""

from __future__ import annotations

import threading

import pytest

from factorlens import pages
from factorlens.factorize import CMTF
from factorlens.testing import planted_blocks

switch = pages._switch()
pytestmark = pytest.mark.skipif(switch is None, reason="this numpy has no huge-page switch")


def advice() -> bool:
    """numpy's current setting (read by setting it back to what it was)."""
    assert switch is not None
    value = bool(switch(True))
    switch(value)
    return value


@pytest.fixture
def advice_on(monkeypatch):
    monkeypatch.delenv(pages.ENV, raising=False)
    assert switch is not None
    before = switch(True)
    yield
    switch(before)


def test_off_inside_nested_entries_and_restored_after(advice_on):
    with pages.small_pages():
        assert advice() is False
        with pages.small_pages():
            assert advice() is False
        assert advice() is False  # the inner exit does not restore while the outer runs
    assert advice() is True


def test_restored_after_an_error(advice_on):
    with pytest.raises(RuntimeError), pages.small_pages():
        raise RuntimeError("boom")
    assert advice() is True


def test_a_fit_runs_without_the_advice(advice_on, monkeypatch):
    seen = []
    original = CMTF.prepare

    def spy(self, blocks):
        seen.append(advice())
        return original(self, blocks)

    monkeypatch.setattr(CMTF, "prepare", spy)
    blocks, _ = planted_blocks(N=40, R=3)
    CMTF(2, n_init=1, n_iter_max=5).fit(blocks)
    assert seen == [False]
    assert advice() is True


def test_the_users_choice_stands(advice_on, monkeypatch):
    monkeypatch.setenv(pages.ENV, "1")
    with pages.small_pages():
        assert advice() is True


def test_threads_restore_once_the_last_leaves(advice_on):
    inside, leave = threading.Event(), threading.Event()

    def worker():
        with pages.small_pages():
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    inside.wait(10)
    with pages.small_pages():
        pass
    assert advice() is False  # the worker is still inside
    leave.set()
    t.join(10)
    assert advice() is True
