"""factorlens: look inside a trained network through a joint factorization lens.

The data flow, one module per stage::

    load_data → capture → store → factorize (CMTF) → rank / quality → report

Quick use::

    import factorlens
    store = factorlens.capture(model, images, layers=["features.*", "classifier.1"])
    result = factorlens.cmtf(store, rank=10)          # or CMTF(10).fit(store).result_
    result.flow                                        # (R, n_blocks) component strengths
    factorlens.analyze(model, data, out="results")    # everything, with the HTML report
    factorlens.compare({"clean": m1, "noisy": m2}, data, out="cmp")  # models in one space
    result = factorlens.load("results")
    scan = factorlens.estimate_rank(store, max_rank=10)   # evidence per R, scan.chosen
    factorlens.score_model(model, data).score           # label-free training quality
    factorlens.assess_quality({"ep1": m1, "ep9": m9}, data, out="q")  # + analyses, report
"""

import sys
import types
from importlib import import_module
from typing import TYPE_CHECKING

from factorlens import views as _views

#: public name -> the module that defines it; imported on first use, so that ``import
#: factorlens`` (and the CLI's start, where Ctrl-C must be honoured) does not load torch
_EXPORTS = {
    "capture": "capture",
    "default_layers": "capture",
    "select_layers": "capture",
    "capture_sharded": "sharded",
    "assess_quality": "assess",
    "ImageData": "data",
    "load_data": "data",
    "FactorlensError": "errors",
    "CMTF": "factorize",
    "CMTFResult": "factorize",
    "cmtf": "factorize",
    "congruence": "factorize",
    "factor_match_score": "factorize",
    "analyze": "pipeline",
    "compare": "pipeline",
    "load": "pipeline",
    "component_sharing": "comparison",
    "QualityReport": "quality",
    "score_checkpoints": "quality",
    "score_model": "quality",
    "RankScan": "rank",
    "estimate_rank": "rank",
    "write_report": "report",
    "open_store": "store",
}

if TYPE_CHECKING:  # for type checkers and IDEs: the names as if imported eagerly
    from factorlens.assess import assess_quality
    from factorlens.capture import capture, default_layers, select_layers
    from factorlens.comparison import component_sharing
    from factorlens.data import ImageData, load_data
    from factorlens.errors import FactorlensError
    from factorlens.factorize import CMTF, CMTFResult, cmtf, congruence, factor_match_score
    from factorlens.pipeline import analyze, compare, load
    from factorlens.quality import QualityReport, score_checkpoints, score_model
    from factorlens.rank import RankScan, estimate_rank
    from factorlens.report import write_report
    from factorlens.sharded import capture_sharded
    from factorlens.store import open_store


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        value = getattr(import_module(f"factorlens.{_EXPORTS[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'factorlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


class _Package(types.ModuleType):
    """The package module, keeping ``factorlens.capture`` the function.

    Importing the submodule of the same name would otherwise rebind the attribute to the
    module.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

# a result's notebook view lives in report/, above the result: registered here, by name
_views.register_html(
    "factorlens.factorize.result.CMTFResult", "factorlens.report.summary", "summary_html"
)


__version__ = "0.1.0"

#: the public API, one function per job; everything else is reached through its module
#: (e.g. ``factorlens.store.ZarrStore``, ``factorlens.pipeline.analyze_store``)
__all__ = [
    "CMTF",
    "CMTFResult",
    "FactorlensError",
    "ImageData",
    "QualityReport",
    "RankScan",
    "__version__",
    "analyze",
    "assess_quality",
    "capture",
    "capture_sharded",
    "cmtf",
    "compare",
    "component_sharing",
    "congruence",
    "default_layers",
    "estimate_rank",
    "factor_match_score",
    "load",
    "load_data",
    "open_store",
    "score_checkpoints",
    "score_model",
    "select_layers",
    "write_report",
]
