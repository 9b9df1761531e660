"""train: GroupViT pre-training with the multi-label loss fed by a variant's curated concepts, cached and resumable.

Reads   download/shards (+ download/manifest.json), curate/<archive variant>/ (shard manifests; none for baseline)
Writes  train/<variant>/ (layout below)
Key     train_inputs(...) (download key, archive keys, VERSION, variant) + train_fields (the train section less
        RUNTIME_FIELDS, plus the resolved model config)

Layout of ``out_dir`` (``<workdir>/train/<variant>``)::

    checkpoints/step_NNNNNNNN.pt   the newest few step checkpoints (resume points)
    final.pt                       the trained model (+ optimiser state, curve) when training ended
    loss_curve.csv, loss_curve.png the loss curve (total, image-text, multi-label)
    train_report.json              steps, samples, skips, first/last loss, images/s
    state.json                     present while a run is unfinished: the cache key its checkpoints belong to
    manifest.json                  inputs fingerprint, config fields, counts (written last)

The cache key is the shards' and archives' fingerprints plus the training fields that change results:
changing a training setting retrains without re-curating; runtime fields (processes, threads,
device, checkpoint interval) do not retrain.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from cocu_core.config import PipelineConfig, TrainConfig, fingerprint
from cocu_core.errors import CocuError
from cocu_core.io import read_json, read_manifest, stage_is_current, write_json_atomic, write_manifest
from cocu_core.layout import lock_path, output_lock_path, stage_dir, train_variant
from cocu_core.lock import EXCLUSIVE, SHARED, folder_lock
from cocu_core.proc import tree_env
from cocu_core.versions import pin_archives
from cocu_core.stages.base import DONE, Context, Report, Stage, StageStatus, compare, upstream_key
from cocu_core.stages.curate import oracle_archive

VERSION = 1  # bump when the same inputs and settings train differently
RUNTIME_FIELDS = {"train.device", "train.processes", "train.nnodes", "train.threads", "train.num_workers",
                  "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.variant"}
FIELDS = [f"train.{k}" for k in TrainConfig.model_fields if f"train.{k}" not in RUNTIME_FIELDS]  # keyed
# Which curated archive each training variant reads (None: the caption alone). The authors' release ranks the
# full method's archive (vision-driven + T2V) and takes its top concepts; the oracle reads the toy world's
# ground truth in the same format (cocu_core.toyworld.oracle, one manifest for the folder).
ARCHIVE_FOR: dict[str, Optional[str]] = {"baseline": None, "v1": "v1", "v2": "v2", "v3": "v3", "cocu": "cocu",
                                         "topk-release": "cocu", "oracle": "oracle"}


class TrainStageError(FileNotFoundError, CocuError):
    """An input of the training stage is missing; the message says which stage to run."""


def train_fields(cfg: PipelineConfig) -> dict[str, Any]:
    """Why: the training settings that change the trained model, and nothing else."""
    from cocu_core.model import get_config  # torch

    fields = cfg.fields_for(FIELDS)
    try:  # the architecture the name resolves to: a changed registered config retrains
        fields["model_config"] = get_config(cfg.train.model, **cfg.train.model_overrides).to_dict()
    except (KeyError, ValueError):  # unknown name or override: the train stage reports it with context
        pass
    return fields


def train_dir_for(cfg: PipelineConfig, variant: Optional[str] = None) -> Path:
    """Why: each variant's model lives beside the others, so an ablation never overwrites."""
    return stage_dir(cfg, "train", variant)


def _stage_key(folder: Path, what: str) -> str:
    return upstream_key(folder, what, TrainStageError, "run the earlier stages first (`cocu run`)")


