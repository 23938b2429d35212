"""Several checkpoints of one model analysed on the same test inputs: watch patterns appear.

Data only (the page's view of it: :mod:`factorlens.report.view_checkpoints`).
``factorlens report DIR1 DIR2 ... --out OUT`` gives the full report of the main result (the
best-scoring checkpoint, else the last, or the one asked for) plus a ``#trajectory`` section
over all of them, in the order given:

* per checkpoint its label (``meta["checkpoint"]``, else the directory name), rank, the
  ``meta["quality_score"]`` when present, and the mean fit;
* components of consecutive checkpoints matched one-to-one by the congruence (cosine) of their
  columns of the shared sample factor ``A`` — which inputs load on them — with the Hungarian
  algorithm on ``|congruence|`` (signs are arbitrary);
* *tracks*: chains of matched components from checkpoint to checkpoint. A component whose best
  match is weaker than ``min_congruence`` (or that has none, when the rank grew) starts a new
  track: a pattern that appeared. Each cell shows that checkpoint's input pattern, sign-aligned
  with the track's first one.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
from scipy.optimize import linear_sum_assignment

from factorlens.errors import FactorlensError
from factorlens.factorize import CMTFResult, congruence
from factorlens.report.assets import format_value

#: a match weaker than this breaks a track (the later component starts a new one)
MIN_CONGRUENCE = 0.5


@dataclass
class Checkpoint:
    """One analysed checkpoint: its label, its result and the directory it came from."""

    label: str
    result: CMTFResult
    source: Path | None = None

    @property
    def score(self) -> float | str | None:
        """``meta["quality_score"]`` as a number when it is one, else as text, else None."""
        s = (self.result.meta or {}).get("quality_score")
        if s is None:
            return None
        if isinstance(s, (int, float, np.number)) and not isinstance(s, bool):
            return float(s)
        return format_value(s, 60)

    def _quality(self, key: str) -> float | None:
        """Return the finite number ``factorlens quality`` recorded under ``key``, or None."""
        quality = (self.result.meta or {}).get("quality")
        value = quality.get(key) if isinstance(quality, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            return float(value)
        return None

    @property
    def accuracy(self) -> float | None:
        """Test accuracy that ``factorlens quality`` recorded (labels, reference only), or None."""
        return self._quality("accuracy")

    @property
    def score_sd(self) -> float | None:
        """The score's standard deviation over the perturbed copies, when recorded."""
        return self._quality("score_sd")

    @property
    def warnings(self) -> list[str]:
        """Why ``factorlens quality`` doubted the set's scores (one line each), if it did."""
        quality = (self.result.meta or {}).get("quality")
        said = quality.get("warnings") if isinstance(quality, dict) else None
        return [format_value(w, 300) for w in said] if isinstance(said, list) else []

    @property
    def rank_estimated(self) -> bool:
        """Whether the rank came from a rank scan (``meta["rank_scan"]``), not a fixed ``--rank``."""
        return isinstance((self.result.meta or {}).get("rank_scan"), dict)


@dataclass
class Link:
    """Matching of checkpoint i's components to checkpoint i + 1's."""

    congruence: np.ndarray  # (R_prev, R_next) signed cosines of the A columns
    match: np.ndarray  # (R_next,) index of the matched previous component, -1 = none

    def matched(self, k: int) -> float:
        """|congruence| of next component ``k`` with its match (0 when unmatched)."""
        j = int(self.match[k])
        return abs(float(self.congruence[j, k])) if j >= 0 else 0.0


@dataclass
class TrackCell:
    """One checkpoint's component on a track, with its sign and match to the previous cell."""

    component: int  # index in that checkpoint's result
    sign: float  # +1 / -1: flip to align with the track's first pattern
    congruence: float | None  # |congruence| with the previous cell; None: the track starts here
    best: float = 0.0  # for a start: |congruence| of the best (too weak) match, if any


