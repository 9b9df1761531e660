"""The Progress artifact of a long stage: a thread polls what the stage leaves on disk (its probe), so the stage code
knows nothing about Prefect; a log line with `step i/n` moves the bar too."""

from __future__ import annotations

import re
import threading
from typing import Any, Callable, Optional

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from cocu_core.config import PipelineConfig
from flows.publish import artifact_key

STEP = re.compile(r"step (\d+)\s*/\s*(\d+)")


class Progress:
    """Why: long stages (download, embed, train) show a progress artifact and log their progress."""

    def __init__(self, cfg: PipelineConfig, stage: str, probe: Callable[[], tuple[float, str]], every: float = 2.0):
        self.cfg, self.stage, self.probe, self.every = cfg, stage, probe, every
        self.logger = get_run_logger()
        self._stop = threading.Event()
        self._id = None
        self._last = ""

    @classmethod
    def maybe(cls, cfg: PipelineConfig, stage: str,
              probe: Optional[Callable[[PipelineConfig], Callable[[], tuple[float, str]]]]) -> "Progress | _NoProgress":
        """Why: stages with a probe get a bar; the others run under a no-op with the same face."""
        return cls(cfg, stage, probe(cfg)) if probe is not None else _NoProgress()

    def _tick(self) -> None:
        try:
            frac, msg = self.probe()
        except (OSError, ValueError, KeyError):  # files being written right now: next tick
            return
        if frac is not None:
            self.set(frac)
        if msg and msg != self._last:
            self.logger.info(msg)
            self._last = msg

    def set(self, frac: float) -> None:
        """Why: a stage that reports its own progress (a log line with `step i/n`) moves the bar directly."""
        if self._id is not None:
            update_progress_artifact(self._id, round(100 * min(max(frac, 0.0), 1.0), 1))

    def log_line(self, msg: str) -> None:
        """Why: the stage's log lines reach the flow-run log; `step i/n` moves the bar."""
        self.logger.info(msg)
        m = STEP.search(msg)
        if m and int(m.group(2)):
            self.set(int(m.group(1)) / int(m.group(2)))

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._tick()

    def __enter__(self) -> "Progress":
        self._id = create_progress_artifact(0.0, key=artifact_key(self.cfg, f"{self.stage}-progress"),
                                            description=f"{self.stage} progress")
        self._thread = threading.Thread(target=self._loop, name=f"progress-{self.stage}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if exc[0] is None:
            self._tick()
            update_progress_artifact(self._id, 100.0)


class _NoProgress:
    """Why: the same face as Progress for stages without a probe: log lines still reach the flow-run log."""

    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def log_line(self, msg: str) -> None:
        get_run_logger().info(msg)
