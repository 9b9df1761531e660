"""One pydantic model for the whole pipeline, loaded from YAML.

Every stage reads a documented subset of these fields; its cache key is derived from exactly those
fields (see :func:`PipelineConfig.fields_for`) plus its input fingerprints, nothing else.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from cocu_core.errors import CocuError

# The names the pipeline is run by, each defined once (the Literals type the fields; the tuples are for loops).
CurationVariant = Literal["baseline", "v1", "v2", "v3", "cocu"]
TrainVariant = Literal["baseline", "v1", "v2", "v3", "cocu", "topk-release", "oracle"]
EvalDataset = Literal["toy", "voc", "context", "coco_object", "coco_stuff", "cityscapes", "ade20k", "imagenet_s50",
                      "imagenet_s300"]
CURATION_VARIANTS: tuple[str, ...] = get_args(CurationVariant)
TRAIN_VARIANTS: tuple[str, ...] = get_args(TrainVariant)
EVAL_DATASETS: tuple[str, ...] = get_args(EvalDataset)


class ConfigError(ValueError, CocuError):
    """A user mistake in a config file: the message names the file and the offending key."""


class _Section(BaseModel):
    """Why: every section rejects unknown keys so a typo never silently falls back to a default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ToyWorldConfig(_Section):
    """The embedded procedural world: image-text pairs whose captions miss visible concepts."""

    seed: int = Field(0, description="Seed of the generator; same seed, same bytes.")
    n_web: int = Field(6000, ge=0, description="Pairs in the `web` split (trains the curation encoder).")
    n_train: int = Field(3000, ge=0, description="Pairs in the `train` split (pre-training pairs to curate).")
    n_val: int = Field(
        1000, ge=0, description="Images in the `val` split (evaluation, with masks); 1,000: evaluation is cheap and more "
                                "images mean less image-to-image noise in the toy mIoU.")
    image_size: int = Field(64, ge=32, le=1024, description="Side of the square images in pixels.")
    p_mention_thing: float = Field(
        0.85, ge=0, le=1, description="Probability that a caption names a visible thing (ball, car...)."
    )
    p_mention_stuff: float = Field(
        0.12, ge=0, le=1, description="Probability that a caption names a visible stuff region (sky, grass...)."
    )
    p_mention_stuff_web: float = Field(
        0.5,
        ge=0,
        le=1,
        description=(
            "Stuff mention rate in the `web` split only. `web` stands for the curation CLIP's own pre-training"
            " corpus (400M pairs for real CLIP, in which every stuff concept is named often); the pairs to curate"
            " (`train`) and `val` keep the low `p_mention_stuff`, so the semantic gap lives where CoCu works."
        ),
    )
    p_noise: float = Field(0.05, ge=0, le=1, description="Probability that a caption is off-topic noise.")
    salience_exponent: float = Field(
        1.0, ge=0, description="Salience in the captions (CLIP's semantic bias): a present concept is named with "
                               "probability min(1, p_kind x (area / reference)^exponent), area being its share of the "
                               "image's pixels; 0 = every concept of a kind at its kind's rate, whatever its size.")
    salience_reference_thing: float = Field(
        0.056, gt=0, le=1, description="Area share at which a thing is named at p_mention_thing (the mean area of a "
                                       "present thing at the default sizes, so the mean rate stays about the same).")
    salience_reference_stuff: float = Field(
        0.40, gt=0, le=1, description="Area share at which a stuff region is named at its split's stuff rate (the "
                                      "mean area of a present stuff region at the default sizes).")
    max_things: int = Field(3, ge=1, le=6, description="Most things drawn in one image.")
    p_third_stuff: float = Field(
        0.3, ge=0, le=1, description="Probability of a third stuff band (e.g. sand between water and grass)."
    )


