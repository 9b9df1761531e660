"""Scale simulation: synthetic CLIP-like pairs in the embed stage's real format -> embed assembly -> vocabulary ->
index -> curation inputs -> curate, through the real stage functions, each stage in its own process.

Run (nice: the cores are shared):  nice -n 19 .venv/bin/python benchmarks/bench_scale.py --n 200000
Stages can run in separate invocations (`--stages curate` resumes a run whose other stages finished: each stage's row is
appended to <root>/bench_scale_<n>.rows.jsonl and the result JSON holds the latest row per stage); `--stages
curate-sample` curates a few shards spread over the corpus (per-image cost and memory at a size whose full curate
stage takes long); `--report FILE...` prints the RESULTS.md table and extrapolation from result JSONs or rows files.
A quick run of every stage: `--n 20000 --root /tmp/cocu_scale_quick --fresh`.

Per stage it prints wall time, images/s and peak anonymous memory (RssAnon of /proc/self/status sampled every
20 ms in a thread of the stage's process: heap and faiss allocations count, pages of memory-mapped input files the
kernel can drop do not; VmHWM, the peak of all resident pages including mapped files, is printed beside it), the
index's recall@8 against exact search, disk use, and an extrapolation to the paper's 27M pairs.

The corpus: 20 topics of 12 real nouns each; an image belongs to one of 50,000 scenes (sub-events, near-duplicate
groups) drawn with power-law popularity (a few large clusters, a long tail of small ones), shows 3-5 nouns of its
scene's topic, any 5 of the 12 (sometimes one of another topic), and its caption names 1-2 of them in a varied
sentence (the semantic gap CoCu closes). Embeddings are 512-d, unit norm, with a shared component (CLIP-like positive
similarities): image = common + topic + its nouns + scene + style + noise, caption = common + named nouns + noise,
concept prompt = common + topic + noun. `--resemblance EMBED_DIR` compares the neighbour structure (nearest-neighbour
similarities, TwoNN intrinsic dimension) with real encoder embeddings (the toy encoder's embed/ folder). Written as clip-retrieval writes parts
(float16 arrays + metadata Parquet per shard, img2dataset keys), so the embed stage assembles them for real.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NLTK_DATA", str(ROOT / ".nltk_data"))

TOPICS: dict[str, list[str]] = {
    "street": ["car", "bus", "bicycle", "truck", "motorcycle", "road", "building", "sidewalk", "sign", "person",
               "tree", "lamp"],
    "beach": ["sand", "sea", "wave", "umbrella", "boat", "surfboard", "sky", "palm", "shell", "towel", "cloud", "gull"],
    "kitchen": ["table", "chair", "cup", "plate", "bowl", "knife", "fork", "oven", "refrigerator", "sink", "bottle",
                "spoon"],
    "park": ["grass", "dog", "ball", "bench", "frisbee", "child", "flower", "path", "kite", "fountain", "squirrel",
             "pond"],
    "farm": ["cow", "horse", "sheep", "barn", "fence", "tractor", "field", "hay", "goat", "pig", "chicken", "farmer"],
    "living room": ["sofa", "television", "cushion", "carpet", "lamp", "curtain", "window", "shelf", "book", "plant",
                    "cat", "clock"],
    "mountain": ["mountain", "snow", "rock", "pine", "lake", "hiker", "cliff", "glacier", "tent", "backpack",
                 "valley", "river"],
    "airport": ["airplane", "runway", "terminal", "suitcase", "pilot", "tower", "jet", "cart", "gate", "passenger",
                "wing", "helicopter"],
    "office": ["desk", "computer", "keyboard", "monitor", "mouse", "phone", "paper", "pen", "printer", "folder",
               "businessman", "whiteboard"],
    "garden": ["rose", "tulip", "bee", "butterfly", "hedge", "shovel", "pot", "gardener", "watering can", "soil",
               "leaf", "bush"],
    "wedding": ["bride", "groom", "dress", "cake", "ring", "bouquet", "church", "guest", "veil", "tuxedo", "candle",
                "champagne"],
    "stadium": ["player", "football", "crowd", "referee", "goal", "jersey", "helmet", "bat", "trophy", "flag",
                "stadium", "coach"],
    "market": ["fruit", "vegetable", "apple", "banana", "orange", "basket", "vendor", "stall", "tomato", "bread",
               "cheese", "fish"],
    "harbor": ["ship", "dock", "crane", "container", "anchor", "sailor", "yacht", "pier", "lighthouse", "rope",
               "buoy", "ferry"],
    "forest": ["deer", "bear", "wolf", "owl", "mushroom", "log", "moss", "fern", "trail", "waterfall", "fox", "oak"],
    "classroom": ["student", "teacher", "blackboard", "notebook", "pencil", "backpack", "map", "globe", "chair",
                  "ruler", "calculator", "poster"],
    "bathroom": ["toilet", "bathtub", "mirror", "towel", "soap", "shower", "toothbrush", "tile", "faucet", "basin",
                 "sponge", "razor"],
    "restaurant": ["waiter", "menu", "wine", "glass", "pizza", "burger", "salad", "chef", "napkin", "candle",
                   "steak", "soup"],
    "railway": ["train", "platform", "track", "station", "locomotive", "carriage", "conductor", "ticket", "bridge",
                "tunnel", "signal", "bench"],
    "concert": ["guitar", "drum", "singer", "microphone", "stage", "piano", "violin", "speaker", "audience",
                "musician", "spotlight", "trumpet"],
}
ADJECTIVES = ["small", "big", "red", "old", "young", "wooden", "white", "black", "beautiful", "happy", "green",
              "blue", "tall", "little", "famous", "empty", "busy", "modern", "vintage", "bright"]
PREPOSITIONS = ["on", "near", "next to", "in front of", "under", "beside", "behind", "with", "by", "at"]
VERBS = ["sitting", "standing", "lying", "waiting", "resting", "parked", "shown", "seen", "placed", "found"]
PATTERNS = [
    "{a1} {n1} {v} {p} the {n2}",
    "the {a1} {n1} and a {a2} {n2}",
    "{a1} {n1} {p} {a2} {n2} in the {t}",
    "{n1} {v} {p} the {a2} {n2} at sunset",
    "a {a1} {n1}",
    "portrait of a {a1} {n1} {p} a {n2}",
    "{a1} {n1} in the {t}",
]
VOC_NAMES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
             "table", "dog", "horse", "motorbike", "person", "plant", "sheep", "sofa", "train", "monitor"]
DIM = 512
STYLE_DIMS = 48
SCENES, SCENE_DIMS, SCENE_ZIPF = 50_000, 32, 1.0  # scene centres, their latent width, popularity ~ 1 / (rank + 10)
# What the simulation builds: the index stage's own policy at its default budget (2G an index): IVF-Flat at 200k,
# IVF (HNSW quantiser) with SQ8 codes and exact re-rank at 2M, tuned to recall@8 0.95 within 10 ms a query.
BENCH_INDEX = {"max_index_memory_usage": "2G", "current_memory_available": "6G", "max_index_query_time_ms": 10.0}
TARGET_CURATE_GB = 4.0


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class World:
    """Why: one seeded description of the synthetic corpus, shared by the writer and the text encoder."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng([seed, 1])
        self.nouns: list[str] = []
        self.topic_of: list[int] = []
        for t, words in enumerate(TOPICS.values()):
            for w in words:
                if w not in self.nouns:
                    self.nouns.append(w)
                    self.topic_of.append(t)
        self.members = [np.array([i for i, w in enumerate(self.nouns) if w in words]) for words in TOPICS.values()]
        self.common = _l2(rng.standard_normal(DIM))
        self.topics = _l2(rng.standard_normal((len(TOPICS), DIM)))
        self.noun_vec = _l2(0.4 * self.common + 0.4 * self.topics[self.topic_of]
                            + _l2(rng.standard_normal((len(self.nouns), DIM))))
        # Photos vary along a few dozen shared directions (viewpoint, light, style), not 512 independent ones:
        # real embeddings have a low intrinsic dimension, which is what lets approximate search find neighbours.
        self.style = rng.standard_normal((STYLE_DIMS, DIM)) / np.sqrt(STYLE_DIMS)
        self.index = {w: i for i, w in enumerate(self.nouns)}
        # Many distinct centres with a spread of sizes, as web corpora have (events, products, near-duplicates): scene
        # offsets live in a shared 32-d subspace; scene s belongs to topic s % 20; popularity is power-law.
        basis = rng.standard_normal((SCENE_DIMS, DIM)) / np.sqrt(SCENE_DIMS)
        self.scene_vec = _l2(rng.standard_normal((SCENES, SCENE_DIMS)) @ basis).astype(np.float32)
        w = 1.0 / (np.arange(SCENES) + 10.0) ** SCENE_ZIPF
        self.scene_p = rng.permutation(w / w.sum())

    def concept_vector(self, concept: str) -> np.ndarray:
        """Why: a noun of the world has its vector; any other phrase a seeded one near the common direction."""
        if concept in self.index:
            return self.noun_vec[self.index[concept]]
        h = int.from_bytes(concept.encode()[:16].ljust(16, b"\0"), "little") % (2**63)
        r = np.random.default_rng([h, len(concept)])
        return _l2(0.4 * self.common + _l2(r.standard_normal(DIM)))

    def encode_text_fn(self, templates: Sequence[str]) -> Callable[[list[str]], np.ndarray]:
        """Why: the concept-embedding stage's text encoder: 'a photo of a {}.' -> that concept's vector (+ a small
        template-dependent offset, as prompts move CLIP text embeddings a little)."""
        parts = [(t.split("{}")[0], t.split("{}")[1]) for t in templates]
        offsets = _l2(np.random.default_rng([7, 7]).standard_normal((len(parts), DIM))) * 0.05

        def encode(texts: list[str]) -> np.ndarray:
            out = np.empty((len(texts), DIM), np.float32)
            for i, text in enumerate(texts):
                for j, (pre, suf) in enumerate(parts):
                    if text.startswith(pre) and text.endswith(suf):
                        c = text[len(pre):len(text) - len(suf)] if suf else text[len(pre):]
                        out[i] = _l2(self.concept_vector(c) + offsets[j])
                        break
                else:
                    out[i] = self.concept_vector(text)
            return out

        return encode

    def shard(self, shard: int, n: int, width: int, seed: int) -> dict[str, Any]:
        """Why: one shard's pairs, vectorised: keys (img2dataset's), captions, float16 unit embeddings."""
        rng = np.random.default_rng([seed, 2, shard])
        scene = rng.choice(SCENES, size=n, p=self.scene_p)
        topic = scene % len(self.members)
        k = rng.integers(3, 6, n)  # nouns shown
        pick = rng.random((n, 12)).argsort(axis=1)[:, :5]  # 5 distinct slots of the topic's 12 nouns (any 5, not the first)
        members = np.stack([self.members[t][:12] for t in range(len(self.members))])
        shown = members[topic[:, None], pick]  # [n, 5] noun ids
        stray = rng.random(n) < 0.2  # sometimes one noun of another topic
        shown[stray, 4] = rng.integers(0, len(self.nouns), int(stray.sum()))
        present = np.arange(5)[None, :] < k[:, None]
        present[stray, 4] = True
        pattern = rng.integers(0, len(PATTERNS), n)
        named = 1 + np.array(["{n2}" in p for p in PATTERNS])[pattern]  # the caption names the first 1-2 shown nouns
        nouns = _l2(np.einsum("nk,nkd->nd", present.astype(np.float64), self.noun_vec[shown]))
        style = _l2(rng.standard_normal((n, STYLE_DIMS)) @ self.style)
        img = _l2(0.55 * self.common + 0.45 * self.topics[topic] + 0.6 * nouns + 0.45 * self.scene_vec[scene]
                  + 0.35 * style + 0.1 * _l2(rng.standard_normal((n, DIM))))
        first_two = self.noun_vec[shown[:, :2]] * (np.arange(2)[None, :, None] < named[:, None, None])
        cap = _l2(0.6 * self.common + 0.8 * _l2(first_two.sum(1)) + 0.3 * _l2(rng.standard_normal((n, STYLE_DIMS)) @ self.style)
                  + 0.1 * _l2(rng.standard_normal((n, DIM))))
        a1, a2 = rng.integers(0, len(ADJECTIVES), (2, n))
        pp, vv = rng.integers(0, len(PREPOSITIONS), n), rng.integers(0, len(VERBS), n)
        topic_names = list(TOPICS)
        captions = []
        for i in range(n):  # string formatting only; every number above is vectorised
            captions.append(PATTERNS[pattern[i]].format(
                a1=ADJECTIVES[a1[i]], a2=ADJECTIVES[a2[i]], n1=self.nouns[shown[i, 0]], n2=self.nouns[shown[i, 1]],
                v=VERBS[vv[i]],
                p=PREPOSITIONS[pp[i]], t=topic_names[topic[i]]))
        order = rng.permutation(n)  # clip-retrieval's rows need not be in key order; the embed stage sorts
        keys = [f"{shard:05d}{j:0{width}d}" for j in order]
        return {"keys": keys, "captions": [captions[j] for j in order], "img": img[order].astype(np.float16),
                "txt": cap[order].astype(np.float16)}


