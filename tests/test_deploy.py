"""Deployments against a real Prefect server (slow): `prefect server start` on 127.0.0.1 (free port, own
PREFECT_HOME) backed by a PostgreSQL server the test starts (tests/pg_fixtures.py), `cocu deploy` from deployments/prefect.yaml, a process worker, triggered runs read back
through the Prefect client.

Checks: the re-curation schedule exists as configured; wrong parameters are clear errors (a wrong type
is refused naming the parameter; a wrong value fails the run with one line in its state message);
`cocu-pipeline` completes with every stage's artifacts; after new pairs are appended `cocu-recurate`
counts them exactly; a second re-curation triggered while one runs waits for it (the deployment's concurrency
limit of one, ENQUEUE); a cancelled run leaves no process behind. Server and worker are always stopped
(the worker with SIGINT) and no process of theirs remains.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ingest_fixtures import small_config
from pg_fixtures import postgres_server
from proc_fixtures import kill_marked, marked_processes, wait_all_gone, wait_until
from cocu_core.toyworld import read_pairs

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")
pytestmark = pytest.mark.slow

CLIENT = r'''
import json, sys, time
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.deployments import run_deployment
from prefect.states import Cancelling

a = json.loads(sys.argv[1])
out = {}
with get_client(sync_client=True) as c:
    if a["do"] == "deployments":
        for name in a["names"]:
            d = c.read_deployment_by_name(name)
            out[name] = {"pool": d.work_pool_name, "parameters": d.parameters, "pull": d.pull_steps,
                         "schedules": [{"cron": s.schedule.cron, "timezone": s.schedule.timezone, "active": s.active}
                                       for s in d.schedules],
                         "concurrency": {"limit": d.global_concurrency_limit.limit if d.global_concurrency_limit else None,
                                         "collision_strategy": d.concurrency_options.collision_strategy.value
                                         if d.concurrency_options else None}}
    elif a["do"] == "run":
        try:
            r = run_deployment(a["name"], parameters=a.get("parameters") or {}, timeout=a.get("timeout", 1500))
        except Exception as exc:  # the server refuses the run: report what it said
            out = {"refused": f"{type(exc).__name__}: {exc}"}
        else:
            arts = c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[r.id])))
            out = {"id": str(r.id), "state": r.state.type.value, "message": r.state.message,
                   "artifacts": {x.key: x.data if isinstance(x.data, str) else json.dumps(x.data)
                                 for x in sorted(arts, key=lambda x: x.created) if x.key}}
    elif a["do"] == "pair":  # two runs triggered back to back, followed to their end
        ids = [run_deployment(a["name"], timeout=0).id for _ in range(2)]
        t0 = time.time()
        while time.time() - t0 < a.get("timeout", 1500):
            runs = [c.read_flow_run(i) for i in ids]
            if all(r.state.is_final() for r in runs):
                break
            time.sleep(1)
        out = {"runs": [{"state": r.state.type.value, "message": r.state.message, "created": r.created.timestamp(),
                         "start": r.start_time.timestamp(),
                         "end": r.end_time.timestamp() if r.end_time else None,
                         "states": [s.name for s in c.read_flow_run_states(r.id)]} for r in runs]}
    elif a["do"] == "start":
        out = {"id": str(run_deployment(a["name"], parameters=a.get("parameters") or {}, timeout=0).id)}
    elif a["do"] == "cancel":
        c.set_flow_run_state(a["id"], Cancelling())
        t0 = time.time()
        while time.time() - t0 < 300:
            st = c.read_flow_run(a["id"]).state
            if st.is_final():
                break
            time.sleep(1)
        out = {"state": st.type.value, "message": st.message}
print("RESULT " + json.dumps(out, default=str))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, sig: int, waits: tuple[float, ...]) -> None:
    """Why: ask politely (again, as Prefect's worker wants a second SIGINT), then kill the whole group."""
    for w in waits:
        if proc.poll() is not None:
            break
        try:
            os.kill(proc.pid, sig)
        except OSError:
            pass
        try:
            proc.wait(timeout=w)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()


@pytest.fixture(scope="module")
def database():
    """Why: the Prefect server's PostgreSQL database, as production servers run it (SQLite stays `make run`'s)."""
    with postgres_server() as url:
        yield url


def _prefect_tables(url: str) -> int:
    """Why: proof that the server keeps its state in PostgreSQL (its flow_run table is there), not in SQLite."""
    import asyncio

    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            return await conn.fetchval("select count(*) from information_schema.tables where table_name = 'flow_run'")
        finally:
            await conn.close()

    return asyncio.run(count())


@pytest.fixture(scope="module")
def stack(world_dir, toy_encoder_weights, tmp_path_factory, database):
    """Why: server + pool + deployments + worker for the module's tests, always torn down."""
    tmp = tmp_path_factory.mktemp("deploy")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    base.update(PREFECT_HOME=str(tmp / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    marks = {"server": uuid.uuid4().hex, "worker": uuid.uuid4().hex}
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env={**base, "PREFECT_SERVER_API_PORT": str(port), "PREFECT_UI_API_URL": api,
                                   "PREFECT_API_DATABASE_CONNECTION_URL": database,
                                   "COCU_TEST_MARK": marks["server"]},
                              stdout=open(tmp / "server.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    try:
        def healthy() -> bool:
            try:
                return urllib.request.urlopen(f"{api}/health", timeout=2).read() == b"true"
            except OSError:
                return False

        assert wait_until(lambda: healthy() or server.poll() is not None, timeout=180, every=0.5) and healthy(), \
            (tmp / "server.log").read_text()[-3000:]
        assert _prefect_tables(database) == 1
        env = {**base, "PREFECT_API_URL": api}
        # the config: a url-list folder (file:// URLs into the toy world), a trained toy encoder given as weights
        pairs = read_pairs(world_dir / "train").to_pylist()
        rows = [{"url": (world_dir / "train" / p["file"]).as_uri(), "caption": p["caption"], "key": p["key"]}
                for p in pairs]
        (tmp / "lists").mkdir()
        pq.write_table(pa.Table.from_pylist(rows[:160]), tmp / "lists" / "a.parquet")
        cfg = small_config(tmp / "run", name="dep", data={"source": "url_list", "url_list": str(tmp / "lists"),
                                                         "shard_size": 80},
                           encoder={"pretrained": str(toy_encoder_weights), "train_toy": False},
                           train={"epochs": 1, "batch_size": 16, "max_steps": 3, "augment": "none"},
                           eval={"class_names": str(world_dir / "val" / "class_names.txt"),
                                 "roots": {"toy": str(world_dir / "val")}, "max_images": 3, "panels": 1},
                           runtime={"recurate_cron": "30 2 * * 1-5", "recurate_timezone": "Europe/Paris"})
        cfg_path = tmp / "dep.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        r = subprocess.run([sys.executable, "-m", "flows.cli", "deploy", "-c", str(cfg_path), "--pool", "cocu-test"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "cocu-test"], cwd=tmp,
                                  env={**env, "PREFECT_WORKER_QUERY_SECONDS": "2", "COCU_TEST_MARK": marks["worker"]},
                                  stdout=open(tmp / "worker.log", "wb"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        yield {"tmp": tmp, "env": env, "cfg": cfg, "cfg_path": cfg_path, "rows": rows, "marks": marks,
               "worker": worker, "deploy_out": r.stdout}
    finally:
        if worker is not None:
            _stop(worker, signal.SIGINT, (30, 15))
        _stop(server, signal.SIGINT, (30,))
        left = {name: wait_all_gone(mark) for name, mark in marks.items()}
        for mark in marks.values():
            kill_marked(mark)
        assert left == {"server": {}, "worker": {}}, left


def _client(stack, **action) -> dict:
    r = subprocess.run([sys.executable, "-c", CLIENT, json.dumps(action)], cwd=ROOT, env=stack["env"],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))[7:])


def test_deployments_exist_with_the_configured_schedule(stack):
    assert "cocu-recurate: cron '30 2 * * 1-5' (Europe/Paris)" in stack["deploy_out"]
    d = _client(stack, do="deployments", names=["cocu_pipeline/cocu-pipeline", "cocu_recurate/cocu-recurate"])
    pipe, rec = d["cocu_pipeline/cocu-pipeline"], d["cocu_recurate/cocu-recurate"]
    assert pipe["pool"] == rec["pool"] == "cocu-test"
    assert pipe["parameters"] == {"config_path": str(stack["cfg_path"]), "overrides": []}
    assert rec["parameters"]["config_path"] == str(stack["cfg_path"]) and rec["parameters"]["train"] is False
    assert pipe["schedules"] == []
    assert rec["schedules"] == [{"cron": "30 2 * * 1-5", "timezone": "Europe/Paris", "active": True}]
    # the pull step runs the flow from this clone
    assert pipe["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]


def test_wrong_parameters_are_clear_errors(stack):
    r = _client(stack, do="run", name="cocu_pipeline/cocu-pipeline", parameters={"overrides": "curation.variant=v2"})
    assert "Validation failed for field 'overrides'" in r["refused"]  # wrong type: the run is refused
    r = _client(stack, do="run", name="cocu_pipeline/cocu-pipeline", parameters={"only": "embedd"}, timeout=600)
    assert r["state"] == "FAILED" and "--only 'embedd' is not a stage; stages: toyworld" in r["message"]
    r = _client(stack, do="run", name="cocu_pipeline/cocu-pipeline", parameters={"overrides": ["data.caption_col=text"]},
                timeout=600)
    assert r["state"] == "FAILED" and "data.caption_col 'text' is not a column of" in r["message"], r["message"]
    assert "a.parquet" in r["message"] and "Traceback" not in r["message"]


def test_pipeline_then_recurate_after_new_pairs(stack):
    r = _client(stack, do="run", name="cocu_pipeline/cocu-pipeline")
    assert r["state"] == "COMPLETED", (r["message"], (stack["tmp"] / "worker.log").read_text()[-4000:])
    for key in ("download", "download-progress", "encoder", "embed", "embed-progress", "index", "index-report",
                "vocabulary", "concepts", "curate", "train", "train-progress", "train-loss-curve", "evaluate",
                "evaluation-report", "summary"):
        assert f"dep-{key}" in r["artifacts"], key
    assert "data:image/png;base64," in r["artifacts"]["dep-train-loss-curve"]

    pq.write_table(pa.Table.from_pylist(stack["rows"][160:200]), stack["tmp"] / "lists" / "b.parquet")
    r = _client(stack, do="run", name="cocu_recurate/cocu-recurate")
    assert r["state"] == "COMPLETED", (r["message"], (stack["tmp"] / "worker.log").read_text()[-4000:])
    assert "**40 new pairs**" in r["artifacts"]["dep-recurate-summary"]
    table = json.loads(r["artifacts"]["dep-recurate"])
    facts = {row["item"]: row["value"] for row in table}
    assert facts["new pairs in the list"] == 40 and facts["archive version"] == 2 and facts["previous version"] == 1


def test_a_second_triggered_recurate_waits_for_the_first(stack):
    """Prefect's own guard (deployments/prefect.yaml): one run at a time, a run triggered meanwhile queued, not run
    beside the first nor dropped."""
    rec = _client(stack, do="deployments", names=["cocu_recurate/cocu-recurate"])["cocu_recurate/cocu-recurate"]
    assert rec["concurrency"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    runs = _client(stack, do="pair", name="cocu_recurate/cocu-recurate")["runs"]
    first, second = sorted(runs, key=lambda r: r["start"])  # the queue's order is Prefect's, not the trigger order
    assert first["state"] == second["state"] == "COMPLETED", (first, second)
    # triggered while the other had not finished, it started only after the other had ended (a process worker runs
    # flow runs side by side unless the limit holds them: the worker or the server, by Prefect version, keeps the
    # second back, the server then naming its wait AwaitingConcurrencySlot)
    assert second["created"] < first["end"] <= second["start"], (first, second)


def test_cancelled_run_leaves_no_process(stack):
    mark = stack["marks"]["worker"]
    started = _client(stack, do="start", name="cocu_pipeline/cocu-pipeline",
                      parameters={"overrides": [f"workdir={stack['tmp'] / 'cancelled'}"]})

    def tool_running() -> bool:
        return any("cocu_core.data._runner" in c or "cocu_core.embeddings._runner" in c for c in marked_processes(mark).values())

    assert wait_until(tool_running, timeout=900, every=0.5), (stack["tmp"] / "worker.log").read_text()[-3000:]
    r = _client(stack, do="cancel", id=started["id"])
    assert r["state"] == "CANCELLED", r
    # only the worker itself is left of everything started under it (flow-run process, runner, tool workers)
    left = wait_until(lambda: set(marked_processes(mark)) <= {stack["worker"].pid}, timeout=60)
    assert left, marked_processes(mark)
