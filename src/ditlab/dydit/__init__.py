"""DyDiT: timestep-wise dynamic width and spatial-wise dynamic tokens for a trained DiT, with deployment that
really runs a smaller network (sliced weights per timestep, MLP on gathered tokens)."""

from ditlab.dydit.flops import dynamic_flop_breakdown
from ditlab.dydit.importance import reorder_by_importance
from ditlab.dydit.model import DyDiT, DyDiTOptions

__all__ = ["DyDiT", "DyDiTOptions", "dynamic_flop_breakdown", "reorder_by_importance"]