def write_part(parts: Path, world: "World", s: int, m: int, shard_size: int, key: str, seed: int = 0) -> None:
    """Why: shard `s`'s `m` synthetic pairs as the finished clip-retrieval part the embed stage assembles."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cocu_core.data.shards import shard_name
    from cocu_core.io import write_json_atomic

    d = world.shard(s, m, max(1, int(np.ceil(np.log10(shard_size)))), seed)
    part = parts / shard_name(s)
    for sub in ("img_emb", "text_emb", "metadata"):
        (part / sub).mkdir(parents=True, exist_ok=True)
    np.save(part / "img_emb" / "img_emb_0.npy", d["img"])
    np.save(part / "text_emb" / "text_emb_0.npy", d["txt"])
    pq.write_table(pa.table({"image_path": d["keys"], "caption": d["captions"],
                             "url": [f"https://example.org/{k}.jpg" for k in d["keys"]], "key": d["keys"],
                             "sample_id": [f"{s * shard_size + int(k[5:]):09d}" for k in d["keys"]]}),
                   part / "metadata" / "metadata_0.parquet")
    write_json_atomic(part / "done.json", {"part_key": key, "shard": shard_name(s)})


def write_corpus(root: Path, n: int, shard_size: int, cfg, seed: int = 0,
                 clip_model: str = "synthetic:clip-like-512", encoder_fp: str = "synthetic-clip-0") -> dict[str, Any]:
    """Why: a finished download manifest and one finished clip-retrieval part per shard, in the real layout, so the
    embed stage only assembles (its inference is what a GPU does; here it is simulated)."""

    from cocu_core.stages.embed import part_key_for
    from cocu_core.io import write_manifest

    world = World(seed)
    dl, parts = root / "download", root / "embed" / "parts"
    n_shards = -(-n // shard_size)
    write_manifest(dl, "download", f"synthetic-{n}-{shard_size}-{seed}", {}, {"success": n, "input": n},
                   {"n_shards": n_shards})
    key = part_key_for(root / "download", encoder_fp, cfg)
    for s in range(n_shards):
        write_part(parts, world, s, min(shard_size, n - s * shard_size), shard_size, key, seed)
    classes = root / "voc_class_names.txt"
    classes.write_text("\n".join(VOC_NAMES) + "\n")
    return {"shards": n_shards, "clip_model": clip_model, "encoder_fp": encoder_fp}


def bench_config(root: Path, n: int, recall_sample: int = 500, index: Optional[dict[str, Any]] = None):
    """Why: the pipeline config of a run: the paper's curation settings; the index section as given."""
    from cocu_core.config import config_from_dict

    return config_from_dict({
        "name": f"scale-{n}", "workdir": str(root),
        "data": {"source": "toyworld"},
        "index": {"max_index_memory_usage": "2G", "current_memory_available": "6G", "recall_sample": recall_sample,
                  "recall_k": 8, **(index or {})},
        "curation": {"variant": "cocu", "n_neighbours": 8, "batch_size": 4096, "vocab_size": 2000},
        "eval": {"class_names": str(root / "voc_class_names.txt")},
    }, "<bench_scale>")


