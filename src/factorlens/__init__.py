"""factorlens: look inside a trained network through a joint factorization lens.

The data flow, one module per stage::

    load_data → capture → store → factorize (CMTF) → rank / quality → report

Quick use::

    import factorlens
    store = factorlens.capture(model, images, layers=["features.*", "classifier.1"])
    result = factorlens.cmtf(store, rank=10)          # or CMTF(10).fit(store).result_
    result.flow                                        # (R, n_blocks) component strengths
    factorlens.analyze(model, data, out="results")    # everything, with the HTML report
    result = factorlens.load("results")
    scan = factorlens.estimate_rank(store, max_rank=10)   # evidence per R, scan.chosen
    factorlens.score_model(model, data).score           # label-free training quality
"""

from factorlens.capture import capture, default_layers, select_layers
from factorlens.data import ImageData, load_data
from factorlens.errors import FactorlensError
from factorlens.factorize import CMTF, CMTFResult, cmtf, congruence, factor_match_score
from factorlens.pipeline import analyze, analyze_store, load, load_inputs
from factorlens.quality import QualityReport, assess, score_checkpoints, score_model
from factorlens.rank import RankScan, estimate_rank
from factorlens.store import MemoryStore, StoreView, ZarrStore, open_store

__version__ = "0.1.0"

__all__ = [
    "CMTF",
    "CMTFResult",
    "FactorlensError",
    "ImageData",
    "MemoryStore",
    "QualityReport",
    "RankScan",
    "StoreView",
    "ZarrStore",
    "__version__",
    "analyze",
    "analyze_store",
    "assess",
    "capture",
    "cmtf",
    "congruence",
    "default_layers",
    "estimate_rank",
    "factor_match_score",
    "load",
    "load_data",
    "load_inputs",
    "open_store",
    "score_checkpoints",
    "score_model",
    "select_layers",
]
