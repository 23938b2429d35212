"""Several networks in one joint factorization: which input patterns they share.

The models' layers are blocks of one coupled factorization on the same inputs (see
:mod:`factorlens.modelset`), so every component has a strength in every layer of every model.
A model *carries* a component when the component is present (above the block's noise floor,
:meth:`CMTFResult.presence`) in at least one of that model's layers. Each component is then
shared by all models, by some, unique to one, or carried by none (it lives in the input only).

Next to it, the field's pairwise baseline: linear CKA (Kornblith et al. 2019) between matched
layers of every pair of models, one number per pair of layers.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from factorlens.errors import FactorlensError
from factorlens.factorize.reduced import ReducedBlock
from factorlens.options import DEFAULT_SEED

if TYPE_CHECKING:
    from factorlens.factorize.result import CMTFResult
    from factorlens.store import ActivationStore

#: bytes of centred Gram matrices (float32, N×N each) held at once for CKA; beyond it the
#: CKA runs on a seeded subset of the inputs, and says so
CKA_MEMORY = 1024**3


def label_of(block: str, labels: Sequence[str]) -> str | None:
    """Return the label whose model holds ``block`` (``"clean.conv1"`` → ``"clean"``), or None."""
    head = block.split(".", 1)[0]
    return head if head in labels and "." in block else None


@dataclass
class Evidence:
    """One component in one model: its strongest layer there, its strength and that layer's floor.

    ``strength`` is the component's strength in ``block`` (‖component‖ / ‖block‖); ``floor``
    the block's noise floor (strengths at or below ``absent_below`` count as absent).
    """

    block: str
    strength: float
    floor: float
    present: bool


@dataclass
class Sharing:
    """Which models carry which component of a joint factorization.

    Attributes
    ----------
    labels : list of str
        The models, in the order they were given.
    carried : numpy.ndarray
        ``(R, M)`` bool: component r is present in some layer of model m.
    evidence : list of list of Evidence
        ``[r][m]``: the layer of model m where component r is strongest among those where it
        is present (among all of m's layers where it is present in none).
    """

    labels: list[str]
    carried: np.ndarray
    evidence: list[list[Evidence]]

    @property
    def kinds(self) -> list[str]:
        """Per component: ``"all"``, ``"some"``, ``"unique"`` or ``"none"`` (input only)."""
        out = []
        for row in self.carried:
            n = int(row.sum())
            out.append(
                "none"
                if n == 0
                else "all"
                if n == len(self.labels)
                else "unique"
                if n == 1
                else "some"
            )
        return out

    def carriers(self, r: int) -> list[str]:
        """Return the labels of the models that carry component ``r``."""
        return [lab for lab, c in zip(self.labels, self.carried[r], strict=True) if c]

    def describe(self, r: int) -> str:
        """Say in words who carries component ``r`` (``"unique to noisy"``)."""
        kind = self.kinds[r]
        if kind == "all":
            return "shared by all models"
        if kind == "none":
            return "in no model's layers (input only)"
        who = self.carriers(r)
        return f"unique to {who[0]}" if kind == "unique" else "shared by " + ", ".join(who)

    def counts(self) -> dict[str, int]:
        """How many components are shared by all, by some, unique to one, in none."""
        kinds = self.kinds
        return {k: kinds.count(k) for k in ("all", "some", "unique", "none")}

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able form: labels, per component its kind, carriers and evidence."""
        return {
            "labels": list(self.labels),
            "components": [
                {
                    "kind": self.kinds[r],
                    "carried_by": self.carriers(r),
                    "evidence": {
                        lab: {
                            "block": e.block,
                            "strength": e.strength,
                            "floor": e.floor,
                            "present": e.present,
                        }
                        for lab, e in zip(self.labels, self.evidence[r], strict=True)
                    },
                }
                for r in range(self.carried.shape[0])
            ],
        }


def labels_in(meta: Any) -> list[str]:
    """Return the model labels a comparison's metadata names (``meta["models"]``); [] for one model."""
    models = meta.get("models") if isinstance(meta, Mapping) else None
    return [str(k) for k in models] if isinstance(models, Mapping) and len(models) >= 2 else []


def model_labels(result: CMTFResult) -> list[str]:
    """Return the model labels of a joint result (``meta["models"]``); an error without them."""
    labels = labels_in(result.meta)
    if not labels:
        raise FactorlensError(
            "this result is not a comparison of models (its meta has no 'models'); make one "
            "with factorlens compare"
        )
    return labels


def component_sharing(result: CMTFResult, labels: Sequence[str] | None = None) -> Sharing:
    """Return which models carry each component of ``result`` and the evidence for it.

    Parameters
    ----------
    result : CMTFResult
        A joint factorization whose blocks are named ``label.layer`` (plus the input).
    labels : sequence of str, optional
        The model labels (default: the result's ``meta["models"]``).
    """
    labels = list(labels) if labels is not None else model_labels(result)
    names = list(result.block_names)
    owner = [label_of(n, labels) for n in names]
    missing = [lab for lab in labels if lab not in owner]
    if missing:
        raise FactorlensError(
            f"the result has no blocks of model(s) {missing}; its blocks are named "
            "'<label>.<layer>' by factorlens compare"
        )
    present = result.presence()
    flow = result.flow
    opts = result.options or {}
    floors = opts.get("noise_floor") or {}
    cut = opts.get("absent_below") or {}
    carried = np.zeros((result.rank, len(labels)), dtype=bool)
    evidence: list[list[Evidence]] = []
    for r in range(result.rank):
        row = []
        for m, lab in enumerate(labels):
            cols = [j for j, o in enumerate(owner) if o == lab]
            carried[r, m] = bool(present[r, cols].any())
            pool = [j for j in cols if present[r, j]] or cols
            j = pool[int(np.argmax([flow[r, j] for j in pool]))]
            row.append(
                Evidence(
                    block=names[j],
                    strength=float(flow[r, j]),
                    floor=float(floors.get(names[j], cut.get(names[j], 0.0))),
                    present=bool(present[r, j]),
                )
            )
        evidence.append(row)
    return Sharing(labels=labels, carried=carried, evidence=evidence)


# ------------------------------------------------------------------------------------ CKA


def matched_layers(a: Sequence[str], b: Sequence[str]) -> list[tuple[int, int]]:
    """Pair the layers of two models: by name where both have it, else by relative depth.

    ``a`` and ``b`` are layer names without the label. Models with the same layer names (two
    checkpoints of one architecture) pair name by name; otherwise each layer of the shorter
    list is paired with the layer at the same relative depth in the longer one.
    """
    if not a or not b:
        return []
    if set(a) & set(b):
        index = {name: j for j, name in enumerate(b)}
        return [(i, index[name]) for i, name in enumerate(a) if name in index]
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    pairs = []
    for i in range(len(short)):
        j = round(i * (len(long_) - 1) / (len(short) - 1)) if len(short) > 1 else len(long_) - 1
        pairs.append((i, j) if short is a else (j, i))
    return pairs


@dataclass
class Contrast:
    """Where one component's strength differs most between two models' matched layers.

    ``ratio`` ≥ 1 is the stronger model's strength over the weaker's in that pair of layers.
    """

    component: int
    stronger: str
    weaker: str
    layer: str
    other_layer: str
    ratio: float


def strength_contrasts(
    result: CMTFResult, a: str, b: str, min_ratio: float = 1.25
) -> list[Contrast]:
    """Return the components whose strength differs by ``min_ratio`` or more between a and b.

    Per component, the pair of matched layers (:func:`matched_layers`) where the ratio of
    its strengths is largest; strongest contrast first. Components absent (below the floor)
    from both layers of a pair are not compared there.
    """
    names = [str(n) for n in result.block_names]
    pairs = _matched_blocks(names, a, b)
    flow, present = result.flow, result.presence()
    out = []
    for r in range(result.rank):
        best: Contrast | None = None
        for x, y in pairs:
            jx, jy = names.index(x), names.index(y)
            if not (present[r, jx] or present[r, jy]):
                continue
            sx, sy = float(flow[r, jx]), float(flow[r, jy])
            hi, lo = max(sx, sy), min(sx, sy)
            ratio = hi / lo if lo > 0 else float("inf")
            if best is None or ratio > best.ratio:
                strong_a = sx >= sy
                best = Contrast(
                    component=r,
                    stronger=a if strong_a else b,
                    weaker=b if strong_a else a,
                    layer=(x if strong_a else y).split(".", 1)[1],
                    other_layer=(y if strong_a else x).split(".", 1)[1],
                    ratio=ratio,
                )
        if best is not None and best.ratio >= min_ratio:
            out.append(best)
    return sorted(out, key=lambda c: -c.ratio)


def _matched_blocks(names: Sequence[str], a: str, b: str) -> list[tuple[str, str]]:
    """Return the block names of models ``a`` and ``b`` paired by :func:`matched_layers`."""
    blocks = {lab: [n for n in names if label_of(n, [lab])] for lab in (a, b)}
    layers = {lab: [n.split(".", 1)[1] for n in blocks[lab]] for lab in (a, b)}
    return [(blocks[a][i], blocks[b][j]) for i, j in matched_layers(layers[a], layers[b])]


def _normalized_gram(data: Any, rows: np.ndarray | None, memory_budget: int) -> np.ndarray:
    """Return the centred Gram matrix of a block (over ``rows``), scaled to unit Frobenius norm.

    A sketched layer (:class:`~factorlens.factorize.reduced.ReducedBlock`) gives the Gram
    matrix of its kept coordinates, centred as ``H K H``: that of its captured share.
    """
    from factorlens.factorize.blocks import Block, RowSubset
    from factorlens.factorize.rowspace import gram

    if isinstance(data, ReducedBlock):
        coords = np.asarray(data.coords if rows is None else data.coords[rows], np.float64)
        G = coords @ coords.T
        G -= G.mean(axis=0)[None, :]
        G -= G.mean(axis=1)[:, None]
    else:
        source = data if rows is None else RowSubset(data, rows)
        G = gram(Block("cka", source, center=True, memory_budget=memory_budget), memory_budget)
    norm = float(np.linalg.norm(G))
    return (G / norm if norm > 0 else G).astype(np.float32)


def linear_cka(
    store: ActivationStore,
    labels: Sequence[str],
    *,
    memory_budget: int = CKA_MEMORY,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """Linear CKA between the matched layers of every pair of models in ``store``.

    ``CKA(X, Y) = ⟨K̃, L̃⟩ / (‖K̃‖ ‖L̃‖)`` with ``K̃``, ``L̃`` the centred Gram matrices
    (``N×N``) of the two layers' outputs on the same inputs (Kornblith et al. 2019); 1 for
    layers equal up to rotation and scale.

    Parameters
    ----------
    store : ActivationStore
        A store captured by :func:`factorlens.pipeline.compare` (blocks ``label.layer``).
    labels : sequence of str
        The model labels.
    memory_budget : int
        Bytes of Gram matrices held at once; when all of them would not fit, the CKA runs on
        a seeded random subset of the inputs (``n`` in the result says how many).
    seed : int
        Seed of that subset.

    Returns
    -------
    dict
        ``{"n": inputs used, "pairs": [{"a", "b", "layers": [[layer_a, layer_b, cka], …]}],
        "sketched": [blocks whose CKA is that of their sketched share]}``.
    """
    plans = [
        (a, b, _matched_blocks(store.names, a, b)) for a, b in itertools.combinations(labels, 2)
    ]
    needed = sorted({n for _, _, ps in plans for p in ps for n in p}, key=store.names.index)
    n = store.n_samples
    fit = int(np.sqrt(memory_budget / (4 * max(len(needed), 1))))
    rows = None
    if fit < n:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max(fit, 2), replace=False))
    grams, sketched = {}, []
    for name in needed:
        data = store.block(name)
        sketched += [name] if isinstance(data, ReducedBlock) else []
        grams[name] = _normalized_gram(data, rows, memory_budget)
    out = []
    for a, b, ps in plans:
        layers = [
            [x.split(".", 1)[1], y.split(".", 1)[1], float(np.vdot(grams[x], grams[y]))]
            for x, y in ps
        ]
        out.append({"a": a, "b": b, "layers": layers})
    return {"n": n if rows is None else int(rows.size), "pairs": out, "sketched": sketched}
