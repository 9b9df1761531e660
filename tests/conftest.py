"""Shared test setup: offline/quiet environment and the project's WordNet folder."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

for k, v in {
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "NLTK_DATA": str(ROOT / ".nltk_data"),
    # Prefect waits 20 s for its ephemeral server by default; on a loaded 2-core machine a flow's second start
    # took longer and failed with "Timed out while attempting to connect" (test_flows_recurate, 2026-12-03)
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}.items():
    os.environ.setdefault(k, v)


# Session fixtures live here, not in a helper module the tests import: a fixture imported into several test
# modules is registered once per module, so "session" scope would still build it once per module.


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory) -> Path:
    """Why: one small toy world shared by the stage tests of a session."""
    from ingest_fixtures import small_world

    return small_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="session")
def toy_encoder_weights(world_dir, tmp_path_factory) -> Path:
    """Why: the deploy, re-curation and embed-kill tests need a trained toy encoder, not its training: they read it
    (as `encoder.pretrained` weights, or a copy of its folder); one training on the session's small world serves all."""
    from cocu_core.encoder.train import train_toy_encoder
    from ingest_fixtures import small_config

    tmp = tmp_path_factory.mktemp("enc")
    # 16 epochs (80 steps, ~5 s): held-out R@1 0.14 and R@5 0.38 on the 50 held-out pairs (chance 0.02, 0.10);
    # 2 epochs reach only twice chance, 24 overfit the 350 pairs
    train_toy_encoder(small_config(tmp, encoder={"epochs": 16}), world_dir / "web", tmp / "encoder", progress=False)
    return tmp / "encoder" / "cocu-tiny.pt"
