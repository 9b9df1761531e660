"""Training batches for GroupViT: webdataset shards by random access, joined by key with a concept archive.

Inputs: the download stage's ``shards/NNNNN.tar`` (img2dataset: ``<key>.jpg``, ``<key>.txt``,
``<key>.json``) and, for every variant except ``baseline``, an archive folder (one Parquet per
shard, :class:`~cocu_core.curation.archive.ArchiveReader`). The tar headers are indexed once (member
-> byte offset and size; optionally cached beside in ``index_dir``), so a sample is two ``pread``
calls and no shard is ever streamed or held in memory.

Determinism: the epoch's order is a permutation seeded by (seed, epoch); the global batch is
``cfg.batch_size`` consecutive samples of it (the last incomplete one dropped) and rank r takes the
r-th contiguous slice. Everything random about one sample (crop, flips, RandAugment, erasing,
concept draws, templates) comes from a generator seeded by (seed, epoch, sample index), so batches
do not depend on worker count, process count or the step training resumed from.

Text inputs per image are ``[caption, p1 .. pK]``; each prompt is a concept wrapped in a template
drawn at random from ``cfg.templates``; missing prompts are the caption (GV's padding).
``baseline``: GV's own inputs, the caption's nouns (:mod:`cocu_core.train.nouns`), up to K without
replacement. ``v1``/``v2``/``v3``/``cocu``: concepts drawn from the archive by
:class:`~cocu_core.curation.sampling.ConceptSampler` (the archive's ``k_sample`` and
``naive_sampling``), anew every epoch. ``topk-release``: the K best archive concepts by score
(the CoCu authors' release), the same every epoch. ``oracle``: K of the image's ground-truth concepts
(the toy world's oracle archive, :mod:`cocu_core.toyworld.oracle`), uniformly without replacement,
anew every epoch.

A sample that cannot be used is never fatal: no archive row or no image member is left out when
indexing (``skipped_at_index``); an undecodable image is dropped from its batch and counted
(``TrainBatch.skipped``), so a rank's local batch may be smaller than ``batch_size / world_size``
(the losses handle unequal local batches).
"""

from __future__ import annotations

import io
import os
import random
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

import cocu_core.compat
from cocu_core.config import CURATION_VARIANTS, TRAIN_VARIANTS, CurationConfig, TrainConfig
from cocu_core.errors import CocuError
from cocu_core.io import parquet_metadata, parquet_schema_version, write_parquet_atomic
from cocu_core.templates import get_templates
from cocu_core.train.nouns import caption_nouns
from cocu_core.train.tokens import TextTokens

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
ARCHIVE_VARIANTS = tuple(v for v in CURATION_VARIANTS if v != "baseline")  # the curated variants with archives
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_ORDER_STREAM = 0x0D0E  # separates the epoch-order seed from per-sample seeds
_MAX_OPEN = 64  # tar file descriptors kept open per process
INDEX_VERSION = 1
INDEX_SCHEMA = pa.schema([
    ("key", pa.string()), ("img_off", pa.int64()), ("img_len", pa.int64()),
    ("txt_off", pa.int64()), ("txt_len", pa.int64()),
])


class TrainDataError(ValueError, CocuError):
    """Training inputs that cannot be used: the message names the folder or file and what was expected."""


@dataclass
class TrainBatch:
    """This rank's slice of one global batch; broken samples already removed and counted."""

    images: torch.Tensor  # (B, 3, H, W) float, normalised
    texts: list[list[str]]  # per image: [caption, p1 .. pK]
    keys: list[str]
    skipped: dict[str, int] = field(default_factory=dict)  # e.g. {"corrupt_image": 1}
    step: int = -1  # the step (within the epoch) this batch is
    tokens: Optional[torch.Tensor] = None  # (B, 1 + K, context_length) int64 CLIP ids of `texts` (with a context length)

    def __len__(self) -> int:
        return len(self.keys)

    def pin_memory(self) -> "TrainBatch":
        """Why: lets a DataLoader with pin_memory=True (CUDA) pin the images and token ids."""
        self.images = self.images.pin_memory()
        if self.tokens is not None:
            self.tokens = self.tokens.pin_memory()
        return self


# --- shard index ----------------------------------------------------------------------------------

