"""factorlens: look inside a trained network through a joint factorization lens."""

__version__ = "0.1.0"
