"""What training actually sees, per arm: how much of an image's ground truth reaches its prompts, how many are wrong.

The semantic-gap table scores an archive's top 3; a sampling method's training signal is what it draws
over all epochs. For each arm this replays the training loader's own concept draws
(:class:`~cocu_core.train.data.PromptMaker` with the generator of every (seed, epoch, sample), over
the samples each epoch's full batches hold, capped by ``train.max_steps``) without decoding any
image, and scores them against the toy world's ground truth:

- ``gt_coverage``: per image, the fraction of its ground-truth classes named by its caption (the
  toy world's ``named``) or drawn as a prompt in some epoch; averaged over images;
- ``missing_coverage``: the same over the ground-truth classes its caption misses (the gap closed);
- ``wrong_prompt_fraction``: drawn prompts whose class is not in the image, or no toy class at all.

Concepts map to classes by :data:`~cocu_core.toyworld.concepts.LEMMA_TO_CONCEPT` (lower-cased, so a
caption noun "Boats" counts as boat). Images undecodable at training time are still counted (they are
only found when decoded); the caption padding is not a prompt.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from cocu_core.config import TRAIN_VARIANTS, PipelineConfig
from cocu_core.layout import stage_dir, toy_split
from cocu_core.toyworld.concepts import LEMMA_TO_CONCEPT
from cocu_core.toyworld.generate import toy_ground_truth
from cocu_core.toyworld.oracle import download_key, download_sample_ids, toy_world_fingerprint

ARMS = TRAIN_VARIANTS  # every training variant is an arm


def lemma_class(concept: str) -> Optional[str]:
    """Why: archive lemmas, caption nouns and oracle class names all score against the same toy classes."""
    return LEMMA_TO_CONCEPT.get(concept.strip().lower())


def signal_scores(ground_truth: Sequence[Iterable[str]], named: Sequence[Iterable[str]],
                  drawn: Sequence[Sequence[str]], to_class: Callable[[str], Optional[str]] = lemma_class,
                  epochs: int = 0) -> dict[str, Any]:
    """Why: one arm's row from each image's ground truth, caption classes and every concept drawn for it."""
    if not (len(ground_truth) == len(named) == len(drawn)):
        raise ValueError(f"length mismatch: {len(ground_truth)} ground truths, {len(named)} captions, "
                         f"{len(drawn)} draw lists")
    cover, cap_cover, miss_hit = 0.0, 0.0, 0
    n_img = n_miss = n_prompts = n_wrong = 0
    memo: dict[str, Optional[str]] = {}
    for gt, cap, picks in zip(ground_truth, named, drawn):
        gt_set = set(gt)
        classes = [memo[c] if c in memo else memo.setdefault(c, to_class(c)) for c in picks]
        n_prompts += len(classes)
        n_wrong += sum(c is None or c not in gt_set for c in classes)
        if not gt_set:
            continue
        cap_set, seen = set(cap) & gt_set, set(classes) & gt_set
        n_img += 1
        cover += len(cap_set | seen) / len(gt_set)
        cap_cover += len(cap_set) / len(gt_set)
        missing = gt_set - cap_set
        n_miss += len(missing)
        miss_hit += len(missing & seen)
    nan = float("nan")
    return {"gt_coverage": cover / n_img if n_img else nan, "caption_coverage": cap_cover / n_img if n_img else nan,
            "missing_coverage": miss_hit / n_miss if n_miss else nan,
            "wrong_prompt_fraction": n_wrong / n_prompts if n_prompts else nan,
            "prompts": n_prompts, "images": n_img, "epochs": epochs}


def epoch_plan(epochs: int, steps_per_epoch: int, max_steps: Optional[int]) -> list[tuple[int, int]]:
    """Why: (epoch, steps) pairs training runs, `train.max_steps` cutting the last one short."""
    total = epochs * steps_per_epoch if not max_steps else min(epochs * steps_per_epoch, max_steps)
    spe = steps_per_epoch
    return [(e, min(spe, total - e * spe)) for e in range(epochs) if total > e * spe]


def replay_draws(data, plan: Sequence[tuple[int, int]]) -> list[Optional[list[str]]]:
    """Why: every concept each sample of a TrainData is prompted with over the plan's epochs, as training draws
    them (candidates once per sample, one pick per epoch with the sample's own generator); None for a sample
    no full batch of the plan holds."""
    pm = data.prompts
    cands: dict[int, tuple[list[str], Any]] = {}
    drawn: dict[int, list[str]] = {}
    for epoch, steps in plan:
        for i in data.epoch_samples(epoch, steps).tolist():
            if i not in cands:
                caption, entry = data.prompt_inputs(i)
                cands[i], drawn[i] = (pm.candidates(caption, entry), entry), []
            words, entry = cands[i]
            drawn[i].extend(words[j] for j in pm.pick(words, entry, data.text_rng(epoch, i)).tolist())
    return [drawn.get(i) for i in range(data.n_samples)]


def _ground_truth(cfg: PipelineConfig) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, str]]:
    """Why: ground truth and caption classes by toy sample id, and download key -> sample id."""
    toy_world_fingerprint(cfg)  # refuses clearly without a toy world
    download_key(cfg)
    gt, named = toy_ground_truth(toy_split(cfg, "train"))
    s = download_sample_ids(stage_dir(cfg, "download"))
    return gt, named, dict(zip(s.column("key").to_pylist(), s.column("sample_id").to_pylist()))


def arm_data(cfg: PipelineConfig, arm: str, shards: Path, archive: Optional[Path], index_dir: Optional[Path] = None):
    """Why: the arm's TrainData exactly as its training opens it (same shards, archive, join and seeds), minus
    the image transform, which plays no part in the prompts; the caller resolves the arm's shards and archive."""
    from cocu_core.train.data import TrainData  # torch

    return TrainData(shards, archive, arm, 8, cfg.train.model_copy(update={"augment": "none", "num_workers": 0}),
                     index_dir=index_dir)


def training_signal(cfg: PipelineConfig, arm_inputs: Mapping[str, tuple[Path, Optional[Path]]],
                    log: Optional[Callable[[str], None]] = None) -> dict[str, dict[str, Any]]:
    """Why: per arm, the ground-truth coverage and wrong-prompt fraction of its prompts over all of `cfg.train`'s
    epochs (pass the config each arm trains with: its epochs, seed, batch size, K and max_steps); `arm_inputs`:
    each arm's (shards, archive folder), as its training reads them (`stages.semantic_gap.arm_inputs`)."""
    arms = list(arm_inputs)
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ValueError(f"unknown arm(s) {bad}; choose from {list(ARMS)}")
    gt, named, sid = _ground_truth(cfg)
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="cocu-signal-") as tmp:  # the shards' tar index, read once for all arms
        for arm in arms:
            out[arm] = _arm_signal(cfg, arm, arm_inputs[arm], gt, named, sid, Path(tmp))
            if log:
                r = out[arm]
                log(f"training signal {arm}: GT coverage {r['gt_coverage']:.3f}, wrong prompts "
                    f"{r['wrong_prompt_fraction']:.3f} ({r['images']} images, {r['epochs']} epochs)")
    return out


