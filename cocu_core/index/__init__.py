"""FAISS indexes over image and caption embeddings, built by autofaiss under a memory budget."""

from cocu_core.index.build import INDEX_FIELDS, build_index_stage, load_index, recall_at_k

__all__ = ["INDEX_FIELDS", "build_index_stage", "load_index", "recall_at_k"]
