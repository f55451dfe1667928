"""Progress for a person watching: a tqdm bar on a terminal, plain log lines elsewhere.

Bars written to a file or a pipe leave cursor escape codes (``[A``) behind, so off a terminal no bar is drawn
and the drivers print one plain line per round (``simulate``) or per ``train.log_every`` steps (``train``).
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def on_terminal() -> bool:
    """Whether stderr, where tqdm draws, is a terminal."""
    return sys.stderr.isatty()


def progress_bar(iterable=None, *, enabled: bool, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, drawn only when ``enabled`` and on a terminal."""
    return tqdm(iterable, disable=not (enabled and on_terminal()), **kwargs)


def plain_lines(enabled: bool) -> bool:
    """Whether a driver prints plain progress lines: progress wanted, and no terminal to draw a bar on."""
    return enabled and not on_terminal()
