"""`cocu deploy`: create the Prefect deployments of `deployments/prefect.yaml` for one config.

Why a command: the re-curation schedule lives in the config (`runtime.recurate_cron`), which
prefect.yaml cannot read; this renders the file with the config path as parameter and that
schedule, makes sure the process work pool exists, and runs `prefect deploy` on the result.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import yaml

from cocu_core.config import PipelineConfig

REPO = Path(__file__).resolve().parent.parent
DEPLOY_FILE = REPO / "deployments" / "prefect.yaml"
PROCESS_DEPLOYMENTS = ("cocu-pipeline", "cocu-recurate")
GPU_DEPLOYMENT = "cocu-pipeline-gpu"


def config_parameter(config_path: str | Path) -> str:
    """Why: inside the clone, a path relative to it (valid on any worker's clone); elsewhere absolute."""
    p = Path(config_path).resolve()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


def render(cfg: PipelineConfig, config_path: str | Path, pool: Optional[str] = None,
           spec_file: Path = DEPLOY_FILE, overrides: Optional[list[str]] = None) -> dict[str, Any]:
    """Why: prefect.yaml with this config (and overrides) as parameters, the config's re-curation schedule, the pool."""
    spec = yaml.safe_load(spec_file.read_text())
    param = config_parameter(config_path)
    for d in spec["deployments"]:
        d.setdefault("parameters", {})["config_path"] = param if d["name"] != GPU_DEPLOYMENT else d["parameters"].get(
            "config_path", param)
        if d["name"] == "cocu-recurate":
            rt = cfg.runtime
            d["schedules"] = ([{"cron": rt.recurate_cron, "timezone": rt.recurate_timezone, "active": True}]
                              if rt.recurate_cron else [])
        if d["name"] in PROCESS_DEPLOYMENTS:
            d["parameters"]["overrides"] = list(overrides or [])
            if pool:
                d["work_pool"]["name"] = pool
    return spec


def ensure_process_pool(name: str) -> bool:
    """Why: a fresh server has no work pool; create the process pool the deployments name (True if created)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            return True


def deploy(cfg: PipelineConfig, config_path: str | Path, pool: Optional[str] = None, gpu: bool = False,
           gpu_config: Optional[str] = None, overrides: Optional[list[str]] = None) -> list[str]:
    """Why: render, ensure the pool, `prefect deploy` the named deployments; returns their full names."""
    spec = render(cfg, config_path, pool, overrides=overrides)
    names = list(PROCESS_DEPLOYMENTS) + ([GPU_DEPLOYMENT] if gpu else [])
    if gpu and gpu_config:
        next(d for d in spec["deployments"] if d["name"] == GPU_DEPLOYMENT)["parameters"]["config_path"] = \
            config_parameter(gpu_config)
    pool_name = next(d for d in spec["deployments"] if d["name"] == "cocu-pipeline")["work_pool"]["name"]
    ensure_process_pool(pool_name)
    with tempfile.TemporaryDirectory(prefix="cocu-deploy-") as tmp:
        rendered = Path(tmp) / "prefect.yaml"
        rendered.write_text(yaml.safe_dump(spec, sort_keys=False))
        cmd = [str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--prefect-file", str(rendered)]
        for n in names:
            cmd += ["--name", n]
        env = {**os.environ, "COCU_REPO": str(REPO)}
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"prefect deploy failed (exit {r.returncode}):\n{tail}")
    flows = {"cocu-pipeline": "cocu_pipeline", "cocu-recurate": "cocu_recurate", GPU_DEPLOYMENT: "cocu_pipeline"}
    return [f"{flows[n]}/{n}" for n in names]
