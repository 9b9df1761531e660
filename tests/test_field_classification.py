"""Every config field is classified: in some stage's cache key, or declared recorded-only, never both, never stale.

Why: the cache keys are explicit allow-lists (each stage module's FIELDS), so a new field that changes results
would otherwise be silently unkeyed: its change would reuse stale outputs. The classification is read from the
code (`cocu_core.stages.key_fields()` / `runtime_fields()`), so fields added later are checked too. Over-keying is
checked where it can be: a keyed field must be read (as an attribute) by its stage's own code or a `cocu_core`
module it imports; a key field nobody reads would make reruns for nothing.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from pydantic import BaseModel, Field, create_model

from cocu_core import stages
from cocu_core.config import PipelineConfig, TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def leaf_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of the model's leaf fields (nested sections walked, dict/list-valued fields are leaves)."""
    out = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += leaf_fields(ann, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def covers(declared: str, leaf: str) -> bool:
    return leaf == declared or leaf.startswith(declared + ".")


def unclassified(model: type[BaseModel], keyed, runtime) -> list[str]:
    return [f for f in leaf_fields(model) if not any(covers(d, f) for d in [*keyed, *runtime])]


def test_every_config_field_is_keyed_or_declared_runtime_only():
    keyed, runtime = stages.key_fields(), stages.runtime_fields()
    missing = unclassified(PipelineConfig, keyed, runtime)
    assert not missing, (f"config fields in no stage's cache key and not declared runtime-only: {missing}; add each "
                         "to the FIELDS of the stage whose results it changes, or to that module's RUNTIME_FIELDS "
                         "(or cocu_core.stages.UNKEYED_FIELDS) with the reason it changes no result")


def test_the_check_fails_on_a_new_unclassified_field():
    # a field added to a section without a classification: the test above would name it
    Extended = create_model("Extended", __base__=PipelineConfig,
                            train=(create_model("T2", __base__=TrainConfig, new_knob=(int, Field(1, description="x"))),
                                   Field(default_factory=TrainConfig)))
    keyed = {f: s for f, s in stages.key_fields().items() if not f.startswith("train.")}  # train keys by listing
    keyed.update({f"train.{k}": ("train",) for k in TrainConfig.model_fields})
    assert unclassified(Extended, keyed, stages.runtime_fields()) == ["train.new_knob"]


def test_no_field_is_both_keyed_and_runtime_only():
    keyed, runtime = stages.key_fields(), stages.runtime_fields()
    both = {f: (keyed[f], runtime[r]) for f in keyed for r in runtime if covers(r, f) or covers(f, r)}
    assert not both, f"fields both in a cache key and declared runtime-only: {both}"


@pytest.mark.parametrize("name", sorted({*stages.key_fields(), *stages.runtime_fields()}))
def test_every_declared_name_is_a_config_field(name):
    cfg = PipelineConfig()
    try:
        cfg.get(name)
    except AttributeError:
        pytest.fail(f"'{name}' is declared in a stage's field lists but is not a config field (renamed or removed?)")


def test_undeclared_runtime_fields_are_not_in_any_stage_key():
    # a stage module's RUNTIME_FIELDS are recorded, not keyed: none of them reaches that stage's key
    for spec in stages.STAGE_SPECS:
        mod = importlib.import_module(f"cocu_core.stages.{spec.name}")
        for f in getattr(mod, "RUNTIME_FIELDS", ()):
            assert not any(covers(f, k) or covers(k, f) for k in spec.fields), (spec.name, f)


# --- over-keying: a keyed field must be read by the stage's code ---------------------------------------------------

def _module_file(name: str) -> Path | None:
    p = ROOT / Path(*name.split("."))
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else (p / "__init__.py" if p.is_dir() else None)


def _imports(tree: ast.AST, module: str) -> set[str]:
    """cocu_core modules a module imports, at module level or inside functions (lazy imports count)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("cocu_core")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cocu_core"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}")}
    return out


def _attributes_read(module: str) -> set[str]:
    """Attribute names read by a stage module and every cocu_core module it reaches by imports; config.py (where
    the fields are declared) and the registry (which imports every stage) are left out."""
    skip = {"cocu_core.config", "cocu_core.stages", "cocu_core", "cocu_core.cli"}
    seen, todo, attrs = set(), [module], set()
    while todo:
        m = todo.pop()
        f = _module_file(m)
        if m in seen or m in skip or f is None:
            continue
        seen.add(m)
        tree = ast.parse(f.read_text())
        attrs |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        todo += sorted(_imports(tree, m))
    return attrs


@pytest.mark.parametrize("spec", stages.STAGE_SPECS, ids=lambda s: s.name)
def test_every_keyed_field_is_read_by_its_stage(spec):
    read = _attributes_read(f"cocu_core.stages.{spec.name}")
    keyed = [f for f, names in stages.key_fields().items() if spec.name in names]
    assert keyed, spec.name
    # a whole section keyed at once (data.toyworld) is read through its own fields: each must be read
    leaves = [leaf for f in keyed for leaf in leaf_fields(PipelineConfig) if covers(f, leaf)]
    unread = [leaf for leaf in leaves if leaf.split(".")[-1] not in read]
    assert not unread, (f"stage {spec.name} keys {unread} but neither it nor the cocu_core modules it imports read "
                        "them: drop them from its key, or say where they are read")


def test_the_read_check_tells_a_field_the_stage_never_reads():
    # the index stage reads its index settings and never the clustering's: keying kmeans_iters there would fail
    read = _attributes_read("cocu_core.stages.index")
    assert {"max_index_memory_usage", "recall_k", "seed"} <= read and "kmeans_iters" not in read
