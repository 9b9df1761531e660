"""The one face of a pipeline stage: `Stage` (its spec), `Context` (what `run` gets), `Report` (what it returns),
and `StageStatus` (what `cocu status` says of it), with the helpers every stage's `status()` shares.

Why one face: the flow, `cocu status` and `--only/--from` read the same `STAGES` registry
(`cocu_core.stages`), so a stage is declared once; each stage module computes its expected cache key in one
function used both by `run` (skip when the manifest carries it) and by `status` (done / stale / missing, with
the config field or input that changed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from cocu_core import layout
from cocu_core.config import PipelineConfig, fingerprint
from cocu_core.io import read_manifest

Report = dict[str, Any]  # what run() returns; it always carries "cached": bool


@dataclass(frozen=True)
class Context:
    """What every stage's run() receives: the config, and how to talk to whoever called it."""

    cfg: PipelineConfig
    log: Callable[[str], None] = print
    progress: bool = True  # tqdm bars on a terminal; False under Prefect (a task polls the disk instead)
    workers: int = 1  # processes a stage may start itself (toy-world rendering)

    def dir(self, stage: str, variant: Optional[str] = None) -> Path:
        """Why: every folder a stage reads or writes comes from `layout`, never from a hand-written join."""
        return layout.stage_dir(self.cfg, stage, variant)


DONE, STALE, MISSING, PARTIAL = "done", "stale", "missing", "partial"


@dataclass
class StageStatus:
    """One stage's state, the key a current output would carry, its outputs and the reasons it is not done."""

    stage: str
    state: str
    key: Optional[str] = None
    outputs: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def field_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Why: name each config field whose value differs from what the stored output was made with."""
    old, new = (json.loads(json.dumps(d, default=str)) for d in (old, new))  # tuples and lists compare as stored
    out = []
    for k in sorted(set(old) | set(new)):
        if old.get(k, "<unset>") != new.get(k, "<unset>"):
            out.append(f"{k}: {_short(old.get(k, '<unset>'))} -> {_short(new.get(k, '<unset>'))}")
    return out


def cache_key(inputs: str, fields: dict[str, Any]) -> str:
    """Why: the key a manifest carries: its inputs fingerprint and the config fields the stage read."""
    return fingerprint({"inputs": inputs, "config": fields})


def compare(stage: str, folder: Path, inputs: Optional[str], fields: dict[str, Any], upstream: dict[str, StageStatus],
            input_reason: str = "its inputs changed") -> StageStatus:
    """Why: a manifest against the expected (inputs, fields): done, stale with reasons, or missing."""
    m = read_manifest(folder)
    bad_up = [f"upstream '{u}' is {s.state}" for u, s in upstream.items() if s.state != DONE]
    key = cache_key(inputs, fields) if inputs is not None else None
    if not m:
        parts = len(list((folder / "parts").glob("*/done.json"))) if (folder / "parts").is_dir() else 0
        partial = (folder / "state.json").is_file() or parts > 0
        why = [f"unfinished run (resumable{f': {parts} shards done' if parts else ''})"] if partial else []
        return StageStatus(stage, PARTIAL if partial else MISSING, key, [str(folder)] if partial else [], why + bad_up)
    outs = [str(folder)] + [f"{k}={v}" for k, v in (m.get("counts") or {}).items()][:6]
    if key is not None and m.get("cache_key") == key:
        return StageStatus(stage, DONE, key, outs)
    reasons = field_changes(m.get("config_fields") or {}, fields)
    if inputs is None or m.get("inputs_fingerprint") != inputs:
        reasons += bad_up or [input_reason]
    return StageStatus(stage, STALE, key, outs, reasons or ["made by another code version"])




StatusFn = Callable[[PipelineConfig, Mapping[str, StageStatus]], StageStatus]


@dataclass(frozen=True)
class Stage:
    """One pipeline stage as the flow, `cocu status` and --only/--from see it."""

    name: str  # CLI name = manifest "stage" = artifact key
    needs: tuple[str, ...]  # upstream stages (earlier in the registry)
    run: Callable[[Context], Report]  # do the work, or return the cached report
    status: StatusFn  # the expected key and state, from manifests only
    fields: tuple[str, ...] = ()  # the config fields in the stage's cache key (dotted)
    probe: Optional[Callable[[PipelineConfig], Callable[[], tuple[float, str]]]] = None  # progress read from disk
    toy_only: bool = False  # only for `data.source: toyworld`


def upstream_key(folder: Path, what: str = "", error: type[Exception] = FileNotFoundError, hint: str = "") -> str:
    """Why: the cache key of a finished upstream stage, or one clear error naming its folder and what to run."""
    m = read_manifest(folder)
    if not m:
        raise error(f"no finished {what + ' in ' if what else 'stage in '}{folder}; "
                    f"{hint or 'run the earlier stages first'}")
    return m["cache_key"]
