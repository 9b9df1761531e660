"""The paper's ablation (Table 3) in miniature: a thin wrapper over `cocu ablation` (same flow, same outputs).

Usage: .venv/bin/python benchmarks/ablation.py [-c configs/toy.yaml] [--arms baseline,cocu] [--seeds 0,1]
       [--set ablation.epochs=5]. Writes <workdir>/ablation/ (table.md, loss_curves.png, maps/, report.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.cli import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a in ("-c", "--config") or a.startswith("--config=") for a in args):
        args = ["--config", "configs/toy.yaml", *args]
    raise SystemExit(main(["ablation", *args]))
