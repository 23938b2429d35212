"""Helpers for testing code that uses factorlens, in the spirit of ``numpy.testing``.

Synthetic blocks generated from known factors (:func:`planted_blocks`, :func:`acar_blocks`,
:func:`rank_blocks`; two models' layers with shared and unique components,
:func:`model_pair_blocks`), the same blocks written to a store on disk (:func:`zarr_store`) or
held in one (:func:`memory_store`), noise of a given relative size (:func:`add_noise`), unit-norm factor
matrices (:func:`unit_columns`, :func:`random_unit`) and a consistent
:class:`~factorlens.factorize.result.CMTFResult` with random factors (:func:`random_result`),
for code that reads results (reports, plots, trajectories) without fitting one.

Needs only numpy and :mod:`factorlens.factorize.result` (no torch; :func:`zarr_store` imports
zarr). Everything is
deterministic given the seed or generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import fields as dataclass_fields
from typing import Any

import numpy as np

from factorlens.factorize.result import CMTFResult

__all__ = [
    "acar_blocks",
    "add_noise",
    "memory_store",
    "model_pair_blocks",
    "planted_blocks",
    "random_result",
    "random_unit",
    "rank_blocks",
    "unit_columns",
    "zarr_store",
]


def zarr_store(path: Any, blocks: Mapping[str, np.ndarray], chunk_rows: int) -> Any:
    """Write ``blocks`` (the first is the input) to a new zarr store at ``path`` and reopen it.

    Returns the read-only :class:`~factorlens.store.ZarrStore`, whose blocks are read from
    disk chunk by chunk (``chunk_rows`` rows each).
    """
    from factorlens.store import ZarrStore, open_store

    store = ZarrStore.create(path, chunk_rows=chunk_rows)
    for i, (name, arr) in enumerate(blocks.items()):
        store.create_block(name, arr.shape[1:], "input" if i == 0 else "layer")
        store.append(name, arr)
    store.close()
    return open_store(path)


def unit_columns(m: np.ndarray) -> np.ndarray:
    """Scale each column of a matrix to unit Euclidean norm.

    Parameters
    ----------
    m : (I, R) array
        A matrix without zero columns.

    Returns
    -------
    (I, R) array
        ``m`` with every column divided by its norm.
    """
    return m / np.linalg.norm(m, axis=0)


def random_unit(rng: np.random.Generator, rows: int, r: int) -> np.ndarray:
    """Draw a Gaussian matrix with unit-norm columns.

    Parameters
    ----------
    rng : numpy.random.Generator
        The source of randomness (one ``standard_normal((rows, r))`` draw).
    rows : int
        Number of rows, I.
    r : int
        Number of columns, R.

    Returns
    -------
    (I, R) array
        Independent Gaussian columns scaled to unit norm.
    """
    return unit_columns(rng.standard_normal((rows, r)))


def add_noise(M: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise whose norm is a given fraction of the array's norm.

    Parameters
    ----------
    M : array of any shape
        The noiseless data.
    level : float
        ‖noise‖ / ‖M‖.
    rng : numpy.random.Generator
        The source of the noise.

    Returns
    -------
    array, shape of ``M``
        ``M + E`` with Gaussian ``E`` scaled so that ‖E‖ = level·‖M‖.
    """
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
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Make three float32 blocks that share a sample factor, one component left out of one.

    Parameters
    ----------
    N : int
        Number of samples (rows of every block).
    R : int
        Number of planted components.
    nonneg : bool
        Draw every factor uniform in [0.1, 1.1) instead of standard Gaussian.
    noise : float
        ‖noise‖ / ‖block‖ of each block.
    seed : int
        Seed of the generator.
    missing : (block name, component) or None
        Component ``missing[1]`` is absent from block ``missing[0]`` (its column of the
        block's factor is zero); None: every component is in every block.
    colour : bool
        Give the input a colour mode: N×3×12×10 instead of N×12×10.

    Returns
    -------
    blocks : dict of str to array
        ``input`` (CP, (N, 12, 10) or (N, 3, 12, 10)), ``layer1`` (N, 50), ``layer2`` (N, 30).
    truth : dict
        ``truth["A"]`` the (N, R) shared factor; ``truth["input"]`` the input's non-sample
        factors ((3, R) with ``colour``, then (12, R), (10, R)); ``truth["layer1"]``,
        ``truth["layer2"]`` a one-element list with the layer's (50, R) or (30, R) factor.
    """
    rng = np.random.default_rng(seed)

    def draw(*shape: int) -> np.ndarray:
        return rng.random(shape) + 0.1 if nonneg else rng.standard_normal(shape)

    A = draw(N, R)
    modes = [draw(3, R)] if colour else []
    modes += [draw(12, R), draw(10, R)]
    sub = "nr," + ",".join(f"{c}r" for c in "chw"[-len(modes) :])
    X = np.einsum(sub + "->n" + "chw"[-len(modes) :], A, *modes)
    truth: dict[str, Any] = {"A": A, "input": modes}
    blocks = {"input": add_noise(X, noise, rng).astype(np.float32)}
    for name, width in (("layer1", 50), ("layer2", 30)):
        V = draw(width, R)
        if missing and missing[0] == name:
            V[:, missing[1]] = 0.0
        truth[name] = [V]
        blocks[name] = add_noise(A @ V.T, noise, rng).astype(np.float32)
    return blocks, truth


def memory_store(
    blocks: Mapping[str, np.ndarray],
    meta: Mapping[str, Any] | None = None,
    labels: np.ndarray | None = None,
) -> Any:
    """Return a closed :class:`~factorlens.store.MemoryStore` holding ``blocks``.

    The first block is the input; ``meta`` and ``labels`` are set as a capture sets them.
    """
    from factorlens.store import MemoryStore

    store = MemoryStore()
    for i, (name, arr) in enumerate(blocks.items()):
        kind = "input" if i == 0 else "layer"
        store.create_block(name, arr.shape[1:], kind, kind, n_samples=arr.shape[0])
        store.append(name, np.asarray(arr, dtype=np.float32))
    if labels is not None:
        store.set_labels(labels)
    store.set_meta(dict(meta or {}))
    store.close()
    return store


def model_pair_blocks(
    seed: int,
    N: int = 300,
    shared: int = 3,
    unique: tuple[int, int] = (2, 2),
    layers: Sequence[int] = (60, 40, 20),
    noise: float = 0.1,
    labels: tuple[str, str] = ("a", "b"),
) -> tuple[dict[str, np.ndarray], list[list[str]]]:
    """Make an input and two models' layers that share some components and each hold others.

    Every component is in the input (``(N, 120)``); the first ``shared`` are in every layer
    of both models, the next ``unique[0]`` only in the first model's layers, the last
    ``unique[1]`` only in the second's. Each component's strength varies from layer to layer
    (a factor drawn from [0.5, 1.5]); every block has Gaussian noise of relative size
    ``noise``.

    Returns
    -------
    blocks : dict of str to array
        ``input``, then ``<label>.layer<k>`` (``(N, layers[k-1])``) model by model.
    carried_by : list of list of str
        Per planted component (the columns of the sample factor, in order), the labels of the
        models whose layers hold it.
    """
    rng = np.random.default_rng(seed)
    R = shared + sum(unique)
    A = random_unit(rng, N, R)
    blocks = {"input": add_noise(A @ rng.standard_normal((R, 120)), noise, rng)}
    owners = [list(labels)] * shared + [[labels[0]]] * unique[0] + [[labels[1]]] * unique[1]
    for label in labels:
        held = np.array([label in o for o in owners], dtype=float)
        for k, width in enumerate(layers, start=1):
            V = random_unit(rng, width, R) * held * rng.uniform(0.5, 1.5, R)
            blocks[f"{label}.layer{k}"] = add_noise(A @ V.T, noise, rng)
    return {k: v.astype(np.float32) for k, v in blocks.items()}, owners


def acar_blocks(seed: int, noise: float) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Make the coupled tensor and matrix of Acar et al. (2014).

    A 50×30×40 tensor and a 50×20 matrix coupled in the first mode, from unit-norm Gaussian
    factors: components 0-2 shared, 3 only in the tensor, 4 only in the matrix.

    Parameters
    ----------
    seed : int
        Seed of the generator.
    noise : float
        ‖noise‖ / ‖block‖ of each block.

    Returns
    -------
    blocks : dict of str to array
        ``tensor`` (50, 30, 40) and ``matrix`` (50, 20), float64.
    A_true : (50, 5) array
        The shared factor, unit-norm columns.
    support : (5, 2) bool array
        Whether component ``r`` is in the tensor (column 0) and in the matrix (column 1).
    """
    rng = np.random.default_rng(seed)
    A = random_unit(rng, 50, 5)
    B, C = random_unit(rng, 30, 4), random_unit(rng, 40, 4)
    V = random_unit(rng, 20, 4)
    X = np.einsum("ir,jr,kr->ijk", A[:, :4], B, C)
    Y = A[:, [0, 1, 2, 4]] @ V.T
    support = np.array([[1, 1], [1, 1], [1, 1], [1, 0], [0, 1]], dtype=bool)
    blocks = {"tensor": add_noise(X, noise, rng), "matrix": add_noise(Y, noise, rng)}
    return blocks, A, support


def rank_blocks(
    N: int, R: int, noise: float, seed: int, hard: bool = False
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Make three float32 blocks that share every one of R components, for rank recovery.

    Parameters
    ----------
    N : int
        Number of samples.
    R : int
        Number of planted components.
    noise : float
        ‖noise‖ / ‖block‖ of each block.
    seed : int
        Seed of the generator.
    hard : bool
        Draw the sample factors correlated (pairwise cosine about 0.5) and the component
        strengths decaying linearly from 1 to 1/3; otherwise independent, all of strength 1.

    Returns
    -------
    blocks : dict of str to array
        ``input`` (CP, (N, 12, 10)), ``layer1`` (N, 50), ``layer2`` (N, 30).
    A : (N, R) array
        The shared factor, unit-norm columns (before the strengths).
    """
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((N, R))
    if hard:
        A = A + rng.standard_normal((N, 1))  # a common part: correlated columns
    A /= np.linalg.norm(A, axis=0)
    strengths = np.linspace(1.0, 1.0 / 3.0, R) if hard else np.ones(R)
    B, C = random_unit(rng, 12, R), random_unit(rng, 10, R)
    blocks = {"input": add_noise(np.einsum("nr,hr,wr->nhw", A * strengths, B, C), noise, rng)}
    for name, width in (("layer1", 50), ("layer2", 30)):
        blocks[name] = add_noise((A * strengths) @ random_unit(rng, width, R).T, noise, rng)
    return {k: v.astype(np.float32) for k, v in blocks.items()}, A


#: CMTFResult fields random_result fills itself (the rest may come through ``**fields``)
_OWN_FIELDS = ("A", "block_names", "block_shapes", "block_models", "meta")


def random_result(
    block_names: Sequence[str],
    block_shapes: Sequence[tuple[int, ...]],
    rank: int,
    *,
    seed: int = 0,
    models: Mapping[str, str] | Sequence[str] | None = None,
    A: np.ndarray | None = None,
    meta: Mapping[str, Any] | None = None,
    **fields: Any,
) -> CMTFResult:
    """Build a consistent CMTFResult with random unit-norm factors, without fitting one.

    The factors, weights and ``A`` are drawn in that order from one generator whatever is
    given, so passing one of them leaves the others unchanged.

    Parameters
    ----------
    block_names : sequence of str, length B
        The blocks, input first.
    block_shapes : sequence of tuple of int, length B
        Full shapes ``(N, ...)``, the same N for every block.
    rank : int
        Number of components, R.
    seed : int
        Seed of the generator.
    models : mapping of block name to "cp" or "matrix", or sequence of length B, optional
        A cp block gets one (I_k, R) factor per non-sample axis of its shape; every other
        block (default: all) is a matrix block with one (prod(shape[1:]), R) factor.
    A : (N, R) array, optional
        The shared sample factor, used as given (default: random unit-norm columns).
    meta : mapping, optional
        The result's free-form description (copied; default empty).
    **fields
        Other :class:`CMTFResult` fields, used as given instead of the defaults:
        ``weights`` (default per block (R,) uniform in [0.05, 0.9), sorted decreasing),
        ``block_fit`` (default 0.8 per block), ``loss_history`` (default ``[1.0, 0.5]``),
        ``options`` (default empty), ``means``, ``factors``.

    Returns
    -------
    CMTFResult
        ``A`` (N, R); per block its factors, (R,) weights and fit.

    Raises
    ------
    ValueError
        When the names, shapes, models, ``A`` or rank do not fit together.
    TypeError
        For a keyword that is not a CMTFResult field.
    """
    names, shapes = list(block_names), [tuple(int(d) for d in s) for s in block_shapes]
    if len(names) != len(shapes) or not names:
        raise ValueError(f"need one shape per block: {len(names)} names, {len(shapes)} shapes")
    if len(set(names)) < len(names):
        raise ValueError(f"block names must be distinct, got {names}")
    if any(len(s) < 2 for s in shapes) or len({s[0] for s in shapes}) != 1:
        raise ValueError(f"block shapes must be (N, ...) with one N, got {shapes}")
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    kinds = _block_models(names, models)
    allowed = {f.name for f in dataclass_fields(CMTFResult)} - set(_OWN_FIELDS)
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise TypeError(f"not CMTFResult fields random_result takes: {', '.join(unknown)}")
    n, r = shapes[0][0], int(rank)
    rng = np.random.default_rng(seed)
    factors = {}
    for name, shape, kind in zip(names, shapes, kinds, strict=True):
        modes = shape[1:] if kind == "cp" else (math.prod(shape[1:]),)
        factors[name] = [random_unit(rng, m, r) for m in modes]
    weights = {name: np.sort(rng.uniform(0.05, 0.9, r))[::-1].copy() for name in names}
    drawn = random_unit(rng, n, r)
    if A is not None and np.shape(A) != (n, r):
        raise ValueError(f"A must have shape ({n}, {r}), got {np.shape(A)}")
    values: dict[str, Any] = {
        "factors": factors,
        "weights": weights,
        "block_fit": dict.fromkeys(names, 0.8),
        "loss_history": [1.0, 0.5],
        **fields,
    }
    return CMTFResult(
        A=drawn if A is None else A,
        block_names=names,
        block_shapes=shapes,
        block_models=kinds,
        meta=dict(meta or {}),
        **values,
    )


def _block_models(names: list[str], models: Mapping[str, str] | Sequence[str] | None) -> list[str]:
    if models is None:
        kinds = ["matrix"] * len(names)
    elif isinstance(models, Mapping):
        stray = sorted(set(models) - set(names))
        if stray:
            raise ValueError(f"models names blocks that do not exist: {', '.join(stray)}")
        kinds = [models.get(name, "matrix") for name in names]
    else:
        kinds = list(models)
        if len(kinds) != len(names):
            raise ValueError(f"need one model per block: {len(names)} names, {len(kinds)} models")
    bad = sorted({k for k in kinds if k not in ("cp", "matrix")})
    if bad:
        raise ValueError(f"a block model is 'cp' or 'matrix', got {', '.join(map(repr, bad))}")
    return kinds
