"""Text overlap between two sets of sentences: which of ``texts`` occur, as whole words, inside any of ``within``.

SST-2's training split holds phrases cut from its own sentences (every node of the parse trees), so a set that
only drops exact duplicates still shares text with another: "gorgeous film" sits inside "a gorgeous film , really".
A phrase counts as contained when its word sequence (lower-cased; words are runs of letters/digits and single
punctuation marks) is a contiguous run of a sentence's words. Cost: Σ over ``within`` of |s|·k dictionary look-ups,
k the number of distinct phrase lengths (a few seconds for SST-2's 67,349 phrases against themselves).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.lower()))


def contained_in(texts: list[str], within: Iterable[str]) -> np.ndarray:
    """Boolean [len(texts)]: True where text i equals, or is a contiguous word run of, some sentence of ``within``."""
    phrases: dict[tuple[str, ...], list[int]] = {}
    for i, text in enumerate(texts):
        w = words(text)
        if w:
            phrases.setdefault(w, []).append(i)
    hit = np.zeros(len(texts), dtype=bool)
    if not phrases:
        return hit
    lengths = sorted({len(w) for w in phrases})
    for sentence in within:
        w = words(sentence)
        for n in lengths:
            if n > len(w):
                break
            for start in range(len(w) - n + 1):
                found = phrases.get(w[start : start + n])
                if found is not None:
                    hit[found] = True
    return hit
