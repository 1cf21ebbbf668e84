"""Best-fit decreasing bin packing: the one way items (clips into encoder windows, conversations into
token rows) are grouped here. Deterministic, no seed."""

from __future__ import annotations

import bisect
from collections.abc import Sequence


def best_fit_decreasing(sizes: Sequence[float], capacity: float) -> list[list[int]]:
    """Indices of `sizes` grouped into packs whose sizes add up to at most `capacity` (every size must
    fit alone). Largest first, each into the open pack it fills tightest. Within a pack the indices are
    in order; the packs come in the order of their first index."""
    packs: list[list[int]] = []
    rooms: list[tuple[float, int]] = []  # (room left, pack number) of every pack, sorted
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        slot = bisect.bisect_left(rooms, (sizes[i], -1))
        if slot < len(rooms):
            room, number = rooms.pop(slot)
            packs[number].append(i)
        else:
            room, number = capacity, len(packs)
            packs.append([i])
        bisect.insort(rooms, (room - sizes[i], number))
    return sorted((sorted(pack) for pack in packs), key=min)
