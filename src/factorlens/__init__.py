"""factorlens: look inside a trained network through a joint factorization lens.

The data flow, one module per stage::

    load_data → capture → store → factorize (CMTF) → report

Quick use::

    import factorlens
    store = factorlens.capture(model, images, layers=["features.*", "classifier.1"])
    result = factorlens.cmtf(store, rank=10)          # or CMTF(10).fit(store).result_
    result.flow                                        # (R, n_blocks) component strengths
    factorlens.analyze(model, data, out="results")    # everything, with the HTML report
    result = factorlens.load("results")
"""

from factorlens.capture import capture, default_layers, select_layers
from factorlens.data import ImageData, load_data
from factorlens.errors import FactorlensError
from factorlens.factorize import CMTF, CMTFResult, cmtf, congruence, factor_match_score
from factorlens.pipeline import analyze, analyze_store, load, load_inputs
from factorlens.store import MemoryStore, ZarrStore, open_store

__version__ = "0.1.0"

__all__ = [
    "CMTF",
    "CMTFResult",
    "FactorlensError",
    "ImageData",
    "MemoryStore",
    "ZarrStore",
    "__version__",
    "analyze",
    "analyze_store",
    "capture",
    "cmtf",
    "congruence",
    "default_layers",
    "factor_match_score",
    "load",
    "load_data",
    "load_inputs",
    "open_store",
    "select_layers",
]