def index_tar(path: Path) -> pa.Table:
    """Why: one pass over a tar's headers gives every sample's image and caption byte ranges."""
    rows: dict[str, list[int]] = {}
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                head, _, base = m.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if not dot or base.startswith("."):
                    continue
                ext = ext.lower()
                slot = 0 if ext in IMAGE_EXTS else 2 if ext == "txt" else -1
                if slot < 0:
                    continue
                r = rows.setdefault(f"{head}/{stem}" if head else stem, [-1, -1, -1, -1])
                r[slot], r[slot + 1] = m.offset_data, m.size
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise TrainDataError(f"{path}: not a readable tar shard ({exc})") from None
    arr = np.array(list(rows.values()), np.int64).reshape(-1, 4)
    return pa.table({"key": pa.array(list(rows), pa.string()), "img_off": arr[:, 0], "img_len": arr[:, 1],
                     "txt_off": arr[:, 2], "txt_len": arr[:, 3]}, schema=INDEX_SCHEMA)


def _cached_index(tar: Path, index_dir: Optional[Path]) -> pa.Table:
    """Why: re-indexing thousands of shards costs minutes; a cached index is valid while the tar is unchanged."""
    if index_dir is None:
        return index_tar(tar)
    st = tar.stat()
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    cache = Path(index_dir) / f"{tar.stem}.index.parquet"
    if cache.is_file():
        try:
            if parquet_schema_version(cache) == INDEX_VERSION and parquet_metadata(cache).get("tar_stamp") == stamp:
                return pq.read_table(cache, schema=INDEX_SCHEMA)
        except (OSError, pa.ArrowException, ValueError):
            pass  # unreadable cache: rebuild it
    table = index_tar(tar)
    write_parquet_atomic(cache, table, INDEX_SCHEMA, INDEX_VERSION, {"tar_stamp": stamp, "tar": tar.name})
    return table


@dataclass
class ShardIndex:
    """Column arrays over every sample of every shard (row i = sample i)."""

    tars: list[Path]
    keys: np.ndarray  # str
    shard: np.ndarray  # int32 position in `tars`
    img_off: np.ndarray
    img_len: np.ndarray
    txt_off: np.ndarray
    txt_len: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, rows: np.ndarray) -> "ShardIndex":
        """Why: the joined sample set keeps only some rows."""
        return ShardIndex(self.tars, self.keys[rows], self.shard[rows], self.img_off[rows], self.img_len[rows],
                          self.txt_off[rows], self.txt_len[rows])


def index_shards(shards_dir: str | Path, index_dir: Optional[str | Path] = None) -> ShardIndex:
    """Why: random access to any sample of the download stage's shards, without reading image bytes."""
    d = Path(shards_dir)
    if not d.is_dir():
        raise TrainDataError(f"shard folder not found: {d} (expected the download stage's shards/NNNNN.tar)")
    tars = sorted(p for p in d.glob("*.tar") if not p.name.startswith("."))
    if not tars:
        raise TrainDataError(f"no webdataset shards (*.tar) in {d}; run the download stage first")
    tables = [_cached_index(t, Path(index_dir) if index_dir else None) for t in tars]
    shard = np.concatenate([np.full(t.num_rows, i, np.int32) for i, t in enumerate(tables)])
    table = pa.concat_tables(tables)
    if table.num_rows == 0:
        raise TrainDataError(f"the shards in {d} hold no samples ({len(tars)} tar files, all empty)")
    counts = pc.value_counts(table.column("key"))
    dup = counts.filter(pc.greater(counts.field("counts"), 1)).field("values").to_pylist()
    if dup:
        raise TrainDataError(f"sample keys repeat across the shards in {d}: {dup[:5]}")
    col = {n: table.column(n).to_numpy() for n in ("img_off", "img_len", "txt_off", "txt_len")}
    keys = np.asarray(table.column("key").to_pylist(), dtype=str)
    return ShardIndex(tars, keys, shard, col["img_off"], col["img_len"], col["txt_off"], col["txt_len"])


# --- per-sample work ------------------------------------------------------------------------------

