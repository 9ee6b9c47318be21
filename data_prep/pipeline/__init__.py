from .config import Phase1Config, load_phase1_config
from .phase1 import Phase1
from .phase2 import Phase2
from .phase2_config import Phase2Config, load_phase2_config
from .phase3 import Phase3
from .phase3_config import Phase3Config, load_phase3_config

__all__ = ["Phase1", "Phase1Config", "Phase2", "Phase2Config", "Phase3", "Phase3Config",
           "load_phase1_config", "load_phase2_config", "load_phase3_config"]