class DataConfig(_Section):
    """Where image-text pairs come from and how img2dataset downloads them."""

    source: Literal["toyworld", "url_list"] = Field(
        "toyworld", description="`toyworld`: generate and serve the embedded world; `url_list`: a real list."
    )
    url_list: Optional[str] = Field(
        None, description="Parquet/CSV/TSV list of pairs for `source: url_list` (e.g. CC3M's TSV), or a folder of them; "
                          "a local path or an fsspec URL (s3://bucket/cc12m.parquet, gs://..., file://...)."
    )
    input_format: Literal["parquet", "csv", "tsv", "txt"] = Field("parquet", description="Format of `url_list`.")
    url_col: str = Field("url", description="Column of `url_list` holding image URLs.")
    caption_col: str = Field("caption", description="Column of `url_list` holding captions.")
    toyworld: ToyWorldConfig = Field(default_factory=ToyWorldConfig, description="Toy world generator settings.")
    image_size: int = Field(64, ge=16, description="img2dataset `image_size`: side the images are resized to.")
    resize_mode: Literal["no", "border", "keep_ratio", "center_crop"] = Field(
        "center_crop", description="img2dataset `resize_mode`."
    )
    shard_size: int = Field(1000, ge=1, description="img2dataset `number_sample_per_shard`.")
    processes: int = Field(2, ge=1, description="img2dataset `processes_count`.")
    threads: int = Field(8, ge=1, description="img2dataset `thread_count` per process.")
    timeout: int = Field(10, ge=1, description="img2dataset per-URL download timeout in seconds.")
    retries: int = Field(0, ge=0, description="img2dataset retries per URL.")
    distributor: Literal["multiprocessing", "pyspark", "ray"] = Field(
        "multiprocessing",
        description=(
            "img2dataset `distributor`: `multiprocessing` (this machine), `pyspark` (an active Spark session, or a"
            " local one img2dataset starts) or `ray` (the Ray cluster of RAY_ADDRESS) for very large lists."
        ),
    )


class EncoderConfig(_Section):
    """The curation CLIP: any open_clip model; the toy world trains its own tiny one."""

    model: str = Field(
        "cocu-tiny", description="open_clip architecture name (`ViT-B-16` for real data; `cocu-tiny` is ours)."
    )
    pretrained: Optional[str] = Field(
        None,
        description="open_clip pretrained tag (`openai`) or a checkpoint path; None with `train_toy` trains one.",
    )
    train_toy: bool = Field(True, description="Train the tiny encoder on the `web` split when no weights are given.")
    templates: list[str] = Field(
        default_factory=lambda: ["a photo of a {}.", "a picture of a {}.", "an image of the {}."],
        description="Prompt templates averaged (then renormalised) into a concept's text embedding.",
    )
    epochs: int = Field(16, ge=1, description="Toy encoder training epochs over the `web` split.")
    batch_size: int = Field(128, ge=2, description="Toy encoder training batch size (InfoNCE negatives).")
    lr: float = Field(2e-3, gt=0, description="Toy encoder AdamW learning rate.")
    weight_decay: float = Field(0.05, ge=0, description="Toy encoder AdamW weight decay.")
    embed_dim: int = Field(128, ge=8, description="Toy encoder joint embedding width.")
    holdout: int = Field(500, ge=10, description="Web pairs held out to report retrieval R@1/R@5.")
    toy_vision: Literal["resnet", "vit"] = Field(
        "resnet",
        description=(
            "`cocu-tiny` image tower: CLIP's ModifiedResNet (learns shapes from a few thousand pairs on a CPU;"
            " image size must be a multiple of 32) or CLIP's ViT (the `toy_vision_*`/`toy_patch_size` fields)."
        ),
    )
    toy_resnet_width: int = Field(16, ge=8, description="`cocu-tiny` ResNet stem width (final features = 32x width).")
    toy_resnet_layers: list[int] = Field(
        default_factory=lambda: [1, 1, 1, 1], description="`cocu-tiny` ResNet bottleneck blocks per stage (4 stages)."
    )
    toy_vision_width: int = Field(128, ge=32, description="`cocu-tiny` ViT width (patch 8 on the data image size).")
    toy_patch_size: int = Field(8, ge=2, description="`cocu-tiny` ViT patch side in pixels (must divide the image size).")
    toy_vision_layers: int = Field(3, ge=1, description="`cocu-tiny` ViT depth.")
    toy_text_width: int = Field(128, ge=32, description="`cocu-tiny` text transformer width (heads = width/32).")
    toy_text_layers: int = Field(2, ge=1, description="`cocu-tiny` text transformer depth.")
    toy_context_length: int = Field(32, ge=8, le=77, description="`cocu-tiny` text context length in tokens.")
    train_threads: int = Field(2, ge=1, description="torch CPU threads while training the toy encoder.")
    cache_dir: Optional[str] = Field(
        None, description="open_clip/Hugging Face cache folder searched for named pretrained weights (e.g. `openai`)."
    )
    inference_batch_size: int = Field(256, ge=1, description="clip-retrieval inference batch size.")
    num_workers: int = Field(
        2, ge=0,
        description=("Embedding decode workers (data-loader processes decoding and preprocessing images) per embedding"
                     " process; 0 decodes in the embedding process. Outputs do not depend on it."),
    )
    embed_processes: int = Field(
        1, ge=0,
        description=("Embedding processes on this node, each over a disjoint share of the pending shards: 0 = one per"
                     " visible GPU (one on a CPU machine); N > 1 on CPU shares the cores out. Outputs do not depend on it."),
    )
    distribution_strategy: Literal["sequential", "pyspark", "slurm"] = Field(
        "sequential",
        description=(
            "clip-retrieval `distribution_strategy`: `sequential` embeds in our own loop (model loaded once, all pending"
            " shards, `embed_processes` processes); `pyspark`/`slurm` make"
            " one clip-retrieval call over all pending shards (one output partition per shard) that its distributor"
            " spreads over Spark executors or Slurm nodes."
        ),
    )
    inference_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra clip-retrieval inference arguments, e.g. {slurm_partition: gpu, slurm_nodes: 4, slurm_job_timeout: 600}.",
    )

    @field_validator("inference_options")
    @classmethod
    def _known_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        allowed = {"slurm_job_name", "slurm_partition", "slurm_nodes", "slurm_job_comment", "slurm_nodelist",
                   "slurm_exclude", "slurm_job_timeout", "slurm_cache_path", "slurm_verbose_wait", "cache_path",
                   "clip_cache_path", "wds_image_key", "wds_caption_key"}
        bad = sorted(set(v) - allowed)
        if bad:
            raise ValueError(f"unknown clip-retrieval option(s) {bad}; allowed: {sorted(allowed)}")
        return v

    @field_validator("toy_resnet_layers")
    @classmethod
    def _four_stages(cls, v: list[int]) -> list[int]:
        if len(v) != 4 or min(v) < 1:
            raise ValueError(f"needs 4 stages of at least 1 block each, got {v}")
        return v


