"""The package's logger, made on first use: importing logging takes a few ms, which a program whose pools never
log anything (no worker died, no settings changed) should not pay at start-up."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging


def logger() -> logging.Logger:
    import logging

    return logging.getLogger("parallelize")


def debugging() -> bool:
    """Whether the package's logger takes debug records."""
    import logging

    return logger().isEnabledFor(logging.DEBUG)
