"""How many components: rank evidence for the joint factorization and the stated rule."""

from factorlens.rank.criteria import bi_cross_validation, core_consistency, joint_signature
from factorlens.rank.scan import RankScan, estimate_rank

__all__ = [
    "RankScan",
    "bi_cross_validation",
    "core_consistency",
    "estimate_rank",
    "joint_signature",
]
