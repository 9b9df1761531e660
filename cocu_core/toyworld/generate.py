"""Write the toy world's splits to disk: images, label maps, pairs tables, and the gap report.

Layout under ``out/``::

    web/   images/*.jpg  masks/*.png  pairs.parquet      (trains the curation encoder)
    train/ images/*.jpg  masks/*.png  pairs.parquet      (pre-training pairs to curate)
    val/   JPEGImages/*.jpg  SegmentationClass/*.png  ImageSets/Segmentation/val.txt
           class_names.txt  pairs.parquet                (PASCAL-VOC-style evaluation set)
    gap.parquet  world.json                          (caption gap of train+val; web has its own rates)

Every image's random stream is seeded by (seed, split, index), so output is bit-for-bit identical
for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from cocu_core.config import ToyWorldConfig, fingerprint
from cocu_core.io import read_json, write_bytes_atomic, write_json_atomic, write_parquet_atomic
from cocu_core.toyworld.captions import concepts_named, make_caption, salience_factor
from cocu_core.toyworld.concepts import BY_ID, BY_NAME, CLASS_NAMES, CONCEPTS, THINGS
from cocu_core.toyworld.render import render_scene

SPLITS = ("web", "train", "val")
_SPLIT_CODE = {"web": 1, "train": 2, "val": 3}
PAIRS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("file", pa.string()),
        ("mask", pa.string()),
        ("caption", pa.string()),
        ("concepts", pa.list_(pa.string())),
        ("named", pa.list_(pa.string())),
        ("noisy", pa.bool_()),
        ("areas", pa.list_(pa.float32())),  # each present concept's share of the image's pixels, aligned with concepts
    ]
)
PAIRS_VERSION = 2  # 2: areas
JPEG_QUALITY = 92


@dataclass(frozen=True)
class _Job:
    split: str
    out: str
    seed: int
    size: int
    max_things: int
    p_third: float
    p_thing: float
    p_stuff: float
    p_noise: float
    salience_exponent: float = 0.0
    reference_thing: float = 1.0
    reference_stuff: float = 1.0


def _paths(split: str, key: str) -> tuple[str, str]:
    if split == "val":
        return f"JPEGImages/{key}.jpg", f"SegmentationClass/{key}.png"
    return f"images/{key}.jpg", f"masks/{key}.png"


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(arr).save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        Image.fromarray(arr, mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def render_sample(job: _Job, index: int) -> tuple[dict, bytes, bytes]:
    """Why: one sample from its own seeded stream -> (record, jpeg bytes, png bytes)."""
    rng = np.random.default_rng([job.seed, _SPLIT_CODE[job.split], index])
    scene = render_scene(rng, job.size, job.max_things, job.p_third, tuple(t.name for t in THINGS))
    min_px = max(4, int(0.004 * job.size * job.size))
    counts = np.bincount(scene.label.ravel(), minlength=len(CONCEPTS) + 1)
    present = [BY_ID[i].name for i in range(1, len(counts)) if counts[i] >= min_px]
    visible = set(present)
    stuff = [s for s in scene.stuff if s in visible]
    things = [(n, c) for n, c in scene.things if n in visible]
    areas = {BY_ID[i].name: float(counts[i]) / scene.label.size for i in range(1, len(counts)) if counts[i] >= min_px}
    salience = {n: salience_factor(a, job.reference_thing if BY_NAME[n].kind == "thing" else job.reference_stuff,
                                   job.salience_exponent) for n, a in areas.items()}
    caption, noisy = make_caption(stuff, things, rng, job.p_thing, job.p_stuff, job.p_noise, salience)
    key = f"{job.split}_{index:07d}"
    img_rel, mask_rel = _paths(job.split, key)
    rec = {
        "key": key,
        "file": img_rel,
        "mask": mask_rel,
        "caption": caption,
        "concepts": present,
        "named": [c for c in concepts_named(caption)],
        "noisy": noisy,
        "areas": [areas[c] for c in present],
    }
    return rec, _encode(scene.image, "JPEG"), _encode(scene.label, "PNG")


def _worker_init() -> None:
    """Why: forked workers must not inherit a host's SIGTERM handler (Prefect's raises in each child)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _work(args: tuple[_Job, int, int]) -> list[dict]:
    job, lo, hi = args
    out = Path(job.out)
    recs = []
    for i in range(lo, hi):
        rec, jpg, png = render_sample(job, i)
        (out / rec["file"]).write_bytes(jpg)
        (out / rec["mask"]).write_bytes(png)
        recs.append(rec)
    return recs


