"""Synthetic blocks generated from known factors, shared by the engine tests."""

from __future__ import annotations

import numpy as np


def add_noise(M: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """``M`` plus Gaussian noise with ‖noise‖ = level·‖M‖."""
    E = rng.standard_normal(M.shape)
    return M + level * np.linalg.norm(M) / np.linalg.norm(E) * E


def planted_blocks(
    N: int = 300,
    R: int = 3,
    *,
    nonneg: bool = False,
    noise: float = 0.05,
    seed: int = 0,
    missing: tuple[str, int] | None = ("layer2", 2),
    colour: bool = False,
):
    """Blocks ``input`` (CP, N×12×10 or N×3×12×10), ``layer1`` (N×50), ``layer2`` (N×30)
    sharing ``A``; component ``missing[1]`` is absent from block ``missing[0]``.

    Returns ``(blocks, truth)`` with ``truth[name]`` the list of non-shared factors and
    ``truth["A"]``.
    """
    rng = np.random.default_rng(seed)

    def draw(*shape: int) -> np.ndarray:
        return rng.random(shape) + 0.1 if nonneg else rng.standard_normal(shape)

    A = draw(N, R)
    modes = [draw(3, R)] if colour else []
    modes += [draw(12, R), draw(10, R)]
    sub = "nr," + ",".join(f"{c}r" for c in "chw"[-len(modes) :])
    X = np.einsum(sub + "->n" + "chw"[-len(modes) :], A, *modes)
    truth = {"A": A, "input": modes}
    blocks = {"input": add_noise(X, noise, rng).astype(np.float32)}
    for name, width in (("layer1", 50), ("layer2", 30)):
        V = draw(width, R)
        if missing and missing[0] == name:
            V[:, missing[1]] = 0.0
        truth[name] = [V]
        blocks[name] = add_noise(A @ V.T, noise, rng).astype(np.float32)
    return blocks, truth
