"""The joint factorization engine: coupled matrix–tensor factorization with block weights."""

from factorlens.factorize.compare import congruence, factor_match_score, matched_congruences
from factorlens.factorize.engine import CMTF, cmtf
from factorlens.factorize.result import CMTFResult

__all__ = ["CMTF", "CMTFResult", "cmtf", "congruence", "factor_match_score", "matched_congruences"]
