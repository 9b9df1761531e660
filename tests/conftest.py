"""Shared test setup: offline/quiet environment and the project's WordNet folder."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

for k, v in {
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "NLTK_DATA": str(ROOT / ".nltk_data"),
}.items():
    os.environ.setdefault(k, v)
