"""Benchmark: does the factorization evidence mean what the literature means, on known truth?

Five checks, each on planted data (or, for the last, the README's digits example):

1. **CORCONDIA vs tlviz.** ``factorlens.rank.core_consistency`` against
   ``tlviz.model_evaluation.core_consistency`` on the same fitted factors and data (planted
   CP input, R = true − 1 … true + 2, float64). Reported as the largest relative difference
   ``|ours − tlviz| / max(1, |tlviz|)`` (over-factored models give values of −10¹¹, where
   only a relative difference is meaningful).
2. **ACMTF shared/unshared recovery** (the setting of Acar et al. 2014): a 50×30×40 tensor and
   a 50×20 matrix coupled in the first mode, 3 shared components, 1 only in the tensor, 1 only
   in the matrix; unit-norm Gaussian factors; noise ‖E‖ = η‖X‖ per block; 20 draws at
   η = 0.1 and at η = 0.25 (seeds from 2000: seeds 0-19 were used to set the flagging
   rules of check 3, and seeds 1000-1019 were the fresh draws of an earlier rule), fitted
   at R = 5 with the default settings of ``CMTF``. A draw is recovered when every true
   component is matched (sample-factor congruence ≥ 0.9), is present
   (``CMTFResult.presence``: strength above the block's noise floor) in exactly the blocks
   that hold it, and ``CMTFResult.spare_components`` names no sign of too many components.
3. **Over-factoring** on the same draws at R = 6: flagged when the spare component vanishes
   (zero strength in every block) while the five true components are still matched, or when
   ``CMTFResult.spare_components`` names it (a shared component split in two, a degenerate
   pair, or — the rule that decides on this data — no block gaining more from the sixth
   component than its noise floor², against the fit at R = 5 that ``CMTF(check_fewer=True)``
   makes).
4. **Rank recovery**: ``estimate_rank`` on ``planted_blocks``-style data (a CP input and two
   layer matrices) with true rank 2, 4, 6, 8 × noise 0.05, 0.2 × 5 seeds, plus a hard
   variant of each (N = 80, correlated sample factors, strengths decaying to 1/3); max rank
   true + 3.
5. **Seed agreement**: the README's rank example (DigitsCNN after 300 steps, 500 digits,
   ``--max-rank 8``) scanned with 10 seeds; agreement = how many seeds give the most common
   rank.

Last line:
``corcondia_maxdiff=X acmtf_recovery=a/40 overfactor_flagged=b/40 rank_recovery=c/d
seed_agreement=e/10``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from subprocess import DEVNULL

import numpy as np
from scipy.optimize import linear_sum_assignment

from factorlens.factorize import CMTF, congruence
from factorlens.rank import core_consistency, estimate_rank
from factorlens.testing import acar_blocks, rank_blocks

NOISES = (0.1, 0.25)
#: the ACMTF draws start here: seeds 0-19 were looked at while the flagging rules were set,
#: and 1000-1019 were reported for the previous rule, so the benchmark reports draws that
#: no rule was set or judged on
FIRST_DRAW = 2000


def _match(A_fit: np.ndarray, A_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each true component, its fitted partner and their |congruence|."""
    C = np.abs(congruence(A_true, A_fit))
    rows, cols = linear_sum_assignment(-C)
    return cols[np.argsort(rows)], C[rows, cols][np.argsort(rows)]


def acmtf_checks(
    draws: int, l1: float | str | None = None, first: int = FIRST_DRAW
) -> tuple[int, int, int]:
    """``(recovered, flagged, total)`` over ``draws`` draws (seeds ``first``, ``first`` + 1,
    …) at each noise level (``l1``: None = the default of ``CMTF``)."""
    opts = {} if l1 is None else {"l1_penalty": l1}
    recovered = flagged = total = 0
    for noise in NOISES:
        for d in range(draws):
            blocks, A_true, support = acar_blocks(first + d, noise)
            total += 1
            res = CMTF(5, random_state=d, **opts).fit(blocks).result_
            perm, cong = _match(res.A, A_true)
            ok = bool(np.all(cong >= 0.9)) and bool(np.all(res.presence()[perm] == support))
            false_alarm = res.spare_components()
            ok = ok and not false_alarm
            recovered += ok
            over = CMTF(6, random_state=d, **opts).fit(blocks).result_
            perm, cong = _match(over.A, A_true)
            spare = sorted(set(range(6)) - set(perm.tolist()))[0]
            vanished = not np.any(over.presence()[spare])
            named = bool(over.spare_components())
            flag = (vanished and bool(np.all(cong >= 0.9))) or named
            flagged += flag
            print(
                f"  acmtf noise={noise:.2f} draw={d:2d}: R=5 {'ok ' if ok else 'NO '} "
                f"{'(spare named: ' + '; '.join(false_alarm) + ') ' if false_alarm else ''}"
                f"min cong {cong.min():.3f}; R=6 {'flagged' if flag else 'NOT flagged'} "
                f"(spare vanished={vanished}, split named={named})",
                file=sys.stderr,
            )
    return recovered, flagged, total