class IndexConfig(_Section):
    """The image and caption indexes: built with faiss directly by a size/memory policy, tuned to a recall target."""

    max_index_memory_usage: str = Field(
        "2G", description="Memory budget per index (codes, ids, coarse centroids): picks the codes, Flat (4 bytes a "
                          "dimension), SQ8 (1) or PQ (fewer), the largest that fits.")
    current_memory_available: str = Field(
        "4G", description="Memory the build may use besides the index: caps the training sample (float32 rows).")
    max_index_query_time_ms: float = Field(
        10.0, gt=0, description="Largest search time per query (wall ms over the stage's threads, re-rank included) "
                                "the tuning may go to; a recall target reached only beyond it counts as unreachable.")
    index_key: Optional[str] = Field(
        None,
        description=(
            "faiss index factory string to build instead of the policy's choice (e.g. `IVF4096,SQ8`, `HNSW32`);"
            " its nprobe/efSearch is tuned to `target_recall` the same way. null = the policy."
        ),
    )
    metric_type: Literal["ip", "l2"] = Field("ip", description="Inner product on normalised vectors = cosine.")
    recall_sample: int = Field(
        500, ge=2, description="Held-out query rows: one half tunes the search parameter, the other measures the "
                               "recall reported.")
    recall_k: int = Field(8, ge=1, description="k of recall@k (curation's N neighbours; the query itself dropped).")
    target_recall: float = Field(
        0.95, gt=0, le=1, description="recall@k against exact search the search parameter is tuned to reach (the "
                                      "smallest nprobe/efSearch that does).")
    accept_lower_recall: bool = Field(
        False, description="When no setting within `max_index_query_time_ms` reaches `target_recall`: false stops "
                           "the stage with a one-line error; true keeps the best setting and warns.")
    exact_below: int = Field(
        50_000, ge=0, description="Corpora with fewer vectors get exact search (IndexFlat, recall 1); larger ones IVF.")
    list_size: int = Field(
        512, ge=16, description="Target vectors per IVF list: nlist = N / list_size rounded to a power of two, so one "
                                "probe costs the same at any N.")
    hnsw_quantizer_from: int = Field(
        4096, ge=1, description="nlist from which the coarse quantiser is an HNSW32 graph (assignment in about log "
                                "nlist) instead of an exact scan of the centroids.")
    train_per_list: int = Field(
        40, ge=1, description="Training rows per IVF list, drawn at random across all rows (every shard), not the "
                              "first rows.")
    train_iters: int = Field(10, ge=1, description="k-means iterations of the coarse quantiser.")
    rerank: Literal["auto", "always", "never"] = Field(
        "auto", description="Exact re-ranking of a candidate list from the memory-mapped embeddings: auto = when the "
                            "codes are lossy (SQ, PQ), so compression need not cost recall.")
    rerank_factor: int = Field(
        4, ge=1, description="Candidates re-ranked per neighbour asked for (k x factor from the index).")
    hnsw_ef_construction: int = Field(
        200, ge=8, description="efConstruction of HNSW graphs (an HNSW key, or the HNSW coarse quantiser).")
    grow: bool = Field(
        True, description="When the embeddings grew by new shards only (re-curation), add the new vectors to the existing "
                          "index, keeping its trained coarse quantiser and codes, instead of rebuilding; the search "
                          "parameter is re-tuned to target_recall, and a miss rebuilds.")
    retrain_growth: float = Field(
        2.0, ge=1.0, description="Grow an index only while it holds at most this many times the vectors its coarse "
                                 "quantiser was trained on; past it the index is rebuilt (retrained).")


