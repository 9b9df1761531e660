"""The `cocu` command line: help, toy world generation with a gap table, clean user errors, layering."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cocu(*args: str, cwd: Path = ROOT, module: str = "flows.cli"):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_help_lists_subcommands():
    r = _cocu("--help")
    assert r.returncode == 0
    for sub in ("toyworld", "run", "doctor", "config", "status", "deploy", "encoder-report"):
        assert sub in r.stdout, sub


def test_console_script_points_at_flows_cli():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"cocu": "flows.cli:main"}


def test_cocu_core_never_imports_prefect_or_flows():
    # statically: no module of the library names prefect or flows in an import
    offenders = []
    for path in (ROOT / "cocu_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ("prefect", "flows")]
    assert not offenders
    # and at run time: the library's own command line builds every parser without loading them
    code = ("import sys; from cocu_core.cli import build_parser; p = build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'flows')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_library_cli_has_no_flow_commands_but_the_rest():
    r = _cocu("--help", module="cocu_core.cli")
    assert r.returncode == 0
    assert "toyworld" in r.stdout and "config" in r.stdout
    assert " run " not in r.stdout and "deploy" not in r.stdout


def test_toyworld_writes_splits_and_prints_gap(tmp_path):
    # --n 150: web 2n, val n/10 (15, above the floor of 10); 465 images where the README's --n 2000 renders 6,200
    r = _cocu("toyworld", "--out", str(tmp_path / "w"), "--n", "150")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "train=150" in r.stdout and "web=300" in r.stdout and "val=15" in r.stdout
    assert "ALL stuff" in r.stdout and "gap %" in r.stdout
    import pyarrow.parquet as pq

    for split, n in (("web", 300), ("train", 150), ("val", 15)):
        rows = pq.read_table(tmp_path / "w" / split / "pairs.parquet").to_pylist()
        assert len(rows) == n and all((tmp_path / "w" / split / row["file"]).is_file() for row in rows)


def test_bad_config_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("index:\n  recal_k: 8\n")
    r = _cocu("config", "-c", str(bad))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "index.recal_k" in r.stderr and str(bad) in r.stderr
    r = _cocu("run", "-c", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