def corcondia_check(seeds: int = 3) -> float:
    """Largest relative difference to tlviz over planted fits at R = true − 1 … true + 2."""
    from tlviz.model_evaluation import core_consistency as reference

    worst = 0.0
    for seed in range(seeds):
        blocks, _ = rank_blocks(N=200, R=3, noise=0.1, seed=seed)
        blocks = {k: v.astype(np.float64) for k, v in blocks.items()}
        for R in range(2, 6):
            model = CMTF(R, random_state=seed)
            data = model.prepare(blocks)
            res = model.fit_blocks(data).result_
            sigma = res.weights["input"] * np.sqrt(data[0].norm_sq)
            X = blocks["input"] * data[0].scale
            for normalised in (False, True):
                ours = core_consistency(res, data[0], normalised=normalised)
                ref = reference((sigma, [res.A, *res.factors["input"]]), X, normalised)
                worst = max(worst, abs(ours - ref) / max(1.0, abs(ref)))
    return worst


def rank_checks(seeds: int) -> tuple[int, int]:
    """``(correct, total)`` chosen ranks on planted data (easy and hard variants)."""
    correct = total = 0
    for hard in (False, True):
        for R in (2, 4, 6, 8):
            for noise in (0.05, 0.2):
                for seed in range(seeds):
                    N = 80 if hard else 300
                    blocks, _ = rank_blocks(N, R, noise, 100 * R + seed, hard=hard)
                    scan = estimate_rank(blocks, R + 3, random_state=seed)
                    total += 1
                    correct += scan.chosen == R
                    print(
                        f"  rank {'hard' if hard else 'easy'} R={R} noise={noise} seed={seed}: "
                        f"chosen {scan.chosen} plausible {scan.plausible}",
                        file=sys.stderr,
                    )
    return correct, total


def seed_agreement(seeds: int) -> tuple[int, list[int]]:
    """The README rank example (a digits zoo's step-300 DigitsCNN, the first 500 digits,
    ranks 1..8; captured with the README's CLI) with ``seeds`` seeds: how many agree with
    the most common chosen rank."""
    from factorlens.research.zoo import build_zoo
    from factorlens.store import open_store

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        zoo = build_zoo("digits", Path(tmp) / "zoo", kinds="steps", progress=False).parent
        store = Path(tmp) / "acts.zarr"
        cli = [sys.executable, "-m", "factorlens", "analyze", "--quiet"]
        cli += ["--model", str(root / "src/factorlens/research/models.py") + ":DigitsCNN"]
        cli += ["--weights", str(zoo / "steps" / "step-000300.pt"), "--data", "digits"]
        cli += ["--n-samples", "500", "--store", str(store), "--rank", "2"]
        subprocess.run([*cli, "--out", str(Path(tmp) / "capture")], check=True, stdout=DEVNULL)
        acts = open_store(store)
        chosen = [estimate_rank(acts, 8, random_state=s).chosen for s in range(seeds)]
    return Counter(chosen).most_common(1)[0][1], chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=20, help="ACMTF draws per noise level")
    parser.add_argument("--rank-seeds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=10, help="seeds of the README example")
    parser.add_argument("--only", choices=["corcondia", "acmtf", "rank", "seeds"])
    parser.add_argument("--l1", help="ACMTF penalty for check 2-3 (default: CMTF's default)")
    parser.add_argument("--first-draw", type=int, default=FIRST_DRAW, help="first ACMTF seed")
    args = parser.parse_args()
    parts = []
    t0 = time.perf_counter()
    if args.only in (None, "corcondia"):
        parts.append(f"corcondia_maxdiff={corcondia_check():.1e}")
    if args.only in (None, "acmtf"):
        l1 = None if args.l1 is None else (args.l1 if args.l1 == "auto" else float(args.l1))
        rec, flag, total = acmtf_checks(args.draws, l1, args.first_draw)
        parts += [f"acmtf_recovery={rec}/{total}", f"overfactor_flagged={flag}/{total}"]
    if args.only in (None, "rank"):
        ok, total = rank_checks(args.rank_seeds)
        parts.append(f"rank_recovery={ok}/{total}")
    if args.only in (None, "seeds"):
        agree, chosen = seed_agreement(args.seeds)
        print(f"  README example, chosen rank per seed: {chosen}", file=sys.stderr)
        parts.append(f"seed_agreement={agree}/{args.seeds}")
    print(f"  {time.perf_counter() - t0:.0f} s in all", file=sys.stderr)
    print(" ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
