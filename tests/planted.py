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


def _unit_columns(rng: np.random.Generator, *shape: int) -> np.ndarray:
    M = rng.standard_normal(shape)
    return M / np.linalg.norm(M, axis=0)


def acar_blocks(seed: int, noise: float) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The set-up of Acar et al. (2014): a 50×30×40 tensor and a 50×20 matrix coupled in the
    first mode, unit-norm Gaussian factors, ‖noise‖ = noise·‖block‖. Returns ``(blocks,
    A_true (50, 5), support (5, 2))``: components 0-2 shared, 3 only in the tensor, 4 only in
    the matrix."""
    rng = np.random.default_rng(seed)
    A = _unit_columns(rng, 50, 5)
    B, C = _unit_columns(rng, 30, 4), _unit_columns(rng, 40, 4)
    V = _unit_columns(rng, 20, 4)
    X = np.einsum("ir,jr,kr->ijk", A[:, :4], B, C)
    Y = A[:, [0, 1, 2, 4]] @ V.T
    support = np.array([[1, 1], [1, 1], [1, 1], [1, 0], [0, 1]], dtype=bool)
    blocks = {"tensor": add_noise(X, noise, rng), "matrix": add_noise(Y, noise, rng)}
    return blocks, A, support


def rank_blocks(
    N: int, R: int, noise: float, seed: int, hard: bool = False
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A CP input ``N×12×10`` and layers ``N×50``, ``N×30`` sharing ``A`` (every component in
    every block), for rank recovery. ``hard``: sample factors correlated (pairwise cosine
    about 0.5) and strengths decaying linearly from 1 to 1/3."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((N, R))
    if hard:
        A = A + rng.standard_normal((N, 1))  # a common part: correlated columns
    A /= np.linalg.norm(A, axis=0)
    strengths = np.linspace(1.0, 1.0 / 3.0, R) if hard else np.ones(R)
    B, C = _unit_columns(rng, 12, R), _unit_columns(rng, 10, R)
    blocks = {"input": add_noise(np.einsum("nr,hr,wr->nhw", A * strengths, B, C), noise, rng)}
    for name, width in (("layer1", 50), ("layer2", 30)):
        blocks[name] = add_noise((A * strengths) @ _unit_columns(rng, width, R).T, noise, rng)
    return {k: v.astype(np.float32) for k, v in blocks.items()}, A