def build_transform(augment: str, image_size: int, cfg: TrainConfig):
    """Why: GV's DeiT training transform, or a lighter one, mapping a PIL image to a normalised tensor."""
    cocu_core.compat.ensure_torchvision()
    from torchvision import transforms as T

    interp = T.InterpolationMode.BILINEAR
    norm = [ToNormalized()]
    if augment == "deit":
        from timm.data import create_transform

        aa = cfg.rand_augment if cfg.rand_augment and cfg.rand_augment.lower() != "none" else None
        tf = create_transform(input_size=image_size, is_training=True, scale=tuple(cfg.crop_scale),
                              interpolation="bilinear", color_jitter=0.4, auto_augment=aa,
                              re_prob=cfg.random_erasing, re_mode="pixel", re_count=1,
                              mean=IMAGENET_MEAN, std=IMAGENET_STD)
        _patch_posterize(tf)
        _fuse_normalize(tf)
        return tf
    if augment == "crop_flip":
        return T.Compose([T.RandomResizedCrop(image_size, scale=tuple(cfg.crop_scale), interpolation=interp),
                          T.RandomHorizontalFlip(), *norm])
    if augment == "none":
        return T.Compose([T.Resize(image_size, interpolation=interp), T.CenterCrop(image_size), *norm])
    raise TrainDataError(f"train.augment {augment!r}: expected 'deit', 'crop_flip' or 'none'")


class ToNormalized:
    """PIL RGB -> (3, H, W) float32 normalised by ImageNet's mean and std in one pass (ToTensor + Normalize
    convert through a non-contiguous float copy and cost twice as much; the values agree to 1 ulp)."""

    def __init__(self):
        self.shift = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
        self.scale = 1 / (torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255)

    def __call__(self, img) -> torch.Tensor:
        a = np.asarray(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)
        out = torch.empty((3, *a.shape[:2]), dtype=torch.float32)
        out.copy_(torch.from_numpy(a.transpose(2, 0, 1).copy()))
        return out.sub_(self.shift).mul_(self.scale)

    def __repr__(self) -> str:
        return "ToNormalized(ImageNet mean, std)"


def _fuse_normalize(transform) -> None:
    """Why: timm's DeiT transform ends MaybeToTensor, Normalize(ImageNet), RandomErasing: the first two become one
    ToNormalized (erasing still sees the normalised tensor, as in GV)."""
    ts = getattr(transform, "transforms", [])
    for i in range(len(ts) - 1):
        a, b = ts[i], ts[i + 1]
        if type(a).__name__ in ("MaybeToTensor", "ToTensor") and type(b).__name__ == "Normalize":
            mean, std = torch.as_tensor(b.mean).flatten().tolist(), torch.as_tensor(b.std).flatten().tolist()
            if np.allclose(mean, IMAGENET_MEAN) and np.allclose(std, IMAGENET_STD):
                ts[i:i + 2] = [ToNormalized()]
            return


def posterize_compat(img, bits_to_keep: int, **_):
    """Why: timm's PosterizeIncreasing asks for 0 bits at full magnitude (m9 + noise reaches it), which
    Pillow >= 10 refuses with a ValueError; the Pillow GV trained with returned a black image."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(transform) -> None:
    """Why: give this transform's RandAugment posterize ops the old Pillow behaviour (see posterize_compat)."""
    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if "Posterize" in getattr(op, "name", ""):
                op.aug_fn = posterize_compat