def neighbour_profile(x: np.ndarray, queries: int = 500, k: int = 8, seed: int = 0) -> dict[str, float]:
    """Why: what makes a corpus hard or easy for approximate search: how close the 1st and k-th neighbours are, how
    similar random pairs are, and the TwoNN intrinsic dimension (Facco et al. 2017: d = 1 / mean log(r2 / r1))."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(x), size=min(queries, len(x)), replace=False)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    sim, ids = flat.search(x[rows], k + 1)
    keep = ids != rows[:, None]
    sim = np.stack([s[m][:k] for s, m in zip(sim, keep)])
    r = np.sqrt(np.clip(2 - 2 * sim[:, :2], 0, None))
    ok = r[:, 0] > 1e-6
    pairs = rng.integers(0, len(x), (2000, 2))
    rand = np.einsum("nd,nd->n", x[pairs[:, 0]], x[pairs[:, 1]])
    return {"rows": len(x), "dim": x.shape[1], "nn1_median": float(np.median(sim[:, 0])),
            f"nn{k}_median": float(np.median(sim[:, k - 1])), "random_pair_median": float(np.median(rand)),
            "gap_nn1_random": float(np.median(sim[:, 0]) - np.median(rand)),
            "twonn_dim": float(1.0 / np.mean(np.log(r[ok, 1] / r[ok, 0]))), "duplicates": float(1 - ok.mean())}


def resemblance(embed_dir: Path) -> str:
    """Why: the synthetic corpus's neighbour structure beside real encoder embeddings of the same number of rows."""
    from cocu_core.embeddings.store import open_npy

    real = np.asarray(open_npy(Path(embed_dir) / "img_emb.npy"), np.float32)
    synth = World(0).shard(0, len(real), 9, 0)["img"].astype(np.float32)
    lines = [f"| corpus | {' | '.join(neighbour_profile(real))} |"]
    lines.append("|---|" + "---|" * len(neighbour_profile(real)))
    for name, x in ((f"encoder embeddings ({embed_dir})", real), ("synthetic (bench_scale World)", synth)):
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v)
                                                 for v in neighbour_profile(x).values()) + " |")
    return "\n".join(lines)


