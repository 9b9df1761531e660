"""Image and caption embeddings: clip-retrieval inference (`clip_retrieval`) and the files it leaves (`store`)."""

from cocu_core.embeddings.store import (ARRAYS, METADATA_SCHEMA, EmbeddingFileError, embed_manifest, l2_normalise,
                                        load_embeddings, npy_header, open_embeddings, open_npy, save_npy_atomic,
                                        shard_row_ranges)

__all__ = ["ARRAYS", "METADATA_SCHEMA", "EmbeddingFileError", "embed_manifest", "l2_normalise", "load_embeddings",
           "npy_header", "open_embeddings", "open_npy", "save_npy_atomic", "shard_row_ranges"]
