"""User mistakes on `cocu run` / `cocu status` are one clear `error:` line (exit 2), before Prefect starts:
an unknown or inapplicable stage, a url list without its columns, `url_list` without a list."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from cocu_core.config import ConfigError, PipelineConfig, config_from_dict
from cocu_core.stages import STAGES, StageError, preflight, select_stages

ROOT = Path(__file__).resolve().parent.parent


def _cocu(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def _one_error_line(r: subprocess.CompletedProcess, *needles: str, lines_allowed: int = 1) -> str:
    """Why: exit 2, no traceback, nothing from Prefect (it never started), an `error:` line naming the problem
    (config-file errors: the file on the first line and one line per offending key)."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "prefect" not in r.stderr.lower(), r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) <= lines_allowed and lines[0].startswith("error: "), r.stderr
    text = " ".join(lines)
    for n in needles:
        assert n in text, (n, text)
    return text


def _url_config(tmp_path: Path, **data) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump({"name": "bad", "workdir": str(tmp_path / "run"),
                                 "data": {"source": "url_list", **data}}))
    return p


def test_unknown_stage_lists_the_stages():
    line = _one_error_line(_cocu("run", "-c", "configs/toy.yaml", "--only", "embedd"), "--only 'embedd'", "embed")
    assert all(s in line for s in STAGES)
    _one_error_line(_cocu("run", "-c", "configs/toy.yaml", "--from", "curation"), "--from 'curation' is not a stage")
    _one_error_line(_cocu("run", "-c", "configs/toy.yaml", "--only", "embed", "--from", "index"), "not both")


def test_stage_that_does_not_apply_to_the_config(tmp_path):
    pq.write_table(pa.table({"url": ["http://127.0.0.1:1/a.jpg"], "caption": ["a dog"]}), tmp_path / "l.parquet")
    cfg = _url_config(tmp_path, url_list=str(tmp_path / "l.parquet"))
    _one_error_line(_cocu("run", "-c", str(cfg), "--only", "semantic_gap"), "does not apply", "toyworld")


def test_url_list_source_without_a_list_is_a_config_error(tmp_path):
    line = _one_error_line(_cocu("run", "-c", str(_url_config(tmp_path))), "data.url_list is not set", lines_allowed=2)
    assert str(tmp_path / "cfg.yaml") in line
    with pytest.raises(ConfigError, match="data.url_list is not set"):
        config_from_dict({"data": {"source": "url_list"}})


def test_url_list_with_a_missing_column(tmp_path):
    pq.write_table(pa.table({"url": ["http://127.0.0.1:1/a.jpg"], "text": ["a dog"]}), tmp_path / "l.parquet")
    _one_error_line(_cocu("run", "-c", str(_url_config(tmp_path, url_list=str(tmp_path / "l.parquet")))),
                    "data.caption_col 'caption'", "l.parquet", "columns: url, text")
    (tmp_path / "l.tsv").write_text("image\tcaption\nhttp://127.0.0.1:1/a.jpg\ta dog\n")
    _one_error_line(_cocu("run", "-c", str(_url_config(tmp_path, url_list=str(tmp_path / "l.tsv"), input_format="tsv"))),
                    "data.url_col 'url'", "l.tsv", "columns: image, caption")
    _one_error_line(_cocu("run", "-c", str(_url_config(tmp_path, url_list=str(tmp_path / "nope.tsv"), input_format="tsv"))),
                    "not found", "nope.tsv")
    (tmp_path / "folder").mkdir()
    _one_error_line(_cocu("run", "-c", str(_url_config(tmp_path, url_list=str(tmp_path / "folder")))),
                    "holds no *.parquet file")


def test_status_of_a_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("curation:\n  n_neighbors: 8\n")
    r = _cocu("status", "-c", str(bad))
    assert r.returncode == 2 and "curation.n_neighbors" in r.stderr and "Traceback" not in r.stderr


def test_select_stages_order_and_errors(tmp_path):
    cfg = PipelineConfig()
    every = select_stages(cfg)
    assert every[:8] == ["toyworld", "download", "encoder", "embed", "index", "vocabulary", "concepts", "curate"]
    assert select_stages(cfg, only="index") == ["index"]
    assert select_stages(cfg, from_stage="curate")[0] == "curate" and "download" not in select_stages(cfg, from_stage="curate")
    assert select_stages(cfg, from_stage="semantic-gap")[0] == "semantic_gap"  # dashes accepted as in task names
    with pytest.raises(StageError):
        select_stages(cfg, only="nope")
    pq.write_table(pa.table({"url": ["u"], "caption": ["c"]}), tmp_path / "l.parquet")
    url_cfg = config_from_dict({"data": {"source": "url_list", "url_list": str(tmp_path / "l.parquet")}})
    assert "toyworld" not in select_stages(url_cfg) and "semantic_gap" not in select_stages(url_cfg)
    preflight(url_cfg)  # a good list passes