@dataclass
class Trajectory:
    """Checkpoints, the links between consecutive ones and the tracks of matched components."""

    checkpoints: list[Checkpoint]
    links: list[Link]
    tracks: list[list[TrackCell | None]]
    min_congruence: float = MIN_CONGRUENCE

    @property
    def labels(self) -> list[str]:
        """The checkpoints' labels, in order."""
        return [c.label for c in self.checkpoints]


def checkpoint_label(result: CMTFResult, source: str | Path | None = None) -> str:
    """``meta["checkpoint"]`` when present, else the result directory's name."""
    label = (result.meta or {}).get("checkpoint")
    if label not in (None, ""):
        return format_value(label, 80)
    if source is not None:
        p = Path(source)
        return p.resolve().name or str(p)
    return "result"


def check_compatible(checkpoints: Sequence[Checkpoint]) -> None:
    """Refuse checkpoints whose block names or numbers of samples differ (one-line error)."""
    if not checkpoints:
        raise FactorlensError("give at least one result directory")
    first = checkpoints[0]
    names0 = list(first.result.block_names)
    for c in checkpoints[1:]:
        names = list(c.result.block_names)
        if names != names0:
            raise FactorlensError(
                f"cannot compare {c.label!r} with {first.label!r}: their blocks differ "
                f"({names!r} vs {names0!r}); give results of the same model and layers"
            )
        if c.result.n_samples != first.result.n_samples:
            raise FactorlensError(
                f"cannot compare {c.label!r} ({c.result.n_samples} samples) with "
                f"{first.label!r} ({first.result.n_samples} samples); analyse every "
                "checkpoint on the same test inputs"
            )
        if tuple(c.result.block_shapes[0]) != tuple(first.result.block_shapes[0]):
            raise FactorlensError(
                f"cannot compare {c.label!r} with {first.label!r}: their input blocks have "
                f"shapes {tuple(c.result.block_shapes[0])} and "
                f"{tuple(first.result.block_shapes[0])}; analyse every checkpoint on the same "
                "test inputs"
            )


def match_components(A_prev: np.ndarray, A_next: np.ndarray) -> Link:
    """Match the columns of ``A_next`` (N, R2) to those of ``A_prev`` (N, R1) one-to-one.

    The matching maximises the total |congruence|; with R2 > R1 some stay unmatched (-1).
    """
    C = congruence(np.asarray(A_prev, dtype=np.float64), np.asarray(A_next, dtype=np.float64))
    rows, cols = linear_sum_assignment(-np.abs(C))
    match = np.full(C.shape[1], -1, dtype=np.int64)
    match[cols] = rows
    return Link(congruence=C, match=match)


def build_trajectory(
    checkpoints: Sequence[Checkpoint], min_congruence: float = MIN_CONGRUENCE
) -> Trajectory:
    """Match consecutive checkpoints and chain the matches into tracks (see module doc)."""
    cps = list(checkpoints)
    check_compatible(cps)
    links = [match_components(a.result.A, b.result.A) for a, b in itertools.pairwise(cps)]
    T = len(cps)
    tracks: list[list[TrackCell | None]] = []
    where: dict[int, int] = {}  # component of the current checkpoint -> its track
    for k in range(cps[0].result.rank):
        tracks.append([TrackCell(k, 1.0, None)] + [None] * (T - 1))
        where[k] = k
    for i, link in enumerate(links):
        nxt: dict[int, int] = {}
        for k in range(cps[i + 1].result.rank):
            j = int(link.match[k])
            c = float(link.congruence[j, k]) if j >= 0 else 0.0
            if j >= 0 and abs(c) >= min_congruence and j in where:
                t = where[j]
                prev = tracks[t][i]
                assert prev is not None
                sign = prev.sign * (1.0 if c >= 0 else -1.0)
                tracks[t][i + 1] = TrackCell(k, sign, abs(c))
            else:
                best = float(np.max(np.abs(link.congruence[:, k]))) if link.congruence.size else 0.0
                tracks.append([None] * (i + 1) + [TrackCell(k, 1.0, None, best)])
                tracks[-1] += [None] * (T - len(tracks[-1]))
                t = len(tracks) - 1
            nxt[k] = t
        where = nxt
    return Trajectory(cps, links, tracks, min_congruence)