def train_inputs(cfg: PipelineConfig, variant: str) -> tuple[Path, Optional[Path], str]:
    """Why: the shards and archives a variant trains on, and one fingerprint over both."""
    download = stage_dir(cfg, "download")
    parts = {"download": _stage_key(download, "download stage"), "version": VERSION, "variant": variant}
    archive_variant = ARCHIVE_FOR[variant]
    archive_dir = None
    if archive_variant == "oracle":
        archive_dir = stage_dir(cfg, "curate", "oracle")
        m = read_manifest(archive_dir)
        if not m:
            raise TrainStageError(f"training variant 'oracle' needs the ground-truth archive in {archive_dir}; "
                                  "`cocu train --variant oracle` builds it (toy world only)")
        parts["archives"] = {"oracle": m["cache_key"]}
    elif archive_variant:
        archive_dir = stage_dir(cfg, "curate", archive_variant)
        shard_dirs = sorted(archive_dir.glob("shard_*")) if archive_dir.is_dir() else []
        if not shard_dirs:
            raise TrainStageError(
                f"training variant '{variant}' needs the '{archive_variant}' concept archives in {archive_dir}; "
                f"curate them first: cocu run -c CONFIG --set curation.variant={archive_variant}")
        parts["archives"] = {d.name: _stage_key(d, f"curation shard ({archive_variant})") for d in shard_dirs}
    return download / "shards", archive_dir, fingerprint(parts)


def train_stage(cfg: PipelineConfig, variant: Optional[str] = None, out_dir: Optional[Path] = None,
                resume: bool = True, log: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    """Why: train (or reuse) the GroupViT of one variant; resumes a killed run from its newest checkpoint."""
    variant = train_variant(cfg, variant)
    out = Path(out_dir) if out_dir else train_dir_for(cfg, variant)
    timeout = cfg.runtime.lock_timeout
    with folder_lock(output_lock_path(out), EXCLUSIVE, timeout, f"a training of '{variant}' into {out}", log):
        with folder_lock(lock_path(cfg), SHARED, timeout, "a training pinning its archives", log):
            # Under the shared work-folder lock no curation is writing: the archives are whole and one version.
            if variant == "oracle":
                oracle_archive(cfg)  # refuses without a toy world; cached on (toy world, download)
            shards, archives, inputs = train_inputs(cfg, variant)
            fields = train_fields(cfg)
            key = fingerprint({"inputs": inputs, "config": fields})
            if stage_is_current(out, inputs, fields):
                return {**read_json(out / "train_report.json"), "cached": True, "dir": str(out)}
            state = out / "state.json"
            if out.exists() and (not resume or not state.is_file() or read_json(state).get("cache_key") != key):
                shutil.rmtree(out)  # checkpoints of other inputs or settings: not resumable
            out.mkdir(parents=True, exist_ok=True)
            if archives is not None:  # what this training reads to its end, resumes included; re-curation cannot touch it
                archives = pin_archives(archives, out / "archives")
            write_json_atomic(state, {"cache_key": key})
            (out / "manifest.json").unlink(missing_ok=True)
        return _train(cfg, shards, archives, out, variant, inputs, fields, state, log, progress)


def _train(cfg: PipelineConfig, shards: Path, archives: Optional[Path], out: Path, variant: str, inputs: str,
           fields: dict[str, Any], state: Path, log: Callable[[str], None], progress: bool) -> dict[str, Any]:
    """Why: the training itself, on the pinned archives, with only the training's own folder locked."""
    world = cfg.train.processes * cfg.train.nnodes
    if world > 1:
        report = _launch_torchrun(cfg, shards, archives, out, variant, log, progress)
    else:
        from cocu_core.train.loop import train_loop  # torch

        report = train_loop(cfg, shards, archives, out, variant, resume=True, log=log, progress=progress)
    counts = {k: report[k] for k in ("steps", "samples", "first_loss", "last_loss", "seconds", "images_per_s")}
    counts["skipped"] = sum(report["skipped"].values())
    write_manifest(out, "train", inputs, fields, counts, {"variant": variant, "checkpoint": str(out / "final.pt")})
    state.unlink(missing_ok=True)
    return {**report, "cached": False, "dir": str(out)}


def torchrun_command(cfg: PipelineConfig, spec_path: Path) -> list[str]:
    """Why: one process per device on this node; several nodes rendezvous at MASTER_ADDR:MASTER_PORT."""
    tc = cfg.train
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={tc.processes}", f"--nnodes={tc.nnodes}"]
    if tc.nnodes == 1:
        cmd.append("--standalone")
    else:
        addr = os.environ.get("MASTER_ADDR")
        if not addr:
            raise ValueError("train.nnodes > 1 needs MASTER_ADDR (and MASTER_PORT, NODE_RANK) set on every node")
        cmd += [f"--node_rank={os.environ.get('NODE_RANK', '0')}", f"--master_addr={addr}",
                f"--master_port={os.environ.get('MASTER_PORT', '29500')}"]
    return cmd + ["-m", "cocu_core.train._runner", str(spec_path)]


def _launch_torchrun(cfg: PipelineConfig, shards: Path, archives: Optional[Path], out: Path, variant: str,
                     log: Callable[[str], None], progress: bool) -> dict[str, Any]:
    """Why: several processes (gloo on CPU, nccl on GPU) through torchrun; its output reaches our log."""
    spec = out / "torchrun_spec.json"
    write_json_atomic(spec, {"config": cfg.model_dump(mode="json"), "shards_dir": str(shards),
                             "archive_dir": str(archives) if archives else None, "out_dir": str(out),
                             "variant": variant, "resume": True, "progress": False})
    cmd = torchrun_command(cfg, spec)
    log("train: " + " ".join(cmd))
    # torchrun and its workers die with this process even when it is SIGKILLed (the deathsig sitecustomize: a
    # killed stage must not leave a training behind, writing into the folder a rerun resumes from)
    env = tree_env({"OMP_NUM_THREADS": str(max(1, cfg.train.threads or 1))})
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    tail: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-40:]
            if line:
                log(line)
        proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: take the whole torchrun group down with us
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with code {proc.returncode}:\n" + "\n".join(tail))
    return read_json(out / "train_report.json")