class PeakSampler:
    """Why: peak anonymous RSS of this process (the kernel tracks only the peak of all resident pages)."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak_anon, self._stop = every, 0, threading.Event()

    @staticmethod
    def status() -> dict[str, int]:
        out = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("RssAnon", "RssFile", "VmHWM", "VmRSS"):
                out[k] = int(v.split()[0]) * 1024
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_anon = max(self.peak_anon, self.status()["RssAnon"])
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakSampler":
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *a: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak_anon = max(self.peak_anon, self.status()["RssAnon"])


def run_stage(stage: str, root: Path, n: int) -> dict[str, Any]:
    """Why: one stage through the real cocu_core function, in this (fresh) process, with its peak memory."""
    import torch

    torch.set_num_threads(2)
    cfg = bench_config(root, n, index=BENCH_INDEX)
    w = cfg.workpath
    out: dict[str, Any] = {"stage": stage}
    base = PeakSampler.status()
    t0 = time.time()
    with PeakSampler() as ps:
        if stage == "write":
            out.update(write_corpus(w, n, int(os.environ.get("BENCH_SHARD_SIZE", "10000")), cfg))
        elif stage == "embed":
            from cocu_core.stages.embed import embed_stage

            out.update(embed_stage(w / "download", w / "embed", cfg, "synthetic:clip-like-512", "synthetic-clip-0",
                                   progress=False))
        elif stage == "vocabulary":
            from cocu_core.stages.vocabulary import vocabulary_stage

            out.update({k: v for k, v in vocabulary_stage(w / "embed", w / "vocabulary", cfg).items() if k != "top"})
        elif stage == "index":
            from cocu_core.stages.index import index_stage

            rep = index_stage(w / "embed", w / "index", cfg)
            out.update({f"{k}_{name}": v for name, r in rep.items() if isinstance(r, dict) for k, v in r.items()})
        elif stage in ("curate", "inputs", "curate-sample"):
            out.update(_curate(cfg, only_inputs=stage == "inputs",
                               sample=int(os.environ.get("BENCH_SAMPLE_SHARDS", "8")) if stage == "curate-sample" else 0))
        else:
            raise SystemExit(f"unknown stage {stage}")
    st = PeakSampler.status()
    ru = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    out.update({"seconds": round(time.time() - t0, 2), "cpu_seconds": round(sum(r.ru_utime + r.ru_stime for r in ru), 2),
                "peak_anon": ps.peak_anon, "start_anon": base["RssAnon"], "vm_hwm": st["VmHWM"]})
    return out


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _curate(cfg, only_inputs: bool, sample: int = 0) -> dict[str, Any]:
    """Why: the curate stage's work (concept embeddings, curation inputs, every shard's archive); with `sample` > 0,
    only that many shards spread over the corpus, into `curate_sample/` (the stage's own archives stay untouched),
    to measure per-image cost and memory at a size whose full stage takes long."""
    from cocu_core.curation.data import load_curation_data, shard_names
    from cocu_core.layout import stage_dir
    from cocu_core.stages.concepts import concepts_stage
    from cocu_core.stages.curate import curate_shard_stage, curation_upstream_fp
    from cocu_core.index import load_index

    w = cfg.workpath
    world = World(0)
    t0 = time.time()
    emb, _ = concepts_stage(w / "vocabulary", w / "concept_emb", cfg, "synthetic-clip-0",
                                      world.encode_text_fn(cfg.encoder.templates))
    data = load_curation_data(w / "embed", w / "vocabulary", emb, cfg.curation.max_ngram)
    inputs_s = time.time() - t0
    if only_inputs:
        return {"inputs_seconds": round(inputs_s, 2), "concepts": len(data.concepts)}
    upstream = curation_upstream_fp(cfg, "synthetic-clip-0")
    index = load_index(w / "index", "image", embed_dir=w / "embed")  # variant cocu: only the image index is read
    names = list(shard_names(data))
    out_dir = stage_dir(cfg, "curate")
    if sample:
        names = [names[i] for i in np.linspace(0, len(names) - 1, min(sample, len(names))).round().astype(int)]
        out_dir = cfg.workpath / "curate_sample" / cfg.curation.variant
        import shutil

        shutil.rmtree(out_dir, ignore_errors=True)
    t1, c1 = time.time(), _cpu()
    res, shard_cpu = [], []
    for s in names:
        c = _cpu()
        res.append(curate_shard_stage(data, s, out_dir, cfg, upstream, "synthetic-clip-0", index, None))
        shard_cpu.append(round(_cpu() - c, 2))
    sizes = [r["mean_archive_size"] * r["images"] for r in res]
    computed = [r for r in res if not r.get("cached")]
    return {"inputs_seconds": round(inputs_s, 2), "curate_seconds": round(time.time() - t1, 2),
            "curate_cpu_seconds": round(_cpu() - c1, 2),
            "images": sum(r["images"] for r in res), "shards": len(res), "cached_shards": len(res) - len(computed),
            "computed_images": sum(r["images"] for r in computed),
            "shard_seconds": [round(r.get("seconds", 0), 2) for r in computed],
            # the first computed shard pays for paging the memory-mapped index in; the others are the steady state
            "shard_cpu_seconds": [c for c, r in zip(shard_cpu, res) if not r.get("cached")],
            "mean_archive_size": round(sum(sizes) / max(1, sum(r["images"] for r in res)), 2)}


CLIP_MODEL, ENCODER_FP = "synthetic:clip-like-512", "synthetic-clip-0"


def small_run(root: Path, n: int = 960, shard_size: int = 240, stages: Sequence[str] = ("embed", "index", "vocabulary"),
              encoder_fp: str = ENCODER_FP):
    """Why: tests build a few shards of the synthetic corpus through the real stages; returns (cfg, concept_emb)."""
    from cocu_core.stages.concepts import concepts_stage
    from cocu_core.stages.vocabulary import vocabulary_stage
    from cocu_core.stages.embed import embed_stage
    from cocu_core.stages.index import index_stage

    cfg = bench_config(root, n, recall_sample=100)
    write_corpus(root, n, shard_size, cfg, encoder_fp=encoder_fp)
    if "embed" in stages:
        embed_stage(root / "download", root / "embed", cfg, CLIP_MODEL, encoder_fp, progress=False)
    if "index" in stages:
        index_stage(root / "embed", root / "index", cfg)
    emb = None
    if "vocabulary" in stages:
        vocabulary_stage(root / "embed", root / "vocabulary", cfg)
        emb, _ = concepts_stage(root / "vocabulary", root / "concept_emb", cfg, encoder_fp,
                                          World(0).encode_text_fn(cfg.encoder.templates))
    return cfg, emb


def du(path: Path) -> int:
    """Why: bytes on disk of a folder (what a 27M run would need, scaled)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


STAGES = ("write", "embed", "vocabulary", "index", "inputs", "curate")


def run_all(root: Path, n: int, stages: Sequence[str]) -> list[dict[str, Any]]:
    """Why: each stage in its own process, so each peak belongs to that stage alone."""
    rows = []
    for stage in stages:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run-stage", stage, "--root", str(root), "--n", str(n)]
        t0 = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"stage {stage} failed:\n{p.stderr[-4000:]}")
        row = json.loads(p.stdout.strip().splitlines()[-1])
        row["process_seconds"] = round(time.time() - t0, 2)
        rows.append(row)
        with open(root / f"bench_scale_{n}.rows.jsonl", "a") as f:  # partial runs (--stages) accumulate here
            f.write(json.dumps(row, default=str) + "\n")
        detail = ""
        if stage == "index":
            detail = ", " + ", ".join(f"{k} {row.get(f'index_key_{k}')} ({row.get(f'index_param_{k}')}) built in "
                                      f"{row.get(f'build_seconds_{k}')} s, recall@8 {row.get(f'recall@8_{k}')}"
                                      for k in ("image", "caption"))
        elif stage in ("curate", SAMPLE):
            detail = (f", {row['computed_images']:,} images curated in {row['curate_cpu_seconds']} CPU s: "
                      f"{row['computed_images'] / max(row['curate_cpu_seconds'], 1e-9):,.0f} images per CPU s")
            steady = steady_rate(row)
            if steady:
                detail += f" ({steady:,.0f} after the first shard)"
        print(f"{stage}: {row['seconds']} s ({row.get('cpu_seconds')} s CPU), peak anon {row['peak_anon'] / 2**20:.0f} MiB, "
              f"VmHWM {row['vm_hwm'] / 2**20:.0f} MiB{detail}", flush=True)
    return rows


