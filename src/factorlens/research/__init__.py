"""Research and benchmark tooling: not part of factorlens's stable API.

What lives here serves the demo, the tests and the benchmarks, not the engine
(data → capture → store → factorize → rank / quality → report):

* :mod:`factorlens.research.models` — the reference CNNs (``DigitsCNN``, ``MnistCNN``,
  ``BNGapCNN``, ``SmallResNet``, each with a ``width``) and a seeded minimal trainer;
* :mod:`factorlens.research.zoo` — model zoos: seeded checkpoints of known test accuracy (kinds
  steps, noise, data, width), written by ``factorlens zoo``;
* :mod:`factorlens.research.baselines` — RankMe, WeightWatcher α and per-layer effective rank,
  the label-free baselines of the quality benchmark;
* :mod:`factorlens.research.synthetic` — the procedural ``glyphs`` and ``shapes`` data domains;
* :mod:`factorlens.research.demo` — trains the demo model for ``factorlens demo``.

Names, signatures and file formats here may change between releases without notice; none of
them is exported from ``factorlens`` itself. Import the modules explicitly, e.g.
``from factorlens.research.models import DigitsCNN``. This package imports nothing on its own,
so importing it does not load torch.
"""
