"""The `cocu` command line: help, toy world generation with a gap table, clean user errors."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cocu(*args: str, cwd: Path = ROOT):
    return subprocess.run([sys.executable, "-m", "cocu_core.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_help_lists_subcommands():
    r = _cocu("--help")
    assert r.returncode == 0
    for sub in ("toyworld", "run", "doctor", "config"):
        assert sub in r.stdout


def test_toyworld_writes_splits_and_prints_gap(tmp_path):
    r = _cocu("toyworld", "--out", str(tmp_path / "w"), "--n", "2000")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "train=2000" in r.stdout and "web=4000" in r.stdout and "val=200" in r.stdout
    assert "ALL stuff" in r.stdout and "gap %" in r.stdout
    for split in ("web", "train", "val"):
        assert (tmp_path / "w" / split / "pairs.parquet").is_file()


def test_bad_config_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("index:\n  recal_k: 8\n")
    r = _cocu("config", "-c", str(bad))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "index.recal_k" in r.stderr and str(bad) in r.stderr
    r = _cocu("run", "-c", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