class PromptMaker:
    """The K prompts of one image for one variant, from the caption or its archive entry."""

    def __init__(self, variant: str, k: int, templates: Sequence[str], sampler=None):
        self.variant, self.k, self.templates, self.sampler = variant, k, tuple(templates), sampler

    def candidates(self, caption: str, entry) -> list[str]:
        """Why: what an image's prompts are drawn from (caption nouns for baseline, else its archive concepts);
        fixed per image, so a report over many epochs computes it once."""
        if self.variant == "baseline":
            return caption_nouns(caption)
        return list(entry.concepts) if entry is not None else []

    def pick(self, candidates: Sequence[str], entry, rng: np.random.Generator) -> np.ndarray:
        """Why: the positions into `candidates` one step trains on (at most K, in draw order): the only
        random part of an image's concepts."""
        n = len(candidates)
        if n == 0:
            return np.empty(0, np.int64)
        if self.variant in ("baseline", "oracle"):
            return np.asarray(rng.choice(n, min(self.k, n), replace=False), np.int64)
        if self.variant == "topk-release":
            return np.lexsort((entry.concept_ids, -np.asarray(entry.scores)))[: self.k]
        return np.asarray(self.sampler.sample_indices(entry, rng), np.int64)[: self.k]

    def concepts(self, caption: str, entry, rng: np.random.Generator) -> list[str]:
        """Why: the (at most K) words or concepts this step trains on, in draw order."""
        words = self.candidates(caption, entry)
        return [words[i] for i in self.pick(words, entry, rng)]

    def draw(self, caption: str, entry, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
        """Why: the random part of an image's prompts, (concepts, template positions): tokens and strings follow."""
        names = self.concepts(caption, entry, rng)
        return names, rng.integers(len(self.templates), size=len(names))

    def texts(self, caption: str, names: Sequence[str], which: np.ndarray) -> list[str]:
        """Why: ``[caption, p1 .. pK]``: each concept in its drawn template, the caption padding the rest."""
        prompts = [self.templates[t].replace("{}", n) for t, n in zip(which, names)]
        return [caption, *prompts, *[caption] * (self.k - len(prompts))]

    def __call__(self, caption: str, entry, rng: np.random.Generator) -> list[str]:
        """Why: ``[caption, p1 .. pK]``: one random template per concept, the caption padding the rest."""
        return self.texts(caption, *self.draw(caption, entry, rng))


def decode_image(data: bytes, min_pixels: int = 0, min_side: int = 0):
    """Why: an RGB PIL image; a JPEG larger than the transform needs is decoded at a DCT-reduced scale (draft),
    kept at least `min_pixels` in area and `min_side` on its short side, so no crop is upsampled that the full
    decode would not have upsampled."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG" and (min_pixels or min_side):
        w, h = img.size
        f = max((min_pixels / (w * h)) ** 0.5 if min_pixels else 0.0, min_side / min(w, h) if min_side else 0.0)
        if f < 0.5:  # draft only ever halves (1/2, 1/4, 1/8): smaller requests are no-ops
            img.draft("RGB", (int(np.ceil(w * f)), int(np.ceil(h * f))))
    img.load()  # decode now: a corrupt or truncated file fails here, inside the caller's try
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_need(augment: str, image_size: int, crop_scale: Sequence[float]) -> tuple[int, int]:
    """Why: the least (area, short side) a decoded image must keep: a random crop of the smallest area and
    narrowest aspect (3/4) must still cover `image_size` pixels, and a resize-only transform its short side."""
    if augment == "none":
        return 0, image_size
    return int(np.ceil(image_size ** 2 / (max(crop_scale[0], 1e-6) * 0.75))), 0


@dataclass
class _Broken:
    reason: str
    key: str
    step: int


class _Samples(torch.utils.data.Dataset):
    """Map-style dataset: item (epoch, step, i) -> one augmented image with its texts, or a _Broken."""

    def __init__(self, index: ShardIndex, archive, prompts: PromptMaker, transform, seed: int, rngs: str = "all",
                 tokens: Optional[TextTokens] = None, need: tuple[int, int] = (0, 0)):
        self.index, self.archive, self.rngs, self.tokens, self.need = index, archive, rngs, tokens, need
        self.prompts, self.transform, self.seed = prompts, transform, seed & 0xFFFF_FFFF_FFFF_FFFF
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def close(self) -> None:
        """Why: release this process's tar descriptors (a forked worker's copies are not ours to close)."""
        if os.getpid() == self._pid:
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _read(self, shard: int, off: int, n: int) -> bytes:
        if os.getpid() != self._pid:  # a forked worker must not share the parent's descriptors
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.pop(shard, None)
        if fd is None:
            if len(self._fds) >= _MAX_OPEN:
                os.close(self._fds.pop(next(iter(self._fds))))
            fd = os.open(self.index.tars[shard], os.O_RDONLY)
        self._fds[shard] = fd  # most recently used last
        data = os.pread(fd, n, off)
        if len(data) != n:
            raise OSError(f"short read: {len(data)} of {n} bytes")
        return data

    def caption(self, i: int, entry) -> str:
        """Why: the shard's own caption; the archive's copy only where the shard has no text member."""
        ix = self.index
        if ix.txt_off[i] >= 0:
            return self._read(int(ix.shard[i]), int(ix.txt_off[i]), int(ix.txt_len[i])).decode("utf-8", "replace")
        return entry.caption if entry is not None else ""

    def entry(self, i: int):
        """Why: the sample's archive row (None without an archive)."""
        return self.archive.get(str(self.index.keys[i])) if self.archive is not None else None

    def sample_seeds(self, epoch: int, i: int) -> tuple[int, np.random.Generator]:
        """Why: one sample's augmentation seed and text generator depend on (seed, epoch, sample) only."""
        s = np.random.SeedSequence([self.seed, epoch, i]).generate_state(2, np.uint64)
        return int(s[0]), np.random.default_rng(int(s[1]))

    def _augment(self, img, aug_seed: int) -> torch.Tensor:
        """Why: torchvision/timm draw from the global python, numpy and torch generators: seed the ones this
        transform uses per sample (and, in the training process itself, put them back afterwards so the
        model's own randomness is untouched)."""
        if self.rngs == "none":
            return self.transform(img)
        full = self.rngs == "all"
        main = torch.utils.data.get_worker_info() is None
        saved_torch = torch.default_generator.get_state() if main else None
        saved_py = (random.getstate(), np.random.get_state()) if main and full else None
        torch.default_generator.manual_seed(aug_seed)
        if full:
            random.seed(aug_seed)
            np.random.seed(aug_seed & 0xFFFF_FFFF)
        try:
            return self.transform(img)
        finally:
            if saved_torch is not None:
                torch.default_generator.set_state(saved_torch)
            if saved_py is not None:
                random.setstate(saved_py[0])
                np.random.set_state(saved_py[1])

    def token_rows(self, caption: str, names: Sequence[str], which: np.ndarray) -> np.ndarray:
        """Why: the (1 + K, L) ids of ``[caption, p1 .. pK]``: the caption tokenized once (it pads too), the
        prompts from the (template, concept) cache."""
        cap = self.tokens.text(caption)
        rows = [cap, *(self.tokens.prompt(int(t), n) for t, n in zip(which, names))]
        return np.stack(rows + [cap] * (self.prompts.k - len(names)))

    def __getitem__(self, item: tuple[int, int, int]):
        epoch, step, i = item
        ix = self.index
        key = str(ix.keys[i])
        entry = self.entry(i)
        aug_seed, rng = self.sample_seeds(epoch, i)
        try:
            caption = self.caption(i, entry)
            img = decode_image(self._read(int(ix.shard[i]), int(ix.img_off[i]), int(ix.img_len[i])), *self.need)
        except Exception:  # noqa: BLE001 - any undecodable or unreadable image is a counted skip
            return _Broken("corrupt_image", key, step)
        names, which = self.prompts.draw(caption, entry, rng)
        out = {"texts": self.prompts.texts(caption, names, which), "key": key, "step": step}
        if self.tokens is not None:
            out["tokens"] = self.token_rows(caption, names, which)
        try:
            out["image"] = self._augment(img, aug_seed)
        except Exception:  # noqa: BLE001 - a library failing on one image must not end the epoch; counted
            return _Broken("augment_error", key, step)
        return out


