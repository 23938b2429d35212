"""Benchmark: the paper's claim — does the joint rank track how well a network was trained?

Saini & Papalexakis (2018) factorize the input tensor and the layer outputs of CNN checkpoints
jointly and report that poorer training gives a lower joint rank. For every checkpoint of the
given zoos (built by ``bench_quality.py --build``) this captures the input and the default
layers on the same ``--n`` test inputs, scans R = 1..``--max-rank`` with
``factorlens.estimate_rank`` (defaults) and reads the rank off the scan by every rule the
project has:

* ``rule`` — the scan's stated rule (worst-component split-half stability ≥ 0.8 and a falling
  bi-CV error), ``plausible_high`` — the top of its plausible range;
* ``stability`` — the largest R with stability ≥ 0.8 alone; ``bicv_min`` — the R of least
  bi-CV error;
* ``corcondia`` — AutoTen-style (Papalexakis 2016): the largest R whose CORCONDIA of the CP
  (input) part is ≥ 50.

It reports Spearman ρ between each rule's rank and test accuracy per zoo, over all distinct
checkpoints and over the ``steps`` kind alone after its first steps (accuracy ≥ 0.5). Last
line: ``best_rule=<name> worst_spearman=<its worst zoo ρ> <rule>=<worst ρ> …``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats
from threadpoolctl import threadpool_limits

import factorlens
from factorlens.research.models import torch_threads
from factorlens.research.zoo import load_zoo, zoo_model, zoo_test_data

CACHE = Path(__file__).resolve().parent / ".cache" / "zoos"
#: each zoo's result is also saved in its folder under this name, where bench_quality.py
#: reads the joint rank of every checkpoint (its RANK_CLAIM_JSON)
SAVED = "rank_claim.json"
DEFAULT_ZOOS = ("digits-digitscnn", "digits-bngap", "digits-resnet-s1")
RULES = ("rule", "plausible_high", "stability", "bicv_min", "corcondia")
CORCONDIA_MIN = 50.0
STABILITY_MIN = 0.8


def ranks_by_rule(scan: factorlens.RankScan) -> dict[str, int]:
    """The rank each rule reads off one scan."""
    c = scan.criteria
    passing = [r for r, v in zip(scan.ranks, c["stability"], strict=True) if v >= STABILITY_MIN]
    consistent = [r for r, v in zip(scan.ranks, c["corcondia"], strict=True) if v >= CORCONDIA_MIN]
    return {
        "rule": scan.chosen,
        "plausible_high": scan.plausible[1],
        "stability": max(passing, default=1),
        "bicv_min": int(scan.ranks[int(np.argmin(c["bicv"]))]),
        "corcondia": max(consistent, default=1),
    }


def _rho(acc: list[float], values: list[float]) -> float:
    if len(acc) < 3 or len(set(values)) < 2:
        return math.nan  # a constant rank orders nothing
    return float(stats.spearmanr(acc, values).statistic)


def run_zoo(zoo: Path, n: int, max_rank: int) -> dict:
    """Every distinct checkpoint of one zoo: accuracy, kind and the rank by each rule."""
    rows, seen = [], set()
    for entry in load_zoo(zoo):
        key = (entry["steps"], entry["label_noise"], entry["n_train"], entry.get("width"))
        if key in seen:  # one training run saved under two kinds (width 16 = the steps' end)
            continue
        seen.add(key)
        model = zoo_model(entry)
        data = zoo_test_data(entry).subset(n, random_state=0)
        t0 = time.perf_counter()
        with torch_threads(1):
            store = factorlens.capture(model, data, progress=False)
        scan = factorlens.estimate_rank(store, max_rank, random_state=0)
        row = {
            "checkpoint": entry["checkpoint"],
            "kind": entry["kind"],
            "accuracy": float(entry["test_accuracy"]),
            **ranks_by_rule(scan),
            "seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        print(
            f"  {zoo.name}/{row['checkpoint']:<26} acc={row['accuracy']:.3f} "
            + " ".join(f"{r}={row[r]}" for r in RULES)
            + f"  ({row['seconds']:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    acc = [r["accuracy"] for r in rows]
    late = [r for r in rows if r["kind"] == "steps" and r["accuracy"] >= 0.5]
    return {
        "zoo": zoo.name,
        "rows": rows,
        "spearman": {k: _rho(acc, [r[k] for r in rows]) for k in RULES},
        "spearman_late_steps": {
            k: _rho([r["accuracy"] for r in late], [r[k] for r in late]) for k in RULES
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoos", nargs="+", default=list(DEFAULT_ZOOS), help="zoo folder names")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--n", type=int, default=300, help="test inputs per checkpoint")
    parser.add_argument("--max-rank", type=int, default=6)
    parser.add_argument("--json", type=Path, help="write every row and correlation here")
    args = parser.parse_args(argv)
    results = []
    with threadpool_limits(limits=1):
        for name in args.zoos:
            res = run_zoo(args.cache / name, args.n, args.max_rank)
            res.update(n=args.n, max_rank=args.max_rank)
            (args.cache / name / SAVED).write_text(json.dumps(res, indent=1) + "\n")
            results.append(res)
    print(f"{'zoo':<20} " + " ".join(f"{k:>15}" for k in RULES))
    for res in results:
        cells = " ".join(f"{res['spearman'][k]:>15.3f}" for k in RULES)
        print(f"{res['zoo']:<20} {cells}")
        late = " ".join(f"{res['spearman_late_steps'][k]:>15.3f}" for k in RULES)
        print(f"{'  steps, acc>=0.5':<20} {late}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    worst = {k: min((r["spearman"][k] for r in results), key=lambda v: -1e9 if v != v else v)
             for k in RULES}  # fmt: skip
    best = max(RULES, key=lambda k: -2.0 if worst[k] != worst[k] else worst[k])
    print(
        f"best_rule={best} worst_spearman={worst[best]:.3f} "
        + " ".join(f"{k}={worst[k]:.3f}" for k in RULES)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
