"""The ablation end to end on a tiny toy config (slow: real Prefect flow, img2dataset, clip-retrieval, autofaiss,
GroupViT training and evaluation): 2 arms x 2 seeds x 2 steps through `cocu_ablation`, then `ablation_stage`
in process (every run reused, a lost evaluation redone alone), and the missing-archive error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from ingest_fixtures import small_config

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

FLOW_SCRIPT = r'''
import json, sys
from flows.ablation import cocu_ablation
res = cocu_ablation(config_path=sys.argv[1])
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as c:
    arts = {a.key: a for a in c.read_artifacts() if a.key}
print(json.dumps({"upstream": res["upstream"], "seconds": res["seconds"], "runs": res["runs"], "artifacts": sorted(arts),
                  "report_artifact": arts["abl-ablation-report"].data, "summary": res["summary"]}))
'''


def test_ablation_flow_then_stage_reuses_runs(tmp_path):
    from cocu_core.ablation import AblationError, ablation_stage
    from cocu_core.config import load_config
    from cocu_core.io import read_json, read_manifest

    cfg = small_config(tmp_path / "run", name="abl",
                       train={"batch_size": 16, "max_steps": 2, "augment": "none", "checkpoint_every": 2},
                       eval={"max_images": 6},
                       ablation={"arms": ["baseline", "cocu"], "seeds": [0, 1], "epochs": 1, "map_images": 2})
    path = tmp_path / "abl.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    out = subprocess.run([sys.executable, "-c", FLOW_SCRIPT, str(path)], capture_output=True, text=True, timeout=900,
                         env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(res["summary"])
    # upstream: the pipeline's own stages through curation, computed once, for the one variant the arms read
    assert list(res["upstream"]) == ["cocu"] and res["upstream"]["cocu"]["curate"] is False
    assert "train" not in res["upstream"]["cocu"]
    assert [(r["arm"], r["seed"]) for r in res["runs"]] == [("baseline", 0), ("cocu", 0), ("baseline", 1), ("cocu", 1)]
    assert not any(r["cached"] for r in res["runs"]) and all(r["steps"] == 2 for r in res["runs"])
    assert {"abl-ablation", "abl-ablation-report", "abl-ablation-progress"} <= set(res["artifacts"])
    assert "data:image/png;base64," in res["report_artifact"] and "| arm | mIoU |" in res["report_artifact"]

    abl = tmp_path / "run" / "ablation"
    # identical budget and data order: per seed, both arms' train manifests hold the same training fields
    fields = {(a, s): read_manifest(abl / "runs" / a / f"seed{s}" / "train")["config_fields"]
              for a in ("baseline", "cocu") for s in (0, 1)}
    assert fields["baseline", 0] == fields["cocu", 0] and fields["baseline", 1] == fields["cocu", 1]
    assert fields["cocu", 0]["train.seed"] == 0 and fields["cocu", 1]["train.seed"] == 1
    assert fields["cocu", 0]["train.epochs"] == 1
    table = read_json(abl / "table.json")
    for arm in ("baseline", "cocu"):
        e = table["arms"][arm]
        assert e["seeds"] == [0, 1]
        for key in ("mIoU", "stuff_mIoU", "thing_mIoU", "top1"):
            vals = [r[key] for r in res["runs"] if r["arm"] == arm]
            assert e[key]["values"] == pytest.approx(vals) and e[key]["std"] is not None
            assert e[key]["mean"] == pytest.approx(sum(vals) / 2)
    md = (abl / "table.md").read_text()
    assert md.count("±") == 8 and "baseline" in md and "CoCu" in md
    assert Image.open(abl / "loss_curves.png").format == "PNG"
    maps = sorted((abl / "maps").glob("*.png"))
    assert 1 <= len(maps) <= 2 and {m["path"] for m in table["maps"]} == {str(m) for m in maps}
    heights = [Image.open(m).height for m in maps]
    assert all(h > 2 * 192 for h in heights)  # two rows (baseline above CoCu) of tiles at least 192 px high
    report = (abl / "report.md").read_text()
    assert "](loss_curves.png)" in report and f"](maps/{maps[0].name})" in report
    assert "## What training sees" in report
    signal = table["training_signal"]
    assert signal.startswith("| arm |") or signal.startswith("not available")

    # in process: every run and the report reused
    cfg = load_config(path)
    rep = ablation_stage(cfg, log=lambda m: None, progress=False)
    assert rep["cached"] and len(rep["runs"]) == 4
    # a lost evaluation is redone, alone; its numbers are the same (same checkpoint, same data)
    (abl / "runs" / "cocu" / "seed1" / "evaluate" / "manifest.json").unlink()
    rep2 = ablation_stage(cfg, log=lambda m: None, progress=False)
    assert [r["cached"] for r in rep2["runs"]] == [True, True, True, False]
    assert rep2["runs"][3]["mIoU"] == pytest.approx(res["runs"][3]["mIoU"])
    assert not rep2["cached"] or rep2["arms"] == rep["arms"]
    # an arm whose archives were never curated: one error naming the folder and the command
    v2 = load_config(path, {"ablation": {"arms": ["baseline", "v2"]}})
    with pytest.raises(AblationError, match=r"curate/v2.*--set curation.variant=v2"):
        ablation_stage(v2, log=lambda m: None, progress=False, config_name=str(path))
