"""The self-contained offline HTML report and its PNG figures.

``write_report(out_dir, result, images, ...)`` writes ``out_dir/index.html`` (one file, every
image embedded) and ``out_dir/figures/*.png``.
"""

from factorlens.report.figures import top_indices
from factorlens.report.html import write_report

__all__ = ["top_indices", "write_report"]