def generate_split(
    out_dir: str | Path,
    split: str,
    n: int,
    cfg: ToyWorldConfig,
    workers: int = 2,
    progress: Optional[Callable[[int], None]] = None,
) -> pa.Table:
    """Why: render `n` samples of one split in parallel chunks and write its pairs table atomically."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    out = Path(out_dir) / split
    for sub in ({"JPEGImages", "SegmentationClass", "ImageSets/Segmentation"} if split == "val" else {"images", "masks"}):
        (out / sub).mkdir(parents=True, exist_ok=True)
    job = _Job(
        split, str(out), cfg.seed, cfg.image_size, cfg.max_things, cfg.p_third_stuff,
        cfg.p_mention_thing, cfg.p_mention_stuff_web if split == "web" else cfg.p_mention_stuff, cfg.p_noise,
        cfg.salience_exponent, cfg.salience_reference_thing, cfg.salience_reference_stuff,
    )
    chunk = 250
    tasks = [(job, lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    recs: list[dict] = []
    if workers > 1 and len(tasks) > 1:
        ctx = mp.get_context("fork")
        pool = ctx.Pool(workers, initializer=_worker_init)
        try:
            for part in pool.imap(_work, tasks):
                recs.extend(part)
                if progress:
                    progress(len(part))
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    else:
        for t in tasks:
            part = _work(t)
            recs.extend(part)
            if progress:
                progress(len(part))
    table = pa.Table.from_pylist(recs, schema=PAIRS_SCHEMA)
    write_parquet_atomic(out / "pairs.parquet", table, PAIRS_SCHEMA, PAIRS_VERSION, {"split": split})
    if split == "val":
        keys = "\n".join(r["key"] for r in recs) + ("\n" if recs else "")
        write_bytes_atomic(out / "ImageSets/Segmentation/val.txt", keys.encode())
        write_bytes_atomic(out / "class_names.txt", ("\n".join(CLASS_NAMES) + "\n").encode())
    return table


def semantic_gap(pairs: pa.Table) -> pa.Table:
    """Why: per concept, how often a present concept is named in its caption — the gap CoCu targets."""
    present = pairs.column("concepts").to_pylist()
    named = pairs.column("named").to_pylist()
    rows = []
    tot_p = tot_n = 0
    kind_tot: dict[str, list[int]] = {"stuff": [0, 0], "thing": [0, 0]}
    for c in CONCEPTS:
        n_present = sum(c.name in p for p in present)
        n_named = sum(c.name in p and c.name in m for p, m in zip(present, named))
        n_false = sum(c.name not in p and c.name in m for p, m in zip(present, named))
        rows.append(
            {
                "concept": c.name,
                "kind": c.kind,
                "present": n_present,
                "named": n_named,
                "named_not_present": n_false,
                "named_fraction": n_named / n_present if n_present else float("nan"),
            }
        )
        tot_p += n_present
        tot_n += n_named
        kind_tot[c.kind][0] += n_present
        kind_tot[c.kind][1] += n_named
    for kind, (p, m) in kind_tot.items():
        rows.append({"concept": f"ALL {kind}", "kind": kind, "present": p, "named": m, "named_not_present": 0,
                     "named_fraction": m / p if p else float("nan")})
    rows.append({"concept": "ALL", "kind": "all", "present": tot_p, "named": tot_n, "named_not_present": 0,
                 "named_fraction": tot_n / tot_p if tot_p else float("nan")})
    return pa.Table.from_pylist(rows)


def format_gap(gap: pa.Table) -> str:
    """Why: a readable table for the CLI and the closing notes."""
    lines = [f"{'concept':<12} {'kind':<6} {'present':>8} {'named':>7} {'named %':>8}  gap %"]
    for r in gap.to_pylist():
        frac = r["named_fraction"]
        pct = "   n/a" if frac != frac else f"{100 * frac:7.1f}"
        gap_pct = "  n/a" if frac != frac else f"{100 * (1 - frac):5.1f}"
        lines.append(f"{r['concept']:<12} {r['kind']:<6} {r['present']:>8} {r['named']:>7} {pct:>8}  {gap_pct}")
    return "\n".join(lines)


def world_fingerprint(cfg: ToyWorldConfig) -> str:
    """Why: the toy world's cache key is its generator config (plus the generator's code version)."""
    return fingerprint({"toyworld": cfg.model_dump(mode="json"), "generator": 2})  # 2: salience, areas


def generate_world(
    out_dir: str | Path,
    cfg: ToyWorldConfig,
    workers: int = 2,
    progress: Optional[Callable[[str, int, int], None]] = None,
    force: bool = False,
) -> dict:
    """Why: write all three splits once; a rerun with the same config is a no-op (manifest hit)."""
    out = Path(out_dir)
    fp = world_fingerprint(cfg)
    manifest_path = out / "world.json"
    if not force and manifest_path.is_file():
        m = read_json(manifest_path)
        if m.get("fingerprint") == fp and all((out / s / "pairs.parquet").is_file() for s in SPLITS):
            m["cached"] = True
            return m
    sizes = {"web": cfg.n_web, "train": cfg.n_train, "val": cfg.n_val}
    tables = {}
    for split in SPLITS:
        cb = (lambda k, s=split, n=sizes[split]: progress(s, k, n)) if progress else None
        tables[split] = generate_split(out, split, sizes[split], cfg, workers, cb)
    # The gap is measured where CoCu works: the pairs to curate (and val). `web` stands for the curation
    # CLIP's own corpus, captioned at its own stuff rate; it counts only when no other split exists.
    curated = [tables[s] for s in ("train", "val") if len(tables[s])] or [tables["web"]]
    gap = semantic_gap(pa.concat_tables(curated))
    write_parquet_atomic(out / "gap.parquet", gap, None, 1, {"what": "semantic gap of train+val captions"})
    overall = gap.to_pylist()[-1]["named_fraction"]
    web_gap = semantic_gap(tables["web"]).to_pylist()[-1]["named_fraction"] if len(tables["web"]) else None
    manifest = {
        "stage": "toyworld",
        "fingerprint": fp,
        "config": cfg.model_dump(mode="json"),
        "counts": {s: len(t) for s, t in tables.items()},
        "named_fraction": overall,
        "named_fraction_web": web_gap,
        "class_names": list(CLASS_NAMES),
        "cached": False,
    }
    write_json_atomic(manifest_path, manifest)
    return manifest


def read_pairs(split_dir: str | Path) -> pa.Table:
    """Why: one reader for a split's pairs table."""
    return pq.read_table(Path(split_dir) / "pairs.parquet")



def toy_ground_truth(toy_split_dir: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Why: the toy world's per-image concepts and the concepts its caption names, by sample id."""
    t = pq.read_table(toy_split_dir / "pairs.parquet", columns=["key", "concepts", "named"])
    keys = t.column("key").to_pylist()
    return dict(zip(keys, t.column("concepts").to_pylist())), dict(zip(keys, t.column("named").to_pylist()))
