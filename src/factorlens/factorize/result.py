"""The result of a joint factorization: factors, per-block component weights, fit, history.

Saved as two files in a directory: ``result.json`` (small, human-readable summary: rank,
blocks with shapes and fit, the flow map, options, loss history) and ``factors.npz``
(the factor matrices).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from factorlens.errors import FactorlensError, FactorlensRuntimeError, one_line
from factorlens.factorize.linalg import khatri_rao
from factorlens.output import atomic_write_text, json_safe, save_npz
from factorlens.views import html_view

RESULT_JSON = "result.json"
FACTORS_NPZ = "factors.npz"
FORMAT_VERSION = 1


#: the most blocks ``repr(result)`` lists one per line (the rest are counted)
REPR_BLOCKS = 10


@dataclass(repr=False)  # the generated repr printed every array: tens of thousands of characters
class CMTFResult:
    """A fitted coupled matrix–tensor factorization.

    Attributes
    ----------
    A : numpy.ndarray
        ``(N, R)`` shared sample factor, unit-norm columns.
    block_names : list of str
        Names, input first then layers in network order.
    block_shapes : list of tuple of int
        Full shapes including N.
    block_models : list of str
        ``"cp"`` or ``"matrix"`` per block.
    factors : dict of str to list of numpy.ndarray
        Per block, the non-shared factors with unit-norm columns (cp: one ``(I_k, R)``
        matrix per non-sample mode; matrix: one ``(P, R)`` matrix, ``P = prod(shape[1:])``).
    weights : dict of str to numpy.ndarray
        Per block, ``(R,)`` strength of each component = ‖component in block‖ / ‖block‖
        (both after the block's centring), so values are comparable across blocks.
    block_fit : dict of str to float
        Per block, 1 − ‖Y − model‖² / ‖Y‖² clipped to [0, 1]. (``fit``, its old name,
        still reads it with a ``DeprecationWarning``: it read like ``CMTF.fit()``.)
    loss_history : list of float
        The objective after every ALS iteration of the kept run. It holds one objective per
        stage: ``options["loss_stages"]`` lists ``[stage, first index]`` (``"fit"``, then
        ``"refine"`` of the best start and ``"refit"``, the strengths refitted without the
        penalty: another objective, so the history drops there).
    options : dict of str to Any
        The settings the engine ran with (for provenance).
    meta : dict of str to Any
        Free-form description (model, data, layers) filled in by the pipeline.
    means : dict of str to numpy.ndarray
        Per centred block, the per-feature means subtracted before the fit (shape
        ``block_shape[1:]``); empty without centring.
    """

    A: np.ndarray
    block_names: list[str]
    block_shapes: list[tuple[int, ...]]
    block_models: list[str]
    factors: dict[str, list[np.ndarray]]
    weights: dict[str, np.ndarray]
    block_fit: dict[str, float]
    loss_history: list[float] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    means: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        """The number of components R (the columns of ``A``)."""
        return int(self.A.shape[1])

    @property
    def n_samples(self) -> int:
        """The number of samples N (the rows of ``A``)."""
        return int(self.A.shape[0])

    @property
    def flow(self) -> np.ndarray:
        """(R, n_blocks) strength of each component in each block, input first."""
        return np.stack([self.weights[name] for name in self.block_names], axis=1)

    @property
    def loss(self) -> float:
        """The final objective, the last of ``loss_history`` (``nan`` when it is empty)."""
        return float(self.loss_history[-1]) if self.loss_history else math.nan

    def presence(self) -> np.ndarray:
        """Return which component is present in which block, ``(R, n_blocks)`` bool.

        Component ``r`` is present in a block when its strength exceeds the block's
        ``absent_below`` threshold: the block's noise floor where the strengths were refitted
        without the penalty (``l1="auto"``), 0 where they are the penalized ones (a fixed
        ``l1``, or a refit that was skipped or undone: the penalty already set every strength
        below the floor to zero); results without one: > 0.
        """
        floor = (self.options or {}).get("absent_below") or {}
        cut = np.array([float(floor.get(n, 0.0)) for n in self.block_names])
        return self.flow > cut[None, :]

    def spare_components(self, split_congruence: float = 0.8) -> list[str]:
        """Return the signs that the model has more components than the data hold.

        One line for each of these signs found:

        * a component with zero strength in every block (the penalty switched it off: the
          data need fewer than R components);
        * two components whose sample loadings agree (``|congruence|`` ≥ ``split_congruence``)
          and which live in disjoint blocks: one shared component split in two, each half
          fitting the noise of its own blocks (the flow map would show two unshared
          patterns where the data hold one shared pattern);
        * two components that duplicate or cancel each other in a block (a degenerate
          pair);
        * the R-th component buys no block more fit than one component of noise would:
          against a fit with R − 1 components (``options["gain_over_fewer"]``, written by
          ``CMTF(check_fewer=True)``), every block gains at most its noise floor².

        Parameters
        ----------
        split_congruence : float
            Sample loadings with ``|congruence|`` at least this agree (for a split component).

        Returns
        -------
        list of str
            One note per sign found; empty when there is none.
        """
        present = self.presence()  # (R, n_blocks)
        options = self.options or {}
        constant = list(options.get("degenerate_blocks") or [])
        notes = []
        if constant:
            centred = " after centring" if options.get("center") else ""
            notes.append(
                f"{', '.join(constant[:5])}{', …' if len(constant) > 5 else ''} "
                f"{'is' if len(constant) == 1 else 'are'} constant across the inputs{centred} "
                "(e.g. all zeros): no component can be in "
                f"{'it' if len(constant) == 1 else 'them'}"
            )
        penalty = options.get("l1_penalty")
        if not present.any() and isinstance(penalty, int | float) and penalty > 0:
            return [
                *notes,
                f"the penalty (`l1_penalty` = {penalty:g}) set every component's strength to "
                "zero in every block: use a smaller one, or 'auto'",
            ]
        held = "no component" if self.rank == 1 else f"fewer than {self.rank} components"
        notes += [
            f"C{r + 1} has no strength in any block (the data hold {held})"
            for r in np.flatnonzero(~present.any(axis=1))
        ]
        from factorlens.factorize.compare import congruence

        cos = np.abs(congruence(self.A, self.A))
        for r in range(self.rank):
            for q in range(r + 1, self.rank):
                live = present[r].any() and present[q].any()
                if not live or cos[r, q] < split_congruence:
                    continue
                if not np.any(present[r] & present[q]):
                    notes.append(
                        f"C{r + 1} and C{q + 1} have the same loadings (congruence "
                        f"{cos[r, q]:.2f}) in disjoint blocks: probably one shared component "
                        "split in two; try one component fewer"
                    )
        for r, q, name, value in self._degenerate_pairs(present):
            how = "duplicate" if value > 0 else "cancel"
            notes.append(
                f"C{r + 1} and C{q + 1} {how} each other in {name} (congruence over all "
                f"modes {value:+.2f}): a degenerate pair, two components doing the work of "
                "one; try one component fewer"
            )
        unneeded = self._unneeded_component()
        if unneeded:
            notes.append(unneeded)
        return notes

    def _unneeded_component(self) -> str | None:
        """Return the note for an unneeded R-th component, or ``None``.

        The R-th component is unneeded when no block gains more from it than its noise floor².
        """
        gains = (self.options or {}).get("gain_over_fewer") or {}
        floors = (self.options or {}).get("noise_floor") or {}
        names = [n for n in self.block_names if n in gains and n in floors]
        if not names or not any(float(floors[n]) > 0 for n in names):
            return None
        with np.errstate(over="ignore"):  # a huge penalty's floor² is inf, not an error
            floor2 = {n: float(np.square(np.float64(floors[n]))) for n in names}
        if any(float(gains[n]) > floor2[n] for n in names):
            return None
        worst = max(names, key=lambda n: float(gains[n]) / max(floor2[n], 1e-300))
        return (
            f"with {self.rank} components no block fits better than with {self.rank - 1} by "
            f"more than one component of noise would (largest gain: {worst}, "
            f"{100 * float(gains[worst]):.2f}% of the block against a floor of "
            f"{100 * floor2[worst]:.2f}%): the data hold at most {self.rank - 1} "
            f"component{'s' if self.rank - 1 != 1 else ''}"
        )

    def _degenerate_pairs(
        self, present: np.ndarray, threshold: float = 0.8
    ) -> list[tuple[int, int, str, float]]:
        """Return the pairs of components that duplicate or cancel each other in a block.

        Each ``(r, q, block name, value)`` is a pair present in the same block whose signed
        congruences over all modes (sample loadings times the block's non-shared factor)
        multiply to ``value``, at least ``threshold`` in absolute value: the same rank-one
        term twice (sharing one component's strength), or the two-factor degeneracy of CP
        models (Kruskal et al. 1989), whose strengths grow without bound in opposite
        directions.
        """
        from factorlens.factorize.compare import pair_congruences

        out = []
        for b, name in enumerate(self.block_names):
            triple = pair_congruences(self.A, khatri_rao(self.factors[name]))
            for r in range(self.rank):
                for q in range(r + 1, self.rank):
                    both = present[r, b] and present[q, b]
                    if both and abs(triple[r, q]) >= threshold:
                        out.append((r, q, name, float(triple[r, q])))
        return out

    def _index(self, name: str) -> int:
        if name not in self.block_names:
            raise FactorlensError(
                f"no block named {name!r}; blocks are: {', '.join(self.block_names)}"
            )
        return self.block_names.index(name)

    def component_map(self, name: str, r: int) -> np.ndarray:
        """Component ``r`` in block ``name`` as an array of shape ``block_shape[1:]``.

        For a cp block the outer product of its factor columns, for a matrix block the column
        ``V[:, r]`` reshaped; both unit norm, signed as fitted.
        """
        i = self._index(name)
        shape = self.block_shapes[i][1:]
        facs = self.factors[name]
        if self.block_models[i] == "cp":
            out = facs[0][:, r]
            for f in facs[1:]:
                out = np.multiply.outer(out, f[:, r])
            return out.reshape(shape)
        return facs[0][:, r].reshape(shape)

    def to_cptensor(self, name: str | None = None):
        """Return block ``name`` (default: the first, the input) as a TensorLy ``CPTensor``.

        The weights are the component strengths times the block norm, so ``cp_to_tensor`` gives
        the model of the (centred) block in the units of the data.
        """
        import tensorly as tl
        from tensorly.cp_tensor import CPTensor

        name = name or self.block_names[0]
        i = self._index(name)
        if self.block_models[i] != "cp":
            raise FactorlensError(
                f"block {name!r} was fitted as a matrix, not a CP tensor; "
                f"fit it with tensor_blocks including {name!r}"
            )
        norm = float(self.options.get("block_norms", {}).get(name, 1.0))
        w = tl.tensor(self.weights[name] * norm)
        return CPTensor((w, [tl.tensor(self.A)] + [tl.tensor(f) for f in self.factors[name]]))

    def captured_energy(self) -> dict[str, float]:
        """Return, per sketched layer, the share of its energy the fit saw (0..1; ``{}``: none)."""
        sketch = self.meta.get("sketch") if isinstance(self.meta, dict) else None
        raw = sketch.get("captured_energy") if isinstance(sketch, dict) else None
        return {str(k): float(v) for k, v in (raw or {}).items() if isinstance(v, int | float)}

    @property
    def fit(self) -> dict[str, float]:
        """Deprecated name of :attr:`block_fit` (it read like the estimator's ``fit()``)."""
        warnings.warn(
            "CMTFResult.fit is renamed CMTFResult.block_fit; the old name will be removed",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.block_fit

    def __repr__(self) -> str:
        """Return a few lines (as TensorLy's ``CPTensor`` shows shapes): rank, loss, blocks, fits."""
        return self._text(REPR_BLOCKS)

    def summary(self) -> str:
        """Return the result as text: rank, loss, and one line per block (every block).

        The data form (what ``result.json`` holds) is :meth:`to_dict`; until version 0.1 this
        method returned that dict.
        """
        return self._text(None)

    def _text(self, max_blocks: int | None) -> str:
        state = "converged" if self.options.get("converged") else "not converged"
        head = (
            f"CMTFResult(rank={self.rank}, n_samples={self.n_samples}, "
            f"blocks={len(self.block_names)}, loss={self.loss:.4g}, {state})"
        )
        rows = list(zip(self.block_names, self.block_shapes, self.block_models, strict=True))
        shown = rows
        if max_blocks is not None and len(rows) > max_blocks:  # the ends, the middle counted
            shown = rows[: max_blocks // 2] + rows[len(rows) - max_blocks // 2 + 1 :]
        width = max(len(name) for name, _, _ in shown)
        lines = [head]
        for i, (name, shape, model) in enumerate(shown):
            if len(shown) < len(rows) and i == (max_blocks or 0) // 2:
                lines.append(f"  … {len(rows) - len(shown)} more blocks")
            w = self.weights[name]
            top = int(np.argmax(w)) if w.size else 0
            dims = "×".join(str(d) for d in shape)
            lines.append(
                f"  {name:<{width}}  {dims:<16} {model:<6} fit {self.block_fit[name]:.3f}  "
                f"strongest C{top + 1}"
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str | None:
        """Jupyter's view: a compact HTML summary (header, blocks, the flow map).

        Rendered by :func:`factorlens.report.summary.summary_html`, which the package
        registers in :mod:`factorlens.views` (the report imports this module, not the
        reverse); None (the plain repr) without a registered view.
        """
        return html_view(self)

    # ---------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able summary written to ``result.json``."""
        return {
            "format": "factorlens-result",
            "format_version": FORMAT_VERSION,
            "rank": self.rank,
            "n_samples": self.n_samples,
            "blocks": [
                {
                    "name": n,
                    "shape": list(s),
                    "model": m,
                    "fit": float(self.block_fit[n]),
                }
                for n, s, m in zip(
                    self.block_names, self.block_shapes, self.block_models, strict=True
                )
            ],
            "flow": self.flow.tolist(),
            "loss": self.loss,
            "loss_history": [float(v) for v in self.loss_history],
            "options": json_safe(self.options, "options"),
            "meta": json_safe(self.meta, "meta"),
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``result.json`` and ``factors.npz`` into ``directory`` (created if needed)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"A": self.A}
        for name in self.block_names:
            i = self.block_names.index(name)
            for k, f in enumerate(self.factors[name]):
                arrays[f"factor/{i}/{k}"] = f
            arrays[f"weights/{i}"] = self.weights[name]
            if name in self.means:
                arrays[f"mean/{i}"] = self.means[name]
        tmp = d / (FACTORS_NPZ + ".tmp.npz")
        save_npz(tmp, arrays)  # as np.load in load() reads it
        tmp.replace(d / FACTORS_NPZ)
        atomic_write_text(d / RESULT_JSON, json.dumps(self.to_dict(), indent=1))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> CMTFResult:
        """Read a result written by :meth:`save`.

        Parameters
        ----------
        directory : str or pathlib.Path
            The folder holding ``result.json`` and ``factors.npz``.

        Returns
        -------
        CMTFResult
            The result as it was saved.

        Raises
        ------
        FactorlensError
            A one-line error when the result is foreign; when it is damaged, a
            :class:`~factorlens.errors.FactorlensRuntimeError` (a subclass).
        """
        if not isinstance(directory, str | os.PathLike):
            raise FactorlensError(
                f"`directory` must be a result folder's path, got {type(directory).__name__}"
            )
        d = Path(directory)
        jpath, npath = d / RESULT_JSON, d / FACTORS_NPZ
        if not jpath.is_file() or not npath.is_file():
            raise FactorlensError(
                f"{d} holds no factorlens result (need {RESULT_JSON} and {FACTORS_NPZ}); "
                "run `factorlens analyze` or `factorlens demo` first"
            )
        try:
            summary = json.loads(jpath.read_text())
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            raise FactorlensRuntimeError(
                f"{jpath} is not valid JSON ({one_line(exc)}); {_REWRITE}"
            ) from exc
        validate_summary(summary, str(jpath))
        try:
            with np.load(npath) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except Exception as exc:  # BadZipFile, zlib.error, EOFError, ValueError, ...
            raise FactorlensRuntimeError(
                f"{FACTORS_NPZ} in {d} is damaged ({type(exc).__name__}: {one_line(exc)}); "
                f"{_REWRITE}"
            ) from exc
        blocks = summary["blocks"]
        expected = _array_shapes(summary, arrays)
        for key, shape in expected.items():
            found = arrays.get(key)
            if found is None or found.shape != shape or found.dtype.kind != "f":
                got = "missing" if found is None else f"{found.dtype} {found.shape}"
                raise FactorlensRuntimeError(
                    f"{FACTORS_NPZ} in {d} does not match {RESULT_JSON}: {key!r} is {got}, "
                    f"expected float {shape}; {_REWRITE}"
                )
            bad = _out_of_range(key, found)
            if bad:
                raise FactorlensRuntimeError(f"{FACTORS_NPZ} in {d} is damaged: {bad}; {_REWRITE}")
        names = [b["name"] for b in blocks]
        return cls(
            A=arrays["A"],
            block_names=names,
            block_shapes=[tuple(b["shape"]) for b in blocks],
            block_models=[b["model"] for b in blocks],
            factors={
                n: [arrays[k] for k in expected if k.startswith(f"factor/{i}/")]
                for i, n in enumerate(names)
            },
            weights={n: arrays[f"weights/{i}"] for i, n in enumerate(names)},
            block_fit={b["name"]: float(b["fit"]) for b in blocks},
            loss_history=[float(v) for v in summary["loss_history"]],
            options=summary["options"],
            meta=summary["meta"],
            means={n: arrays[f"mean/{i}"] for i, n in enumerate(names) if f"mean/{i}" in arrays},
        )


_REWRITE = "rerun `factorlens analyze` to write the result again"


def _out_of_range(key: str, array: np.ndarray) -> str:
    """Say what is impossible in a saved array (non-finite values, negative strengths)."""
    if not np.all(np.isfinite(array)):
        return f"{key!r} holds {int(np.size(array) - np.isfinite(array).sum())} NaN or Inf values"
    if key.startswith("weights/") and np.any(array < 0):
        return f"{key!r} holds negative strengths"
    return ""


def _is_fit(value: Any) -> bool:
    """Tell whether ``value`` is a block's fit: 1 − loss / ‖X‖², at most 1 (above -1 in practice)."""
    return _is_number(value) and -1.0 <= float(value) <= 1.0 + 1e-6


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number_map(value: Any) -> bool:
    return isinstance(value, dict) and all(map(_is_number, value.values()))


#: what result.json must hold: field -> (test, what the test wants)
_SUMMARY_FIELDS: dict[str, tuple[Any, str]] = {
    "rank": (_is_count, "an integer >= 1"),
    "n_samples": (_is_count, "an integer >= 1"),
    "blocks": (lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list"),
    "loss_history": (
        lambda v: isinstance(v, list) and all(map(_is_number, v)),
        "a list of numbers",
    ),
    "options": (lambda v: isinstance(v, dict), "an object"),
    "meta": (lambda v: isinstance(v, dict), "an object"),
}
_BLOCK_FIELDS: dict[str, tuple[Any, str]] = {
    "name": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "shape": (
        lambda v: isinstance(v, list) and len(v) >= 2 and all(map(_is_count, v)),
        "[N, …] of positive integers",
    ),
    "model": (lambda v: v in ("cp", "matrix"), "'cp' or 'matrix'"),
    "fit": (_is_fit, "a number in [-1, 1]"),
}
#: the JSON names of the types json.loads gives (dict aside)
_JSON_TYPES = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}
#: options holding one number per block (the presence rule, the CP weights and the spare
#: component check read them)
_PER_BLOCK_OPTIONS = (
    "absent_below",
    "noise_floor",
    "block_norms",
    "block_scales",
    "gain_over_fewer",
)


def validate_summary(doc: Any, where: str) -> None:
    """Refuse a ``result.json`` document that :meth:`CMTFResult.load` cannot use.

    Parameters
    ----------
    doc : Any
        The parsed document.
    where : str
        Names the document in the error message.

    Raises
    ------
    FactorlensError
        When ``doc`` is not a factorlens result, is of a newer format, or has a field missing
        or of the wrong type.
    """
    if not isinstance(doc, dict) or doc.get("format") != "factorlens-result":
        what = (
            'no "format": "factorlens-result"'
            if isinstance(doc, dict)
            else f"a JSON {_JSON_TYPES.get(type(doc), 'value')}, not an object"
        )
        raise FactorlensError(
            f"{where} is not a factorlens result file ({what}); give a result folder written "
            "by `factorlens analyze`"
        )
    version = doc.get("format_version")
    if not _is_count(version):
        raise FactorlensRuntimeError(
            f"{where} has no valid format_version (got {_brief(version)}); {_REWRITE}"
        )
    if version > FORMAT_VERSION:
        raise FactorlensError(
            f"{where} was written by a newer factorlens (format_version {version}, this one "
            f"reads {FORMAT_VERSION}); upgrade factorlens to read it"
        )
    problem = next(_problems(doc), None)
    if problem is not None:
        raise FactorlensRuntimeError(f"{where} is damaged ({problem}); {_REWRITE}")


def _problems(doc: dict[str, Any]) -> Iterator[str]:
    """Yield what is wrong with a result.json document.

    Only the first is meaningful: each check relies on the ones before it having passed.
    """
    yield from _field_problems(doc, _SUMMARY_FIELDS, "")
    for i, block in enumerate(doc["blocks"]):
        yield from _field_problems(block, _BLOCK_FIELDS, f"blocks[{i}].")
    names = [b["name"] for b in doc["blocks"]]
    if len(set(names)) < len(names):
        yield "two blocks share a name"
    for b in doc["blocks"]:
        if b["shape"][0] != doc["n_samples"]:
            yield f"block {b['name']} has {b['shape'][0]} rows but n_samples is {doc['n_samples']}"
    for key in _PER_BLOCK_OPTIONS:
        if key in doc["options"] and not _number_map(doc["options"][key]):
            yield f"options.{key} should map block names to numbers"
    if "comparison" in doc["meta"]:
        yield from _comparison_problems(doc["meta"]["comparison"])


def _comparison_problems(comparison: Any) -> Iterator[str]:
    """Yield what is wrong with ``meta.comparison`` (compare's CKA tables, which the report reads)."""
    if not isinstance(comparison, dict):
        yield f"meta.comparison should be an object, got {_brief(comparison)}"
        return
    cka = comparison.get("cka", {})
    pairs = cka.get("pairs", []) if isinstance(cka, dict) else None
    if not isinstance(pairs, list):
        yield f"meta.comparison.cka should be an object with a list of pairs, got {_brief(cka)}"
        return
    for i, pair in enumerate(pairs):
        at = f"meta.comparison.cka.pairs[{i}]"
        if not isinstance(pair, dict):
            yield f"{at} should be an object, got {_brief(pair)}"
        elif not isinstance(pair.get("layers", []), list) or not all(
            isinstance(row, list)
            and len(row) == 3
            and isinstance(row[2], int | float)
            and not isinstance(row[2], bool)
            for row in pair.get("layers", [])
        ):
            yield f"{at}.layers should be a list of [layer, layer, number]"


def _field_problems(obj: Any, fields: dict[str, tuple[Any, str]], at: str) -> Iterator[str]:
    if not isinstance(obj, dict):
        yield f"{at.rstrip('.')} should be an object, got {_brief(obj)}"
        return
    for key, (test, want) in fields.items():
        if key not in obj:
            yield f"{at}{key} is missing"
        elif not test(obj[key]):
            yield f"{at}{key} should be {want}, got {_brief(obj[key])}"


def _brief(value: Any) -> str:
    return json.dumps(value, default=repr)[:40]


def _array_shapes(summary: dict[str, Any], arrays: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Return the arrays factors.npz must hold for a valid ``summary``, with their shapes.

    A block's mean is included only where ``arrays`` has one: only centred blocks have it.
    """
    n, r = summary["n_samples"], summary["rank"]
    shapes: dict[str, tuple[int, ...]] = {"A": (n, r)}
    for i, block in enumerate(summary["blocks"]):
        dims = block["shape"][1:]
        modes = dims if block["model"] == "cp" else [math.prod(dims)]
        shapes |= {f"factor/{i}/{k}": (m, r) for k, m in enumerate(modes)}
        shapes[f"weights/{i}"] = (r,)
        if f"mean/{i}" in arrays:
            shapes[f"mean/{i}"] = tuple(dims)
    return shapes
