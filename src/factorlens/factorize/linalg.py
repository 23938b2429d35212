"""Small linear algebra that the engine, the result and the rank criteria share.

Kept apart from :mod:`factorlens.factorize.engine` so that a result (and the criteria read
off it) does not import the fitting code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def khatri_rao(factors: Sequence[np.ndarray]) -> np.ndarray:
    """Row-major Khatri–Rao product of ``(I_k, R)`` factors: ``(∏ I_k, R)``.

    Rows are ordered like the block's ``shape[1:]`` flattened in C order.
    """
    out = factors[0]
    for f in factors[1:]:
        out = (out[:, None, :] * f[None, :, :]).reshape(-1, out.shape[1])
    return out


__all__ = ["khatri_rao"]