PAPER_PAIRS = 27_000_000
PARALLEL = {"index": True, "curate": True}  # faiss threads / one shard task per core; the other stages run in one process
SAMPLE = "curate-sample"  # not in STAGES: run on request (--stages curate-sample), a few shards of the curate stage
STAGE_DIRS = {"embed": ("embed", "embed/parts"), "vocabulary": ("vocabulary",), "index": ("index",),
              "inputs": ("curation_inputs",), "curate": ("curate",)}


def load_run(f: Path) -> dict[str, Any]:
    """Why: a finished run's JSON, or the rows file of a partial one (the latest row per stage; disk measured now,
    from its folder, for the stages it holds: a stage that did not finish has no row, so no size)."""
    f = Path(f)
    if not f.name.endswith(".rows.jsonl"):
        return json.loads(f.read_text())
    latest: dict[str, Any] = {}
    for line in f.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            latest[r["stage"]] = r
    disk = {d: du(f.parent / d) for st, dirs in STAGE_DIRS.items() if st in latest for d in dirs}
    return {"n": int(f.name[len("bench_scale_"):-len(".rows.jsonl")]), "disk": disk, "partial": True,
            "rows": [latest[st] for st in (*STAGES, SAMPLE) if st in latest]}


def merge_runs(files: Sequence[Path]) -> list[dict[str, Any]]:
    """Why: stages of one size measured in separate invocations (or folders) make one column; a later file wins."""
    by_n: dict[int, dict[str, Any]] = {}
    for f in files:
        r = load_run(f)
        m = by_n.setdefault(r["n"], {"n": r["n"], "rows": {}, "disk": {}})
        m["rows"].update({x["stage"]: x for x in r["rows"]})
        m["disk"].update(r.get("disk", {}))
    return [by_n[n] for n in sorted(by_n)]


