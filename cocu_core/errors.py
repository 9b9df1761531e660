"""The project's error base: every mistake a user can fix derives from `CocuError`.

Why: the command line prints one `error:` line (exit 2) for any of them, instead of each caller listing the
dozen error classes of the stages; each class keeps its old base too (FileNotFoundError, ValueError), so code
and tests that catch those still do.
"""

from __future__ import annotations


class CocuError(Exception):
    """A mistake the user can fix (bad config, missing or broken input): printed as one line."""
