"""FAISS indexes over image and caption embeddings, built by autofaiss under a memory budget."""

from cocu_core.index.build import IndexMismatchError, check_index_dir, check_index_shape, load_index, recall_at_k

__all__ = ["IndexMismatchError", "check_index_dir", "check_index_shape", "load_index", "recall_at_k"]