def _arm_signal(cfg: PipelineConfig, arm: str, inputs: tuple[Path, Optional[Path]], gt: dict[str, list[str]],
                named: dict[str, list[str]], sid: dict[str, str], index_dir: Path) -> dict[str, Any]:
    """Why: one arm's row: replay its draws, keep the images with ground truth that training saw, score them."""
    data = arm_data(cfg, arm, inputs[0], inputs[1], index_dir)
    try:
        plan = epoch_plan(cfg.train.epochs, data.steps_per_epoch, cfg.train.max_steps)
        drawn = replay_draws(data, plan)
        ids = [sid.get(str(k)) for k in data.keys.tolist()]
    finally:
        data.close()
    rows = [j for j, s in enumerate(ids) if s in gt and drawn[j] is not None]  # unseen images: not trained on
    return signal_scores([gt[ids[j]] for j in rows], [named[ids[j]] for j in rows], [drawn[j] or [] for j in rows],
                         epochs=len(plan))


def _pct(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def format_training_signal(rows: dict[str, dict[str, Any]]) -> str:
    """Why: the table of what each arm trains on, for the semantic-gap and ablation reports."""
    head = ("| arm | GT concepts in prompts | missing-from-caption concepts reached | wrong prompts | prompts | "
            "images | epochs |\n|---|---|---|---|---|---|---|")
    body = [f"| {arm} | {_pct(r['gt_coverage'])} | {_pct(r['missing_coverage'])} | "
            f"{_pct(r['wrong_prompt_fraction'])} | {r['prompts']} | {r['images']} | {r['epochs']} |"
            for arm, r in rows.items()]
    cap = next((r["caption_coverage"] for r in rows.values()), None)
    note = (f"\n\nGT coverage counts a class once its caption names it or a prompt draws it in any epoch; the caption "
            f"alone covers {_pct(cap)}. Wrong prompts: drawn concepts whose class is not in the image (or no class)."
            if rows else "")
    return "\n".join([head, *body]) + note


