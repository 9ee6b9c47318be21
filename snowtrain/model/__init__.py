from .llama import Llama, count_parameters
from .parallel import ColumnParallelLinear, RowParallelLinear, TPGroup, VocabParallelEmbedding

__all__ = ["Llama", "count_parameters", "ColumnParallelLinear", "RowParallelLinear", "TPGroup",
           "VocabParallelEmbedding"]