class CurationConfig(_Section):
    """CoCu's three stages and the paper's Table 3 ablation variants."""

    variant: CurationVariant = Field(
        "cocu",
        description=(
            "baseline: caption concepts only; v1: language-driven + naive + naive; v2: vision-driven + naive"
            " + naive; v3: vision-driven + T2V ranking + naive sampling; cocu: full (cluster sampling)."
        ),
    )
    n_neighbours: int = Field(8, ge=1, description="N: neighbours retrieved per image for concept expansion.")
    k_sample: int = Field(3, ge=1, description="k: concepts (clusters) drawn per image at each training step.")
    naive_sampling: Literal["topk", "weighted"] = Field(
        "topk", description="Naive sampling for v1-v3: top-k by relevancy, or relevancy-weighted draws."
    )
    vocab_size: int = Field(2000, ge=1, description="K: most frequent caption concepts kept in the vocabulary.")
    max_ngram: int = Field(3, ge=1, le=5, description="Longest noun phrase (in words) a concept may have.")
    batch_size: int = Field(4096, ge=1, description="Images curated per batch (bounds memory).")
    kmeans_iters: int = Field(20, ge=1, description="Lloyd iterations of the per-image k-means.")
    kmeans_restarts: int = Field(
        10, ge=1, description="k-means++ restarts per image (seeded, counter-based); the lowest inertia wins."
    )
    seed: int = Field(0, description="Seed of the k-means++ initialisation (same seed, same clusters).")
    kmeans_threads: int = Field(
        1, ge=1, description="torch threads for the batched k-means; 1 avoids OpenMP spin-wait slowdowns on a shared CPU."
    )
    incremental: bool = Field(
        True, description="Re-curation recomputes only the archive rows that can change (a new image among the N "
                          "neighbours, a member's caption concepts or an archive concept's embedding changed) and "
                          "carries the others over from the previous archive; off: every shard is curated in full.")
    reverse_k: int = Field(
        0, ge=0, description="Neighbours searched per new image to find the old images it joins the N nearest of "
                             "(approximate indexes; exact ones compare against every old image): 0 = 4 x n_neighbours.")


