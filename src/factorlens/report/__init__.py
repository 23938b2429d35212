"""The self-contained offline HTML report.

Data flow: a result and its inputs → a view model of plain dicts (:mod:`.view`,
:mod:`.view_component`, :mod:`.view_checkpoints`) → Jinja2 templates (:mod:`.render`,
``templates/``, ``static/``) → files (:mod:`.files`: ``index.html`` with every image embedded,
and ``figures/`` with each image as PNG and each chart as SVG). Notebook plots (matplotlib,
``ax=None`` in, ``Axes`` out): :mod:`.plots`.
"""

from factorlens.report.files import write_report
from factorlens.report.pixels import bottom_indices, top_indices

__all__ = ["bottom_indices", "top_indices", "write_report"]
