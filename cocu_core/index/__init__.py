"""FAISS indexes over image and caption embeddings, built with faiss directly by a size/memory policy and tuned to a
recall target (`policy.py` chooses, `build.py` builds and loads, `tune.py` tunes)."""

from cocu_core.index.build import IndexMismatchError, RerankIndex, check_index_dir, check_index_shape, load_index, recall_at_k
from cocu_core.index.policy import IndexBudgetError, Plan, plan_index
from cocu_core.index.tune import IndexRecallError

__all__ = ["IndexBudgetError", "IndexMismatchError", "IndexRecallError", "Plan", "RerankIndex", "check_index_dir",
           "check_index_shape", "load_index", "plan_index", "recall_at_k"]
