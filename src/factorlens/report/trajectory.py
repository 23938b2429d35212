"""Several checkpoints of one model analysed on the same test inputs: watch patterns appear.

``factorlens report DIR1 DIR2 ... --out OUT`` gives the full report of ``DIR1`` (the main
result) plus a ``#trajectory`` section over all of them, in the order given:

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from factorlens.errors import FactorlensError
from factorlens.factorize import CMTFResult, congruence
from factorlens.report import figures as F
from factorlens.report.html import _Figures, _pix_img, esc, format_value, write_report

#: a match weaker than this breaks a track (the later component starts a new one)
MIN_CONGRUENCE = 0.5


@dataclass
class Checkpoint:
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

    @property
    def accuracy(self) -> float | None:
        """Test accuracy that ``factorlens quality`` recorded (labels, reference only), or None."""
        quality = (self.result.meta or {}).get("quality")
        acc = quality.get("accuracy") if isinstance(quality, dict) else None
        if isinstance(acc, (int, float)) and not isinstance(acc, bool) and np.isfinite(acc):
            return float(acc)
        return None


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
    component: int  # index in that checkpoint's result
    sign: float  # +1 / -1: flip to align with the track's first pattern
    congruence: float | None  # |congruence| with the previous cell; None: the track starts here
    best: float = 0.0  # for a start: |congruence| of the best (too weak) match, if any


@dataclass
class Trajectory:
    checkpoints: list[Checkpoint]
    links: list[Link]
    tracks: list[list[TrackCell | None]]
    min_congruence: float = MIN_CONGRUENCE

    @property
    def labels(self) -> list[str]:
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
    """Match the columns of ``A_next`` (N, R2) to those of ``A_prev`` (N, R1) one-to-one,
    maximising the total |congruence|; with R2 > R1 some stay unmatched (-1)."""
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
                tracks.append([None] * (i + 1) + [TrackCell(k, 1.0, None, abs(c))])
                tracks[-1] += [None] * (T - len(tracks[-1]))
                t = len(tracks) - 1
            nxt[k] = t
        where = nxt
    return Trajectory(cps, links, tracks, min_congruence)


def load_checkpoints(sources: Sequence[str | Path]) -> list[Checkpoint]:
    """Load result directories as checkpoints and check they can be compared.

    Besides equal block names and numbers of samples, their saved test inputs (``inputs.npz``,
    where present) must be the same: matching columns of A only makes sense then.
    """
    from factorlens.pipeline import INPUTS_NPZ, load_inputs

    cps = []
    for s in sources:
        res = CMTFResult.load(s)
        cps.append(Checkpoint(checkpoint_label(res, s), res, Path(s)))
    check_compatible(cps)
    ref = None
    for c in cps:
        if c.source is None or not (c.source / INPUTS_NPZ).is_file():
            continue
        images = load_inputs(c.source)[0]
        if ref is None:
            ref = (c, images)
        elif images.shape != ref[1].shape or not np.array_equal(images, ref[1]):
            raise FactorlensError(
                f"cannot compare {c.label!r} with {ref[0].label!r}: they were analysed on "
                "different test inputs; analyse every checkpoint on the same inputs"
            )
    return cps


# --------------------------------------------------------------------------- rendering
def _pattern(
    cp: Checkpoint, k: int, sign: float, sample_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """``(native, display)`` pixels of checkpoint ``cp``'s input pattern ``k`` (times ``sign``)."""
    res = cp.result
    x = sign * np.asarray(res.component_map(res.block_names[0], k)).reshape(sample_shape)
    kind = F.sample_kind(sample_shape)
    pix, _, _ = F.pattern_to_pixels(x, kind)
    if kind == "vector":
        big = F.strip(pix, width=120, height=10)
        return big, big
    return pix, F.enlarge(pix, side=48, max_side=64)


