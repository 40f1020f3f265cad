"""Progress bars: a consumer of job progress events. Never touches workers.

Counts arrive once per finished chunk (they ride on result messages), and the bar is drawn in the caller's
process. Richer displays (notebook widgets, log lines, the dashboard) plug in here later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._errors import ConfigError

STYLES = (None, "std", "notebook", "rich")
_RESERVED_OPTIONS = ("total", "iterable")


def check_progress_options(style: str | None, options: dict[str, Any] | None) -> None:
    if style not in STYLES:
        raise ConfigError(
            f"progress_bar_style must be one of {', '.join(map(repr, STYLES))}, got {style!r}"
            + (" (the dashboard is not available yet)" if style == "dashboard" else "")
        )
    if options is not None:
        if not isinstance(options, dict):
            raise ConfigError(f"progress_bar_options must be a dict of tqdm options, got {options!r}")
        for key in _RESERVED_OPTIONS:
            if key in options:
                raise ConfigError(f"progress_bar_options may not set {key!r}: parallelize sets it from the input")


class ProgressBar:
    """A tqdm bar fed by job progress callbacks."""

    def __init__(self, total: int | None, options: dict[str, Any] | None, style: str | None) -> None:
        tqdm_class = _tqdm_class(style)
        self._bar = tqdm_class(total=total, **(options or {}))

    @property
    def update(self) -> Callable[[int], Any]:
        return self._bar.update  # type: ignore[no-any-return]

    def close(self, *, failed: bool = False) -> None:
        if failed and hasattr(self._bar, "set_description_str"):
            self._bar.set_description_str((self._bar.desc or "") + " (failed)", refresh=False)
        self._bar.close()


def _tqdm_class(style: str | None) -> Any:
    if style == "notebook":
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm
    if style == "rich":
        from tqdm.rich import tqdm as rich_tqdm

        return rich_tqdm
    from tqdm import tqdm

    return tqdm
