"""The ``projc`` command line (``main``): inspect, compare, train, plot, ops."""
from .main import main, ops_markdown

__all__ = ["main", "ops_markdown"]
