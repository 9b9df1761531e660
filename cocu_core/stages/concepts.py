"""concepts: one text embedding per vocabulary concept (the prompt templates averaged), by the curation encoder.

Reads   vocabulary/vocabulary.parquet; the encoder stage's weights (and its fingerprint)
Writes  concept_emb/concept_emb_<key>.npy and .json (one set per vocabulary, encoder and templates; others kept)
Key     embeddings_cache_key(concepts, encoder fingerprint, encoder.templates), in the file name
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from cocu_core.concepts.embed import cached_concept_embeddings, embeddings_cache_key
from cocu_core.config import PipelineConfig
from cocu_core.encoder.load import encoder_fingerprint
from cocu_core.layout import stage_dir
from cocu_core.stages.base import DONE, MISSING, STALE, Context, Report, Stage, StageStatus

FIELDS = ["encoder.templates"]


def _concepts(vocab_dir: Path) -> list[str]:
    from cocu_core.concepts.vocabulary import read_vocabulary  # nltk (WordNet)

    return read_vocabulary(vocab_dir / "vocabulary.parquet").column("concept").to_pylist()


def concepts_stage(vocab_dir: Path, out_dir: Path, cfg: PipelineConfig, encoder_id: str,
                   encode_text_fn: Callable[[list[str]], np.ndarray]) -> tuple[np.ndarray, bool]:
    """Why: one text embedding per concept, cached per (vocabulary, encoder, templates)."""
    return cached_concept_embeddings(out_dir, _concepts(vocab_dir), cfg.encoder.templates, encoder_id, encode_text_fn)


def run(ctx: Context) -> Report:
    """Why: embed the vocabulary with the configured encoder (loaded only when the set is not cached)."""
    from cocu_core.encoder.load import load_encoder  # open_clip

    cfg = ctx.cfg
    t0 = time.time()
    enc_id = encoder_fingerprint(cfg)
    emb, cached = concepts_stage(ctx.dir("vocabulary"), ctx.dir("concepts"), cfg, enc_id,
                                 lambda texts: load_encoder(cfg).encode_text(texts))
    return {"concepts": int(emb.shape[0]), "dim": int(emb.shape[1]) if emb.ndim == 2 else 0,
            "templates": len(cfg.encoder.templates), "seconds": round(time.time() - t0, 2), "cached": cached,
            "encoder": enc_id}


def load_concept_embeddings(cfg: PipelineConfig) -> tuple[np.ndarray, str]:
    """Why: curation and the gap report read the cached set only; a missing one names the stage to run."""
    enc_id = encoder_fingerprint(cfg)
    vocab = stage_dir(cfg, "vocabulary")

    def refuse(texts: list[str]) -> np.ndarray:
        key = embeddings_cache_key(_concepts(vocab), enc_id, cfg.encoder.templates)
        raise FileNotFoundError(f"no concept embeddings {stage_dir(cfg, 'concepts')}/concept_emb_{key}.npy for "
                                "this vocabulary and encoder; run the concepts stage (--from concepts)")

    return concepts_stage(vocab, stage_dir(cfg, "concepts"), cfg, enc_id, refuse)[0], enc_id


def status(cfg: PipelineConfig, up: Mapping[str, StageStatus]) -> StageStatus:
    """Why: done when the set for today's vocabulary, expected encoder key and templates is on disk."""
    folder = stage_dir(cfg, "concepts")
    have = sorted(folder.glob("concept_emb_*.npy")) if folder.is_dir() else []
    if up["vocabulary"].state != DONE or not up["encoder"].key:
        bad = [f"upstream '{u}' is {up[u].state}" for u in ("vocabulary", "encoder") if up[u].state != DONE]
        return StageStatus("concepts", STALE if have else MISSING, None, [str(folder)] if have else [], bad)
    concepts = _concepts(stage_dir(cfg, "vocabulary"))
    key = embeddings_cache_key(concepts, up["encoder"].key, cfg.encoder.templates)
    path = folder / f"concept_emb_{key}.npy"
    if path.is_file():
        return StageStatus("concepts", DONE, key, [str(path), f"concepts={len(concepts)}"])
    why = ["none for this vocabulary, encoder and encoder.templates" + (f" ({len(have)} other sets kept)" if have else "")]
    return StageStatus("concepts", STALE if have else MISSING, key, [], why)


STAGE = Stage("concepts", needs=("encoder", "vocabulary"), run=run, status=status, fields=tuple(FIELDS))
