"""The self-contained offline HTML report and its PNG figures.

``write_report(out_dir, result, images, ...)`` writes ``out_dir/index.html`` (one file, every
image embedded, a small inline script for the component explorer) and ``out_dir/figures/*.png``.
Several checkpoints: :mod:`factorlens.report.trajectory` (``write_trajectory_report``).
"""

from factorlens.report.figures import bottom_indices, top_indices
from factorlens.report.html import write_report

__all__ = ["bottom_indices", "top_indices", "write_report"]
