"""`cocu deploy` renders deployments/prefect.yaml for a config (fast: no server): parameters, the config's
re-curation schedule, the pool; the file's entrypoints are the flows that exist."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

from cocu_core.config import load_config
from flows.deploy import DEPLOY_FILE, render

ROOT = Path(__file__).resolve().parent.parent


def test_entrypoints_exist_and_are_flows():
    spec = yaml.safe_load(DEPLOY_FILE.read_text())
    assert {d["name"] for d in spec["deployments"]} == {"cocu-pipeline", "cocu-recurate", "cocu-pipeline-gpu"}
    for d in spec["deployments"]:
        path, fn = d["entrypoint"].split(":")
        assert (ROOT / path).is_file()
        flow = getattr(importlib.import_module(path[:-3].replace("/", ".")), fn)
        assert set(d["parameters"]) <= set(flow.parameters.properties), d["name"]
    pull = spec["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
    assert pull == "{{ $COCU_REPO }}"


def test_render_takes_schedule_overrides_and_pool_from_the_command(tmp_path):
    cfg = load_config(ROOT / "configs" / "toy.yaml", {"runtime": {"recurate_cron": "0 4 * * 0",
                                                                  "recurate_timezone": "Asia/Tokyo"}})
    spec = {d["name"]: d for d in render(cfg, ROOT / "configs" / "toy.yaml", "my-pool",
                                         overrides=["curation.variant=v2"])["deployments"]}
    rec, pipe, gpu = spec["cocu-recurate"], spec["cocu-pipeline"], spec["cocu-pipeline-gpu"]
    assert rec["schedules"] == [{"cron": "0 4 * * 0", "timezone": "Asia/Tokyo", "active": True}]
    assert pipe["parameters"] == {"config_path": "configs/toy.yaml", "overrides": ["curation.variant=v2"]}
    assert rec["parameters"]["config_path"] == "configs/toy.yaml" and rec["work_pool"]["name"] == "my-pool"
    assert gpu["work_pool"]["name"] == "cocu-gpu" and gpu["work_pool"]["job_variables"]["image"] == "cocu-gpu:latest"
    # the toy config names no cron: the default, daily at 03:00 UTC; a config outside the clone is passed by
    # absolute path
    outside = tmp_path / "c.yaml"
    outside.write_text((ROOT / "configs" / "toy.yaml").read_text())
    spec = {d["name"]: d for d in render(load_config(outside), outside)["deployments"]}
    assert spec["cocu-recurate"]["schedules"] == [{"cron": "0 3 * * *", "timezone": "UTC", "active": True}]
    # one run of each deployment at a time, a run triggered meanwhile queued (Prefect's own guard)
    for name in ("cocu-pipeline", "cocu-recurate"):
        assert spec[name]["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    # told otherwise (`cocu deploy --no-schedule`, or a null cron): no schedule
    spec = {d["name"]: d for d in render(load_config(outside, {"runtime": {"recurate_cron": None}}),
                                         outside)["deployments"]}
    assert spec["cocu-recurate"]["schedules"] == []
    assert spec["cocu-pipeline"]["parameters"]["config_path"] == str(outside.resolve())
    assert spec["cocu-pipeline"]["work_pool"]["name"] == "cocu-process"
