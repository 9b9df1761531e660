"""What every benchmark reader shares: the ignore indices, the errors, the protocol settings and the sample."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np

from cocu_core.errors import CocuError

# ---------------------------------------------------------------------------------------------
# File reading


# ---------------------------------------------------------------------------------------------
# COCO instance annotations -> label map (no pycocotools)


# ---------------------------------------------------------------------------------------------
# Layout helpers


# ---------------------------------------------------------------------------------------------
# Segmentation datasets



IGNORE_INDEX = 255


IMAGENET_S_IGNORE = 1000  # ImageNet-S's own "ignored part" value


class DatasetLayoutError(FileNotFoundError, CocuError):
    """A dataset folder is missing or not in its standard layout; the message shows the expected one."""


class DatasetFileError(ValueError, CocuError):
    """One file of a dataset cannot be used (unreadable, wrong encoding, image/label size mismatch)."""


@dataclass(frozen=True)
class ProtocolSettings:
    """The test-time settings of the protocol for one dataset (GROUPVIT_PROTOCOL.md's table).

    Resize keeps the aspect ratio: the short side goes to ``resize_short`` unless the long side would
    pass ``resize_long`` (mmseg's ``Resize(img_scale=(long, short), keep_ratio=True)``); then sliding
    ``crop`` windows every ``stride`` px. ``bg_thresh`` is None where the dataset has no background class.
    ``downsample_large``: images of more than its square in pixels first go to long side ``downsample_large``.
    """

    resize_long: int
    resize_short: int
    crop: int
    stride: int
    bg_thresh: Optional[float]
    downsample_large: Optional[int] = None

    def override(
        self,
        resize_long: Optional[int] = None,
        resize_short: Optional[int] = None,
        crop: Optional[int] = None,
        stride: Optional[int] = None,
        bg_thresh: Optional[float] = None,
    ) -> "ProtocolSettings":
        """Why: config fields left None take the dataset's default; a threshold never gives a
        background class to a dataset that has none."""
        kw: dict[str, Any] = {k: v for k, v in (("resize_long", resize_long), ("resize_short", resize_short),
                                                 ("crop", crop), ("stride", stride)) if v is not None}
        if bg_thresh is not None and self.bg_thresh is not None:
            kw["bg_thresh"] = float(bg_thresh)
        return replace(self, **kw)


@dataclass(frozen=True)
class SegSample:
    """One evaluation image: ``image`` uint8 (H, W, 3) RGB, ``label`` int64 (H, W) class ids or ignore."""

    id: str
    image: np.ndarray
    label: np.ndarray
