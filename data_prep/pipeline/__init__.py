from .config import Phase1Config, load_phase1_config
from .phase1 import Phase1

__all__ = ["Phase1", "Phase1Config", "load_phase1_config"]
