from .optimizer import DistributedOptimizer
from .schedules import lr_at

__all__ = ["DistributedOptimizer", "lr_at"]