def run(ctx: Context) -> Report:
    """Why: train (or reuse) the configured variant's GroupViT."""
    return train_stage(ctx.cfg, log=ctx.log, progress=ctx.progress)


def probe(cfg: PipelineConfig) -> Callable[[], tuple[float, str]]:
    """Why: the configured variant's training progress (the flow's progress artifact polls it)."""
    return train_probe(cfg, train_dir_for(cfg))


def train_probe(cfg: PipelineConfig, out: Path) -> Callable[[], tuple[float, str]]:
    """Why: training progress and loss from the curve the trainer writes at every checkpoint (in any folder: the
    ablation's runs too)."""
    import csv
    import io

    def read() -> tuple[float, str]:
        f = out / "loss_curve.csv"
        if not f.is_file():
            return 0.0, ""
        rows = list(csv.DictReader(io.StringIO(f.read_text())))
        if not rows:
            return 0.0, ""
        last = rows[-1]
        step, epoch = int(last["step"]), int(last["epoch"])
        frac = step / cfg.train.max_steps if cfg.train.max_steps else (epoch + 0.5) / cfg.train.epochs
        return frac, f"train: step {step}, epoch {epoch + 1}/{cfg.train.epochs}, loss {float(last['loss']):.4f}"

    return read


def status(cfg: PipelineConfig, up: Mapping[str, StageStatus]) -> StageStatus:
    """Why: the expected key from today's download and archive manifests and training fields."""
    folder = train_dir_for(cfg)
    needs = {k: up[k] for k in ("download", "curate") if k in up}
    if ARCHIVE_FOR[train_variant(cfg)] in (None, "oracle"):  # the caption alone, or the toy world's ground truth
        needs.pop("curate", None)
    inputs = None
    if all(s.state == DONE for s in needs.values()):
        try:
            inputs = train_inputs(cfg, train_variant(cfg))[2]
        except FileNotFoundError:
            inputs = None
    st = compare("train", folder, inputs, train_fields(cfg), needs)
    if st.state == DONE and (folder / "final.pt").is_file():
        st.outputs.insert(1, str(folder / "final.pt"))
    return st


STAGE = Stage("train", needs=("download", "curate"), run=run, status=status, probe=probe, fields=tuple(FIELDS))
