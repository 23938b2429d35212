"""Signs of a degenerate CMTF fit, read from its factors.

The relaxed-lasso refit (``l1_penalty="auto"``) refits the strengths the penalty kept without
it; two components that share their loadings, or that nearly cancel in a block (the two-factor
degeneracy), make such a refit diverge. :class:`~factorlens.factorize.CMTF` asks these before
and after a refit.
"""

from __future__ import annotations

import numpy as np

from factorlens.factorize.als import State
from factorlens.factorize.linalg import khatri_rao


def degenerate_pair(state: State, threshold: float = 0.9) -> bool:
    """Return whether two components that live in the same block share their loadings.

    Shared means sample loadings with |congruence| ≥ ``threshold`` (``A``'s columns are
    unit-norm during the fit).
    """
    cos = np.abs(state.A.T @ state.A) - np.eye(state.A.shape[1])
    for Fb in state.F:
        live = np.linalg.norm(Fb[0], axis=0) > 0
        if np.any(cos[np.ix_(live, live)] >= threshold):
            return True
    return False


def cancelling_pair(state: State, threshold: float = -0.8) -> bool:
    """Return whether two components that live in the same block nearly cancel there.

    Nearly cancel means: the product of their signed congruences over all modes (loadings
    times the block's non-shared factor, strengths positive) is at most ``threshold`` — the
    two-factor degeneracy.
    """
    from factorlens.factorize.compare import pair_congruences  # scipy: only after a refit

    for Fb in state.F:
        live = np.linalg.norm(Fb[0], axis=0) > 0
        triple = pair_congruences(state.A, khatri_rao(Fb))
        np.fill_diagonal(triple, 0.0)
        if np.any(triple[np.ix_(live, live)] <= threshold):
            return True
    return False