class _Collate:
    """Stack the good samples; count the broken ones by reason."""

    def __init__(self, image_size: int, token_shape: Optional[tuple[int, int]] = None):
        self.image_size, self.token_shape = image_size, token_shape

    def __call__(self, items: list) -> TrainBatch:
        good = [x for x in items if not isinstance(x, _Broken)]
        skipped = dict(Counter(x.reason for x in items if isinstance(x, _Broken)))
        s = self.image_size
        images = torch.stack([x["image"] for x in good]) if good else torch.empty(0, 3, s, s)
        tokens = None
        if self.token_shape is not None:
            tokens = (torch.from_numpy(np.stack([x["tokens"] for x in good])) if good
                      else torch.empty(0, *self.token_shape, dtype=torch.int64))
        step = items[0]["step"] if isinstance(items[0], dict) else items[0].step
        return TrainBatch(images=images, texts=[x["texts"] for x in good], keys=[x["key"] for x in good],
                          skipped=skipped, step=step, tokens=tokens)


class _StepBatches:
    """Batch sampler: this rank's slice of each global batch from `start` on, as (epoch, step, i) items."""

    def __init__(self, order: np.ndarray, epoch: int, start: int, steps: int, global_batch: int, rank: int, world: int):
        self.order, self.epoch, self.start, self.steps = order, epoch, start, steps
        self.b, self.lo = global_batch, rank * (global_batch // world)
        self.hi = self.lo + global_batch // world

    def move(self, order: np.ndarray, epoch: int, start: int) -> None:
        """Why: one persistent loader serves every epoch; its sampler is pointed at the next epoch in place."""
        self.order, self.epoch, self.start = order, epoch, start

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for s in range(self.start, self.steps):
            rows = self.order[s * self.b + self.lo: s * self.b + self.hi]
            yield [(self.epoch, s, int(i)) for i in rows]


def _worker_init(_: int) -> None:
    """Why: each loader worker decodes on one thread; many threads per worker oversubscribe the cores."""
    torch.set_num_threads(1)


def resolve_workers(requested: int, processes: int = 1) -> int:
    """Why: -1 (auto) gives each training process the cores it may use (os.sched_getaffinity), less one for
    itself; 0 decodes in the training process."""
    if requested >= 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, processes) - 1)