def main_index(checkpoints: Sequence[Checkpoint], main: int | None = None) -> int:
    """Return the index of the checkpoint the page shows in full.

    That is ``main`` (0-based) when given, else the best-scoring one (numeric
    ``quality_score``), else the last.
    """
    n = len(checkpoints)
    if main is not None:
        if not -n <= int(main) < n:
            raise FactorlensError(f"main checkpoint {main} is out of range: there are {n}")
        return int(main) % n
    scores = [c.score for c in checkpoints]
    finite = [s for s in scores if isinstance(s, float) and np.isfinite(s)]
    if scores and len(finite) == len(scores):
        return int(np.argmax(finite))
    return n - 1


_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def short_labels(labels: Sequence[str]) -> list[str]:
    """Return short, distinct labels for checkpoints.

    Each is the last path part without a weights suffix, with more of the path where that is
    not unique, and ``#i`` appended where it still is not.

    Parameters
    ----------
    labels : sequence of str
        Checkpoint labels, often paths.

    Returns
    -------
    list of str
        One short label each, all distinct.

    Examples
    --------
    >>> from factorlens.report.trajectory import short_labels
    >>> short_labels(["zoo/steps/step-000040.pt", "zoo/noise/noise-080.pt"])
    ['step-000040', 'noise-080']
    >>> short_labels(["a/run1/last.pt", "b/run1/last.pt", "c/run2/last.pt"])
    ['a/run1/last', 'b/run1/last', 'run2/last']
    >>> short_labels(["x/a/b/last.pt", "x/a/b/last.pt"])
    ['a/b/last #1', 'a/b/last #2']
    """
    parts = [PurePath(str(t)).parts or (str(t),) for t in labels]

    def tail(p: tuple[str, ...], k: int) -> str:
        s = "/".join(p[-k:])
        for suffix in _SUFFIXES:
            if s.endswith(suffix) and len(s) > len(suffix):
                return s[: -len(suffix)]
        return s

    out = [tail(p, 1) for p in parts]
    for k in (2, 3):
        dup = {t for t in out if out.count(t) > 1}
        out = [tail(p, k) if t in dup else t for t, p in zip(out, parts, strict=True)]
    dup = {t for t in out if out.count(t) > 1}  # counted before any is renamed
    used = set(out)
    seen: dict[str, int] = {}
    for i, t in enumerate(out):
        if t in dup:
            n = seen.get(t, 0) + 1
            while f"{t} #{n}" in used:  # never the same as another label
                n += 1
            seen[t] = n
            out[i] = f"{t} #{n}"
            used.add(out[i])
    return out


def run_keys(labels: Sequence[str]) -> list[str]:
    """Return the run each checkpoint belongs to: its label without the trailing number.

    ``step-300`` and ``step-900`` are one run, ``noise-080`` another; lines join only within
    a run.

    Parameters
    ----------
    labels : sequence of str
        Checkpoint labels.

    Returns
    -------
    list of str
        One run key per label.

    Examples
    --------
    >>> from factorlens.report.trajectory import run_keys
    >>> run_keys(["step-300", "step-900", "noise-080", "width_16"])
    ['step', 'step', 'noise', 'width']
    """
    return [re.sub(r"[-_ .=:]*\d+(?:\.\d+)?$", "", str(t)) or str(t) for t in labels]


def runs(keys: Sequence[str]) -> list[list[int]]:
    """Index lists of consecutive checkpoints with the same run key."""
    out: list[list[int]] = []
    for i, k in enumerate(keys):
        if out and keys[out[-1][-1]] == k:
            out[-1].append(i)
        else:
            out.append([i])
    return out
