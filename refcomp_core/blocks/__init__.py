"""Block math shared by the hosts: views over a host's block modules and the runner that
calls the active pathways at their places."""
from .runner import run_double, run_single
from .views import DoubleBlockView, SingleBlockView

__all__ = ["DoubleBlockView", "SingleBlockView", "run_double", "run_single"]