# --- the public loader ----------------------------------------------------------------------------

class TrainData:
    """Deterministic, resumable training batches for one rank, for one variant's text inputs."""

    def __init__(self, shards_dir: str | Path, archive_dir: Optional[str | Path], variant: str, image_size: int,
                 cfg: TrainConfig, rank: int = 0, world_size: int = 1,
                 k_sample_cfg: Optional[CurationConfig] = None, index_dir: Optional[str | Path] = None,
                 context_length: Optional[int] = None, pin_memory: bool = False):
        if variant not in TRAIN_VARIANTS:
            raise TrainDataError(f"train variant {variant!r}: expected one of {list(TRAIN_VARIANTS)}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise TrainDataError(f"rank {rank} is not in a world of {world_size} processes")
        if cfg.batch_size % world_size:
            raise TrainDataError(f"train.batch_size {cfg.batch_size} is not divisible by {world_size} processes")
        if image_size < 1:
            raise TrainDataError(f"image size must be >= 1, got {image_size}")
        if archive_dir is None and variant != "baseline":
            raise TrainDataError(f"train variant {variant!r} needs a concept archive folder (only 'baseline' runs without)")
        self.variant, self.image_size, self.cfg = variant, image_size, cfg
        self.rank, self.world_size = rank, world_size
        self.global_batch, self.local_batch = cfg.batch_size, cfg.batch_size // world_size

        index = index_shards(shards_dir, index_dir)
        self.skipped_at_index: dict[str, int] = {}
        archive, sampler = None, None
        if archive_dir is not None:
            archive = self._open_archive(Path(archive_dir), variant)
            found = pc.is_in(pa.array(index.keys), value_set=archive.table.column("key")).to_numpy(zero_copy_only=False)
            if not found.any():
                ak = archive.table.column("key").slice(0, 3).to_pylist()
                raise TrainDataError(
                    f"none of the {len(archive)} keys of the archive in {archive_dir} (e.g. {ak}) is a sample of the "
                    f"shards in {shards_dir} (e.g. {index.keys[:3].tolist()}): archive and shards are from different runs")
            self.skipped_at_index["no_archive_row"] = int((~found).sum())
            index = index.take(np.flatnonzero(found))
            if variant in ARCHIVE_VARIANTS:
                meta = archive.config or {}
                src = k_sample_cfg.model_dump() if k_sample_cfg is not None else meta
                from cocu_core.curation.sampling import ConceptSampler

                k = min(int(src.get("k_sample", cfg.k_prompts)), cfg.k_prompts)
                sampler = ConceptSampler(variant, k=k, seed=cfg.seed, naive_sampling=src.get("naive_sampling", "topk"))
        no_image = index.img_off < 0
        no_text = (index.txt_off < 0) if archive is None else np.zeros(len(index), bool)
        drop = no_image | no_text
        if no_image.any():
            self.skipped_at_index["missing_image"] = int(no_image.sum())
        if no_text.any():
            self.skipped_at_index["missing_caption"] = int(no_text.sum())
        if drop.any():
            index = index.take(np.flatnonzero(~drop))
        self.n_samples = len(index)
        self.steps_per_epoch = self.n_samples // self.global_batch
        if self.steps_per_epoch == 0:
            raise TrainDataError(f"{self.n_samples} usable samples in {shards_dir}, fewer than one global batch of "
                                 f"{self.global_batch} (train.batch_size)")
        templates = get_templates(cfg.templates)
        prompts = PromptMaker(variant, cfg.k_prompts, templates, sampler)
        rngs = {"deit": "all", "crop_flip": "torch", "none": "none"}[cfg.augment]  # generators each transform draws from
        tokens = TextTokens(templates, context_length) if context_length else None
        self._token_shape = (cfg.k_prompts + 1, int(context_length)) if context_length else None
        self._samples = _Samples(index, archive, prompts, build_transform(cfg.augment, image_size, cfg), cfg.seed, rngs,
                                 tokens, decode_need(cfg.augment, image_size, cfg.crop_scale))
        self.num_workers = resolve_workers(cfg.num_workers, cfg.processes if world_size > 1 else 1)
        self.pin_memory = pin_memory
        self._loader: Optional[torch.utils.data.DataLoader] = None

    @staticmethod
    def _open_archive(path: Path, variant: str):
        """Why: archive problems become one clear TrainDataError naming the folder."""
        from cocu_core.curation.archive import ArchiveError, ArchiveReader

        if not path.is_dir():
            raise TrainDataError(f"concept archive folder not found: {path} (run the curate stage for this variant)")
        try:
            reader = ArchiveReader(path)
        except (ArchiveError, OSError, pa.ArrowException) as exc:
            raise TrainDataError(f"concept archive in {path} cannot be read: {exc}") from None
        if len(reader) == 0:
            raise TrainDataError(f"concept archive in {path} is empty (0 rows)")
        if variant in ARCHIVE_VARIANTS and reader.variant != variant:
            raise TrainDataError(f"train variant {variant!r} needs an archive curated as {variant!r}, but {path} "
                                 f"was curated as {reader.variant!r}")
        if (variant == "oracle") != (reader.variant == "oracle"):
            raise TrainDataError(f"train variant {variant!r} cannot read {path}: it holds "
                                 f"{'ground-truth' if reader.variant == 'oracle' else 'curated'} concepts "
                                 f"(archive variant {reader.variant!r})")
        return reader

    def close(self) -> None:
        """Why: close the shard files this process opened and stop the loader's workers (also done when the object
        is collected)."""
        self._samples.close()
        it, self._loader = getattr(self._loader, "_iterator", None), None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    @property
    def keys(self) -> np.ndarray:
        """Why: the usable samples (after the archive join), in index order."""
        return self._samples.index.keys

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Why: the global sample order of an epoch, a pure function of (seed, epoch)."""
        ss = np.random.SeedSequence([self._samples.seed, epoch, _ORDER_STREAM])
        return np.random.default_rng(ss).permutation(self.n_samples)

    def texts_for(self, epoch: int, i: int) -> list[str]:
        """Why: inspect the text inputs a sample gets in an epoch without decoding its image."""
        caption, entry = self.prompt_inputs(i)
        return self.prompts(caption, entry, self.text_rng(epoch, i))

    @property
    def prompts(self) -> PromptMaker:
        """Why: reports replay the variant's concept draws (candidates once, a pick per epoch) without images."""
        return self._samples.prompts

    def prompt_inputs(self, i: int) -> tuple[str, Any]:
        """Why: the caption and archive entry (None without an archive) sample i's prompts are made from."""
        d = self._samples
        entry = d.entry(i)
        return d.caption(i, entry), entry

    def text_rng(self, epoch: int, i: int) -> np.random.Generator:
        """Why: the generator sample i's prompts draw from in `epoch`, the very one training uses."""
        return self._samples.sample_seeds(epoch, i)[1]

    def epoch_samples(self, epoch: int, steps: Optional[int] = None) -> np.ndarray:
        """Why: the samples the epoch's first `steps` (default: all) global batches hold; the incomplete last
        batch is dropped, so a few samples sit out each epoch."""
        steps = self.steps_per_epoch if steps is None else max(0, min(steps, self.steps_per_epoch))
        return self.epoch_order(epoch)[: steps * self.global_batch]

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[TrainBatch]:
        """Why: this rank's slice of every global batch of `epoch`, from `start_step` (resume) to the end."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise TrainDataError(f"start_step {start_step} is outside the epoch's 0..{self.steps_per_epoch} steps")
        if start_step == self.steps_per_epoch:
            return iter(())
        order = self.epoch_order(epoch)
        if self._loader is None:
            sampler = _StepBatches(order, epoch, start_step, self.steps_per_epoch, self.global_batch,
                                   self.rank, self.world_size)
            workers = self.num_workers
            self._loader = torch.utils.data.DataLoader(
                self._samples, batch_sampler=sampler, num_workers=workers,
                collate_fn=_Collate(self.image_size, self._token_shape),
                worker_init_fn=_worker_init if workers else None, prefetch_factor=4 if workers else None,
                persistent_workers=workers > 0, pin_memory=self.pin_memory,
                generator=torch.Generator().manual_seed(0))  # the loader's base seed must not consume the caller's RNG
        else:  # the same workers (and their token caches) go on with the next epoch
            self._loader.batch_sampler.move(order, epoch, start_step)
        return iter(self._loader)