def steady_rate(row: dict[str, Any]) -> Optional[float]:
    """Why: images per CPU s of the shards after the first (which pages the memory-mapped index in), when recorded."""
    cpu = row.get("shard_cpu_seconds") or []
    if len(cpu) < 2 or row.get("cached_shards"):
        return None
    return row["computed_images"] * (len(cpu) - 1) / len(cpu) / max(sum(cpu[1:]), 1e-9)


def stage_cost(stage: str, row: dict[str, Any], n: int) -> tuple[float, float, int]:
    """Why: (wall s, CPU s, pairs) a stage row stands for: the sample counts its shard loop over its own images; a
    resumed curate stage only the images it computed (cached shards cost nothing)."""
    if stage == SAMPLE:
        cpu = row.get("shard_cpu_seconds") or []
        if steady_rate(row):  # the first shard's index page-in is once per process, not per image: left out
            k = len(cpu)
            return sum(row["shard_seconds"][1:]), sum(cpu[1:]), row["computed_images"] * (k - 1) // k
        return row["curate_seconds"], row["curate_cpu_seconds"], row["computed_images"]
    pairs = row.get("computed_images", n) if stage == "curate" else n
    return row["seconds"], row["cpu_seconds"], pairs


def report(files: Sequence[Path]) -> str:
    """Why: the RESULTS.md table (CPU seconds: contention on shared cores moves wall time, not CPU time) and the
    extrapolation to the paper's 27M pairs. Stages a run lacks are shown as not measured, never filled in."""
    runs = merge_runs(files)
    lines = ["| stage | " + " | ".join(f"{r['n']:,} pairs: wall s / CPU s / pairs per CPU s / peak anon MiB"
                                       for r in runs) + " | CPU per pair, largest / smallest size measured |",
             "|---|" + "---|" * (len(runs) + 1)]
    per: dict[str, list[tuple[int, float]]] = {}  # stage -> [(n, CPU s per pair)], ascending n
    for stage in (*STAGES, SAMPLE):
        if not any(stage in r["rows"] for r in runs):
            continue
        cells = []
        for r in runs:
            row = r["rows"].get(stage)
            if row is None:
                cells.append("not measured")
                continue
            wall, cpu, pairs = stage_cost(stage, row, r["n"])
            per.setdefault(stage, []).append((r["n"], cpu / pairs))
            extra = ""
            if stage == SAMPLE:
                extra = (f" ({row['shards'] - 1} shards after the first of {row['shards']} spread over the corpus)"
                         if steady_rate(row) else f" ({row['shards']} shards spread over the corpus)")
            cells.append(f"{wall:,.0f} / {cpu:,.0f} / {pairs / cpu:,.0f} / {row['peak_anon'] / 2**20:,.0f}{extra}")
        pts = per.get(stage, [])
        ratio = (f"{pts[-1][1] / pts[0][1]:.2f}x ({pts[-1][0]:,} / {pts[0][0]:,})" if len(pts) > 1 else "-")
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {ratio} |")
    lines += ["", f"Extrapolation to {PAPER_PAIRS / 1e6:.0f}M pairs: CPU seconds per pair at the largest size where the "
              "stage was measured x pairs; one-process stages run on one core whatever the machine, parallel stages "
              "on all cores:", "",
              "| stage | measured at | CPU hours | 2 cores, hours | 16-core node, hours |", "|---|---|---:|---:|---:|"]
    tot2 = tot16 = 0.0
    for stage in STAGES:
        if stage == "write" or stage not in per:
            continue
        n_at, cpu_pp = per[stage][-1]
        src = f"{n_at:,}"
        if stage == "curate" and SAMPLE in per and per[SAMPLE][-1][0] > n_at:  # a sample at a larger size wins
            n_at, cpu_pp = per[SAMPLE][-1]
            src = f"{n_at:,} (sample of shards; full stage measured at {per[stage][-1][0]:,})"
        cpu_h = cpu_pp * PAPER_PAIRS / 3600
        h2, h16 = (cpu_h / 2, cpu_h / 16) if PARALLEL.get(stage) else (cpu_h, cpu_h)
        tot2, tot16 = tot2 + h2, tot16 + h16
        lines.append(f"| {stage} | {src} | {cpu_h:.1f} | {h2:.1f} | {h16:.1f} |")
    lines.append(f"| **total** (after download and inference) | | | **{tot2:.1f}** | **{tot16:.1f}** |")
    disk: dict[str, tuple[int, float]] = {}  # name -> (size measured at, GiB at 27M)
    for r in runs:  # the largest size that measured each folder
        d = dict(r["disk"])
        if "embed" in d and "embed/parts" in d:
            d["embed"] -= d["embed/parts"]
        names = {"embed/parts": "clip-retrieval parts (float16)", "embed": "assembled embeddings + metadata"}
        for k, v in d.items():
            disk[names.get(k, k)] = (r["n"], v / r["n"] * PAPER_PAIRS / 2**30)
    lines += ["", "Disk at 27M pairs (bytes per pair measured x 27M, at the size in brackets): " + ", ".join(
        f"{k} {v:,.1f} GiB ({n_at:,})" for k, (n_at, v) in disk.items()) + "."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--root", type=Path, default=None, help="work folder (default /tmp/cocu_scale_<n>)")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--run-stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sample-shards", type=int, default=8, help=f"shards the {SAMPLE} stage curates")
    ap.add_argument("--fresh", action="store_true", help="empty the work folder first (otherwise finished stages "
                    "are cache hits and a rerun of a stage measures nothing)")
    ap.add_argument("--report", nargs="+", type=Path, default=None,
                    help="print the markdown table of result JSONs or rows files (bench_scale_<n>.rows.jsonl)")
    ap.add_argument("--resemblance", type=Path, default=None, metavar="EMBED_DIR",
                    help="print the neighbour structure of the synthetic corpus beside a real embed/ folder's")
    args = ap.parse_args(argv)
    if args.resemblance:
        print(resemblance(args.resemblance))
        return 0
    if args.report:
        print(report(args.report))
        return 0
    root = args.root or Path(f"/tmp/cocu_scale_{args.n}")
    if args.run_stage:
        print(json.dumps(run_stage(args.run_stage, root, args.n), default=str))
        return 0
    if args.fresh and root.exists():
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    os.environ["BENCH_SAMPLE_SHARDS"] = str(args.sample_shards)
    run_all(root, args.n, args.stages.split(","))
    out = root / f"bench_scale_{args.n}.json"
    res = load_run(root / f"bench_scale_{args.n}.rows.jsonl")
    res.pop("partial")
    if out.is_file():  # cumulative: rows and sizes an earlier result holds (a rows file started anew) are kept
        old = json.loads(out.read_text())
        rows = {r["stage"]: r for r in old.get("rows", [])} | {r["stage"]: r for r in res["rows"]}
        res["rows"] = [rows[st] for st in (*STAGES, SAMPLE) if st in rows]
        res["disk"] = {**old.get("disk", {}), **res["disk"]}
    res["cpus"] = os.cpu_count()
    out.write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