def render_trajectory(traj: Trajectory, sample_shape: Sequence[int], figs: _Figures) -> str:
    """The ``#trajectory`` section; writes ``trajectory_*.png`` through ``figs``."""
    shape = tuple(int(s) for s in sample_shape)
    cps = traj.checkpoints
    scores = [c.score for c in cps]
    numeric = all(isinstance(s, float) for s in scores)
    chart = figs.put(
        "trajectory_checkpoints.png",
        F.checkpoint_chart(
            traj.labels,
            [c.result.rank for c in cps],
            [float(s) for s in scores] if numeric else None,  # type: ignore[arg-type]
        ),
    )
    with_acc = any(c.accuracy is not None for c in cps)
    rows = []
    for i, c in enumerate(cps):
        acc = c.accuracy
        acc_cell = (
            f'<td class="num">{"—" if acc is None else f"{acc:.4f}"}</td>' if with_acc else ""
        )
        fits = [float(v) for v in c.result.fit.values()]
        mean_fit = f"{100 * float(np.mean(fits)):.1f}%" if fits else "n/a"
        score = (
            "—"
            if scores[i] is None
            else (f"{scores[i]:.4g}" if isinstance(scores[i], float) else esc(scores[i]))
        )
        if i == 0:
            agree = "main result"
        else:
            link = traj.links[i - 1]
            vals = [link.matched(k) for k in range(len(link.match)) if link.match[k] >= 0]
            agree = f"{np.mean(vals):.2f}" if vals else "—"
        src = esc(c.source.name if c.source is not None else "")
        rows.append(
            f'<tr><td class="num">{i + 1}</td><td class="name">{esc(c.label)}</td>'
            f'<td class="name">{src}</td><td class="num">{c.result.rank}</td>'
            f'<td class="num">{score}</td>{acc_cell}<td class="num">{mean_fit}</td>'
            f'<td class="num">{agree}</td></tr>'
        )
    acc_head = "<th>test accuracy (labels, for reference)</th>" if with_acc else ""
    cong = ""
    if traj.links:
        src = figs.put(
            "trajectory_congruence.png",
            F.congruence_chart(
                [lk.congruence for lk in traj.links],
                [f"{a} →\n{b}" for a, b in itertools.pairwise(traj.labels)],
                [lk.match for lk in traj.links],
            ),
        )
        cong = (
            f'<figure><img src="{src}" alt="congruence of the sample factors of consecutive '
            'checkpoints (heatmaps)"><figcaption>|congruence| between the columns of A of '
            "consecutive checkpoints; boxes = the one-to-one matching</figcaption></figure>"
        )

    head = "".join(f'<th class="name" scope="col">{esc(lab)}</th>' for lab in traj.labels)
    body, tiles = [], []
    blank = None
    for t, track in enumerate(traj.tracks):
        cells = []
        for i, cell in enumerate(track):
            if cell is None:
                cells.append('<td class="none">—</td>')
                tiles.append(None)
                continue
            nat, pix = _pattern(cps[i], cell.component, cell.sign, shape)
            tiles.append(pix)
            blank = pix if blank is None else blank
            cname = f"C{cell.component + 1}"
            label = f'<a href="#component-{cell.component + 1}">{cname}</a>' if i == 0 else cname
            if cell.congruence is None:
                bg, fg = "#ffffff", "#111111"
                note = "start" if i == 0 else f"new (best {cell.best:.2f})"
            else:
                bg, fg = F.shade(cell.congruence, 1.0)
                note = f"{cell.congruence:.2f}"
            alt = f"{cps[i].label} {cname} input pattern"
            flip = " (sign flipped)" if cell.sign < 0 else ""
            cells.append(
                f'<td style="background:{bg};color:{fg}" title="{esc(alt + flip)}"><figure>'
                f"{_pix_img(nat, pix, alt)}"
                f"<figcaption>{label} · {note}</figcaption></figure></td>"
            )
        body.append(f'<tr><th scope="row">T{t + 1}</th>{"".join(cells)}</tr>')
    if blank is not None:
        empty = np.full_like(blank, 255)
        grid_tiles = [empty if p is None or p.shape != blank.shape else p for p in tiles]
        figs.put("trajectory_patterns.png", F.png(F.grid(grid_tiles, ncols=len(cps), gap=3)))
    return f"""
<section id="trajectory">
<h2>Checkpoints</h2>
<p class="note">The same test inputs analysed at {len(cps)} checkpoints, in the order given
(the first is the main result shown above). Components of consecutive checkpoints are matched
by the congruence of their loadings (columns of the sample factor A, signs ignored).</p>
<div class="row">
<table class="checkpoints"><thead><tr><th>#</th><th>checkpoint</th><th>directory</th>
<th>rank</th><th>score</th>{acc_head}<th>mean fit</th><th>mean |congruence| with the previous</th></tr>
</thead><tbody>{"".join(rows)}</tbody></table>
<figure><img src="{chart}" alt="rank and score of each checkpoint"></figure>
</div>
{cong}
<h3>Tracks: each pattern across the checkpoints</h3>
<p class="note">One row per track: a chain of matched components, each shown by its input
pattern (sign-aligned with the track's start) and the |congruence| with the previous checkpoint
(darker = closer). A match weaker than {traj.min_congruence:.2f}, or none, starts a new track:
a pattern that appeared. Main-result components link to their view above.</p>
<div class="flowwrap"><table class="tracks"><thead><tr><th>track</th>{head}</tr></thead>
<tbody>{"".join(body)}</tbody></table></div>
</section>"""


def write_trajectory_report(
    out: str | Path,
    sources: Sequence[str | Path],
    *,
    title: str = "factorlens report",
    overwrite: bool = False,
) -> Path:
    """Write the report of ``sources[0]`` with the checkpoints view over all ``sources`` into
    ``out`` (``index.html`` and ``figures/``, staged then moved like ``write_report_files``;
    ``overwrite`` replaces a report factorlens wrote there)."""
    from factorlens.pipeline import FIGURES_DIR, REPORT_HTML, load_inputs, publish

    cps = load_checkpoints(sources)
    traj = build_trajectory(cps)
    images, labels, class_names = load_inputs(sources[0])
    main = cps[0].result
    return publish(
        Path(out),
        lambda stage: write_report(
            stage, main, images, labels, class_names, title=title, trajectory=traj
        ),
        (REPORT_HTML, FIGURES_DIR),
        overwrite=overwrite,
    )