class TrainConfig(_Section):
    """GroupViT pre-training with the multi-label loss fed by curated concepts (GV `configs/default.yml`)."""

    model: str = Field("groupvit-toy", description="Registered model config (`groupvit-s` is the paper's, `groupvit-toy` ours).")
    model_overrides: dict[str, Any] = Field(
        default_factory=dict, description="Fields of the named model config to change, e.g. {drop_path_rate: 0.0}."
    )
    variant: Optional[TrainVariant] = Field(
        None,
        description=(
            "Which text inputs feed the multi-label loss. None: the curation variant. `baseline`: nouns of the caption"
            " itself (GroupViT); `v1`..`v3`/`cocu`: concepts drawn from that variant's archive with its sampling;"
            " `topk-release`: the CoCu authors' release (top-3 archive concepts by score, deterministic);"
            " `oracle` (toy world only): K of the image's ground-truth concepts, drawn uniformly anew every epoch"
            " (the ceiling the toy world allows; its archive is built in `<workdir>/curate/oracle`)."
        ),
    )
    epochs: int = Field(5, ge=1, description="Training epochs over the downloaded pairs.")
    batch_size: int = Field(64, ge=2, description="Global batch size (split evenly across processes).")
    lr: float = Field(1.6e-3, gt=0, description="Base learning rate at `lr_batch_reference` images per step (scaled linearly).")
    warmup_lr: float = Field(4e-6, ge=0, description="Learning rate at step 0 of the warm-up (scaled like `lr`).")
    min_lr: float = Field(4e-5, ge=0, description="Learning rate at the end of the cosine decay (scaled like `lr`).")
    lr_batch_reference: int = Field(4096, ge=1, description="Global batch the three learning rates are given for (GV: 4096).")
    warmup_epochs: float = Field(2.0, ge=0, description="Linear warm-up length in epochs (then cosine per step).")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay (never on biases and 1-d parameters).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    grad_clip: Optional[float] = Field(5.0, gt=0, description="Gradient-norm clipping; null disables it.")
    multi_label_weight: float = Field(1.0, ge=0, description="Weight of the multi-label loss (total = image-text + w x multi-label).")
    k_prompts: int = Field(3, ge=1, description="K: concept prompts per image besides the caption.")
    templates: Literal["full80", "subset7", "simple"] = Field(
        "full80", description="Prompt templates a concept is wrapped in (one drawn at random per prompt): CLIP's 80, the 7-subset, or 'a photo of a {}.'."
    )
    augment: Literal["deit", "crop_flip", "none"] = Field(
        "deit",
        description="`deit`: timm's training transform (RandomResizedCrop, RandAugment, random erasing) as GV; `crop_flip`: RandomResizedCrop + flip; `none`: resize only.",
    )
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="RandomResizedCrop area range.")
    rand_augment: str = Field("rand-m9-mstd0.5-inc1", description="timm RandAugment spec (`deit` only).")
    random_erasing: float = Field(0.25, ge=0, le=1, description="Random-erasing probability (`deit` only).")
    seed: int = Field(0, description="Seed of initialisation, data order, augmentation and concept sampling.")
    checkpoint_every: int = Field(200, ge=1, description="Write an atomic checkpoint every N optimiser steps (and at the end).")
    keep_checkpoints: int = Field(3, ge=1, description="Step checkpoints kept besides the final one.")
    device: str = Field("auto", description="`auto` picks CUDA when present, else CPU; or `cpu`, `cuda`, `cuda:1`.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="`auto`: bf16 autocast on CUDA, fp32 on CPU.")
    processes: int = Field(1, ge=1, description="Processes per node; >1 launches torchrun (gloo on CPU, nccl on GPU).")
    nnodes: int = Field(1, ge=1, description="Nodes for multi-node torchrun (each runs `processes`).")
    threads: int = Field(0, ge=0, description="torch CPU threads per process; 0 = cores / processes.")
    num_workers: int = Field(
        -1, ge=-1, description="Data-loader worker processes per training process (they decode, augment and tokenize);"
                               " -1 = the cores this process may use (os.sched_getaffinity) / processes, less one;"
                               " 0 = in the training process.")
    log_every: int = Field(10, ge=1, description="Steps between loss-curve rows (every step is logged to the bar).")
    max_steps: Optional[int] = Field(None, ge=1, description="Stop after this many optimiser steps (smoke runs); null = all epochs.")


BACKGROUND_DATASETS = ("voc", "context", "coco_object", "imagenet_s50", "imagenet_s300")  # class 0 = background
_Threshold = Annotated[float, Field(ge=0, le=1)]


class EvalConfig(_Section):
    """Zero-shot segmentation (GV's protocol) and classification; None settings take the dataset's protocol default."""

    datasets: list[str] = Field(default_factory=lambda: ["toy"], description=f"Segmentation benchmarks, from {list(EVAL_DATASETS)}.")
    roots: dict[str, str] = Field(default_factory=dict, description="Dataset name -> root folder in its standard layout.")
    voc_root: Optional[str] = Field(
        None, description="PASCAL-VOC-style root (JPEGImages/, SegmentationClass/); also the `voc` root. None: toy `val`."
    )
    class_names: Optional[str] = Field(None, description="Class-name file for the vocabulary, one per line; line 0 is background.")
    templates: Literal["simple", "subset7", "full80"] = Field(
        "simple", description="Class-embedding templates for segmentation ('a photo of a {}.' in the protocol)."
    )
    classification_templates: Literal["simple", "subset7", "full80"] = Field(
        "subset7", description="Class-embedding templates for zero-shot classification (the protocol's 7-subset)."
    )
    bg_threshold: Optional[_Threshold | dict[str, _Threshold]] = Field(
        None, description="Background threshold per dataset ({voc: 0.95, context: 0.35}); one number only when a single "
                          "evaluated dataset has a background class; None = each dataset's protocol value.")
    resize_long: Optional[int] = Field(None, ge=1, description="Resize keeping ratio: longest side at most this; None = dataset's.")
    resize_short: Optional[int] = Field(None, ge=1, description="Resize keeping ratio: shortest side to this; None = dataset's.")
    crop: Optional[int] = Field(None, ge=1, description="Sliding-window side; None = dataset's.")
    stride: Optional[int] = Field(None, ge=1, description="Sliding-window stride; None = dataset's.")
    top_k_classes: int = Field(5, ge=1, description="Classes kept from the pooled image embedding (protocol: 5).")
    window_batch: int = Field(16, ge=1, description="Sliding windows run through the model at once.")
    device: str = Field("auto", description="`auto` picks CUDA when present, else CPU.")
    max_images: Optional[int] = Field(None, ge=1, description="Evaluate only the first N images per dataset (quick checks).")
    imagenet_root: Optional[str] = Field(None, description="ImageNet-style folder (val/<class>/*.JPEG) for zero-shot top-1/top-5.")
    panels: int = Field(4, ge=0, description="PNG panels (image, truth, prediction, groups, missing-concept maps) per dataset.")
    save_predictions: Optional[str] = Field(None, description="Folder for palette PNG predictions (VOC style); None = not saved.")
    checkpoint: Optional[str] = Field(None, description="Model to evaluate; None = the train stage's final checkpoint.")

    @field_validator("datasets")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [d for d in v if d not in EVAL_DATASETS]
        if bad:
            raise ValueError(f"unknown dataset(s) {bad}; choose from {list(EVAL_DATASETS)}")
        return v

    @field_validator("bg_threshold")
    @classmethod
    def _threshold_per_dataset(cls, v: Optional[float | dict[str, float]], info: ValidationInfo):
        """Why: thresholds differ per dataset (VOC 0.95, Context 0.35); one number for several would silently replace all."""
        if isinstance(v, dict):
            bad = [d for d in v if d not in BACKGROUND_DATASETS]
            if bad:
                raise ValueError(f"{bad} have no background class; thresholds apply to {list(BACKGROUND_DATASETS)}")
        elif v is not None:
            with_bg = [d for d in info.data.get("datasets", []) if d in BACKGROUND_DATASETS]
            if len(with_bg) > 1:
                raise ValueError(f"one threshold for {len(with_bg)} datasets with a background class {with_bg}; give "
                                 f"one per dataset, e.g. {{{with_bg[0]}: {v}, {with_bg[1]}: ...}}")
        return v


class RuntimeConfig(_Section):
    """How the pipeline runs: concurrency and threads, the re-curation schedule, archive versions kept."""

    concurrency: int = Field(
        0, ge=0, description="Tasks run at once where stages fan out (curation shards); 0 = one per CPU core."
    )
    threads: int = Field(
        0, ge=0,
        description="torch/OpenMP/BLAS threads per task (and per stage subprocess); 0 = cores // concurrency, at least 1.",
    )
    recurate_cron: Optional[str] = Field(
        "0 3 * * *",
        description="Cron schedule of the `cocu-recurate` deployment (default daily at 03:00); null = no schedule.",
    )
    recurate_timezone: str = Field("UTC", description="Time zone the `recurate_cron` schedule is read in.")
    lock_timeout: float = Field(
        0.0, ge=0,
        description=(
            "Seconds a run waits for the work-folder lock held by another run (a writing run, or a training pinning"
            " its archives) before it stops with one line naming the holder; 0 = stop at once."
        ),
    )
    keep_versions: int = Field(
        3, ge=1, description="Archive versions kept by re-curation (older version folders are deleted)."
    )
    task_runner: Literal["threads", "dask", "ray"] = Field(
        "threads",
        description=(
            "Where fanned-out tasks (curation shards) run: `threads` (Prefect's thread pool, `concurrency` at once),"
            " `dask` (prefect-dask: the scheduler at `task_runner_address`, or a local cluster of `concurrency`"
            " worker processes) or `ray` (prefect-ray: the cluster at `task_runner_address`, or a local Ray)."
        ),
    )
    task_runner_address: Optional[str] = Field(
        None, description="Dask scheduler (tcp://host:8786) or Ray cluster (ray://host:10001, `auto`) address; null = start a local one."
    )

    @model_validator(mode="after")
    def _address_needs_engine(self) -> "RuntimeConfig":
        if self.task_runner_address and self.task_runner == "threads":
            raise ValueError("runtime.task_runner_address is set but runtime.task_runner is 'threads'; "
                             "choose 'dask' or 'ray', or remove the address")
        return self

    @field_validator("recurate_cron")
    @classmethod
    def _cron(cls, v: Optional[str]) -> Optional[str]:
        import re

        if v is None:
            return v
        fields = v.split()
        if len(fields) != 5 or not all(re.fullmatch(r"[0-9A-Za-z*/,\-?LW#]+", f) for f in fields):
            raise ValueError("must be a 5-field cron expression (minute hour day month weekday), e.g. '0 3 * * *'")
        return " ".join(fields)


ABLATION_ARMS = TRAIN_VARIANTS  # every training variant is an arm


class AblationConfig(_Section):
    """The paper's Table 3 in miniature (`cocu ablation`): one GroupViT per arm and seed, same budget and data order."""

    arms: list[str] = Field(
        default_factory=lambda: list(ABLATION_ARMS),
        description=(
            "Training variants compared, one table row each: `baseline` (caption nouns, GroupViT), `v1`..`v3`,"
            " `cocu` (full CoCu), `topk-release` (the authors' top-3 release) and `oracle` (prompts = the image's"
            " ground-truth concepts: the ceiling the toy world allows)."
        ),
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1],
        description="`train.seed` of each repetition (init, data order, augmentation, sampling): the spread is their std.",
    )
    epochs: int = Field(5, ge=1, description="Training epochs of every arm (the per-arm budget; `train.max_steps` still caps it).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the arms train and are evaluated (`auto`: CUDA when present, else CPU)."
    )
    out: str = Field("ablation", description="Output folder under `workdir` (runs, table, plots, maps, report).")
    map_images: int = Field(
        4, ge=0, description="Val images drawn for the missing-concept activation maps (the paper's Figure 4)."
    )
    map_arms: list[str] = Field(
        default_factory=lambda: ["baseline", "cocu"],
        description="Arms shown side by side in the activation maps and the loss-curve plot (Figures 3a and 4).",
    )

    @field_validator("arms", "map_arms")
    @classmethod
    def _known_arms(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if a not in ABLATION_ARMS]
        if bad:
            raise ValueError(f"unknown arm(s) {bad}; choose from {list(ABLATION_ARMS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"arms repeat: {v}")
        return v

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, v: list[int]) -> list[int]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"needs at least one seed and no repeats, got {v}")
        return v


