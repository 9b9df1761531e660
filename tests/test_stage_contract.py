"""Every registered stage keeps the same contract, checked over the registry the way timm's tests run over
`list_models()`: a new stage gets these checks by being registered, and a stage that breaks one fails here."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from cocu_core import layout, stages
from cocu_core.config import config_from_dict, load_config
from cocu_core.stages.base import Context, Stage

ROOT = Path(__file__).resolve().parent.parent
TOY = load_config(ROOT / "configs" / "toy.yaml", {"workdir": "/tmp/cocu-contract"})
REAL = config_from_dict({"workdir": "/tmp/cocu-contract-real", "data": {"source": "url_list", "url_list": "x.parquet"}})


def test_registry_is_the_pipeline_in_run_order():
    assert stages.NAMES == ("toyworld", "download", "encoder", "embed", "index", "vocabulary", "concepts", "curate",
                            "semantic_gap", "train", "evaluate")
    assert [s.name for s in stages.STAGE_SPECS] == list(stages.NAMES)
    assert stages.applicable_stages(REAL) == [n for n in stages.NAMES if n not in ("toyworld", "semantic_gap")]
    with pytest.raises(stages.StageError, match="'evaluat' is not a stage; stages: toyworld, download"):
        stages.get("evaluat")


@pytest.mark.parametrize("name", stages.NAMES)
def test_module_is_one_stage_with_its_spec(name):
    mod = importlib.import_module(f"cocu_core.stages.{name}")
    assert isinstance(mod.STAGE, Stage) and mod.STAGE is stages.get(name)
    assert mod.STAGE.name == name == mod.__name__.rsplit(".", 1)[1]


@pytest.mark.parametrize("name", stages.NAMES)
def test_docstring_says_what_it_reads_writes_and_keys_on(name):
    doc = importlib.import_module(f"cocu_core.stages.{name}").__doc__ or ""
    assert doc.splitlines()[0].startswith(f"{name}: ")
    for section in ("Reads", "Writes", "Key"):
        assert re.search(rf"^{section}\s+\S", doc, re.M), f"{name}: no '{section}' line"


@pytest.mark.parametrize("name", stages.NAMES)
def test_key_fields_resolve_in_the_config(name):
    spec = stages.get(name)
    assert spec.fields, f"{name} declares no config field"
    for cfg in (TOY, REAL):
        values = cfg.fields_for(list(spec.fields))  # raises on a field that does not exist
        assert set(values) == set(spec.fields)
    mod = importlib.import_module(f"cocu_core.stages.{name}")
    assert tuple(mod.FIELDS) == spec.fields


@pytest.mark.parametrize("name", stages.NAMES)
def test_needs_are_earlier_stages(name):
    needs = stages.get(name).needs
    assert all(n in stages.NAMES for n in needs)
    assert all(stages.NAMES.index(n) < stages.NAMES.index(name) for n in needs)


@pytest.mark.parametrize("name", stages.NAMES)
def test_folder_is_under_the_work_folder(name):
    for cfg in (TOY, REAL):
        d = layout.stage_dir(cfg, name)
        assert d.is_relative_to(cfg.workpath) and d != cfg.workpath
        assert Context(cfg).dir(name) == d
    assert layout.stage_dir(TOY, name).relative_to(TOY.workpath).parts[0] == layout.FOLDERS.get(name, name).split("/")[0]


@pytest.mark.parametrize("name", stages.NAMES)
def test_run_takes_the_context_and_status_takes_config_and_upstream(name):
    spec = stages.get(name)
    params = list(inspect.signature(spec.run).parameters.values())
    assert params[0].name == "ctx"
    assert all(p.default is not inspect.Parameter.empty for p in params[1:])  # the fan-out's `prep=None` only
    assert list(inspect.signature(spec.status).parameters) == ["cfg", "up"]


@pytest.mark.parametrize("name", stages.NAMES)
def test_status_of_an_empty_work_folder_is_not_done(name, tmp_path):
    cfg = load_config(ROOT / "configs" / "toy.yaml", {"workdir": str(tmp_path)})
    rows = {r.stage: r for r in stages.pipeline_status(cfg)}
    assert rows[name].state in ("missing", "stale", "partial")


@pytest.mark.parametrize("name", stages.NAMES)
def test_an_artifact_renderer_exists(name):
    from flows import publish

    assert callable(publish.REPORT[name])
    assert list(inspect.signature(publish.REPORT[name]).parameters)[:3] == ["cfg", "rep", "secs"]
