"""Block math shared by the hosts."""
from .double import BlockCall, double_block
from .single import single_block
from .views import DoubleBlockView, SingleBlockView

__all__ = ["BlockCall", "DoubleBlockView", "SingleBlockView", "double_block", "single_block"]