class StorageConfig(_Section):
    """Where data lives besides the work folder, and how fsspec reaches it (never part of a cache key)."""

    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="fsspec options per protocol, e.g. {s3: {endpoint_url: 'http://127.0.0.1:9000', "
                    "client_kwargs: {region_name: eu-west-1}}}; credentials may go here or, as fsspec users expect, in "
                    "the environment (AWS_ACCESS_KEY_ID, ...) or a profile. Never written to manifests or logs.")
    archives: Optional[str] = Field(
        None, description="An fsspec URL (e.g. s3://bucket/cocu/archives) where every published archive version is "
                          "also written: its files first, its version.json (names and checksums) last; readers trust "
                          "only versions whose version.json is there. None: local versions only.")


class PipelineConfig(_Section):
    """The whole pipeline: one YAML file, one model."""

    name: str = Field("toy", description="Run name, used in artifact titles.")
    workdir: str = Field("runs/toy", description="Where every stage writes its outputs (relative to the CWD).")
    seed: int = Field(0, description="Global seed for training and sampling.")
    data: DataConfig = Field(default_factory=DataConfig, description="Data source and download.")
    encoder: EncoderConfig = Field(default_factory=EncoderConfig, description="Curation CLIP encoder.")
    index: IndexConfig = Field(default_factory=IndexConfig, description="FAISS indexes.")
    curation: CurationConfig = Field(default_factory=CurationConfig, description="Concept curation.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="GroupViT training.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Concurrency, schedule, versions kept.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Remote data locations (fsspec).")
    ablation: AblationConfig = Field(default_factory=AblationConfig, description="The ablation of `cocu ablation`.")

    @field_validator("workdir")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _patch_divides_image(self) -> "PipelineConfig":
        if self.encoder.toy_vision == "resnet":
            if self.data.image_size % 32:
                raise ValueError(f"encoder.toy_vision 'resnet' needs data.image_size ({self.data.image_size}) to be a "
                                 "multiple of 32 (the ResNet downsamples 32x); use toy_vision 'vit' otherwise")
        elif self.data.image_size % self.encoder.toy_patch_size:
            raise ValueError(f"encoder.toy_patch_size ({self.encoder.toy_patch_size}) must divide "
                             f"data.image_size ({self.data.image_size})")
        return self

    @model_validator(mode="after")
    def _url_list_given(self) -> "PipelineConfig":
        if self.data.source == "url_list" and not (self.data.url_list or "").strip():
            raise ValueError("data.source is 'url_list' but data.url_list is not set: give the list file "
                             "(Parquet/CSV/TSV) or a folder of such files")
        return self

    @property
    def workpath(self) -> Path:
        """Why: stages share one resolved root so outputs land where the README says."""
        return Path(self.workdir).expanduser().resolve()

    def get(self, dotted: str) -> Any:
        """Why: stages name the fields they read as dotted paths ("data.image_size")."""
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj

    def fields_for(self, dotted_fields: list[str]) -> dict[str, Any]:
        """Why: a stage's cache key covers exactly the config fields it reads."""
        return {f: self.get(f) for f in sorted(dotted_fields)}


def fingerprint(obj: Any) -> str:
    """Why: one stable short hash for cache keys and manifests, from JSON-able data."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config in {source}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{key}'")
        elif not err["loc"]:  # a check across sections: its message names the keys
            lines.append(f"  - {err['msg'].removeprefix('Value error, ')}")
        else:
            got = err.get("input")
            lines.append(f"  - '{key}': {err['msg']} (got {got!r})")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> PipelineConfig:
    """Why: tests and overrides build configs without files; errors still name the source."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config in {source}: top level must be a mapping, got {type(data).__name__}")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_config(path: str | Path, overrides: Optional[dict[str, Any]] = None) -> PipelineConfig:
    """Why: the single entry point from YAML; a user mistake becomes a ConfigError, never a traceback."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    if overrides:
        data = deep_merge(data, overrides)
    return config_from_dict(data, str(p))


def parse_override(item: str) -> dict[str, Any]:
    """Why: `--set curation.variant=v2` lets users vary one field without copying a config file."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw)
    out: dict[str, Any] = {}
    cur = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Why: `--set a.b=1` overrides one nested field and keeps its siblings."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out
