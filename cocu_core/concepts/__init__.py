"""Concepts: the vocabulary built from captions, per-caption extraction, and their text embeddings."""
