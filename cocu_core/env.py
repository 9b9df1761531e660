"""The process environment every entry point sets before heavy imports: quiet and offline by default.

Why one place: the command line, the flows and the stage subprocesses need the same variables
(ENVIRONMENT.md trap 11: albumentations' update check, Prefect telemetry, hub retries, tokenizer forks).
"""

from __future__ import annotations

import os

QUIET_ENV: dict[str, str] = {
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # Prefect's temporary API server gets 20 s to start by default: too short on a loaded 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def apply_quiet_env() -> None:
    """Why: set each variable only where the user has not chosen a value."""
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
