"""Long sequences through a model of limited context: overlapping windows, each position's
output kept from exactly one window (the code LM and its multi-level variant share this)."""

from __future__ import annotations


def plan_windows(num_positions: int, context: int, first: int = 0) -> list[tuple[int, int, int]]:
    """Cover positions ``first .. num_positions-1`` of a sequence with windows of at most
    ``context`` positions. Returns ``(start, end, emit_from)`` per window: feed positions
    ``start:end``, keep the outputs of ``emit_from:end`` (tokenlm.lm.code_lm says why half a context)."""
    if num_positions <= first:
        return []
    end = min(num_positions, context)
    windows = [(0, end, first)]
    hop = context - context // 2
    while end < num_positions:
        new_end = min(end + hop, num_positions)
        windows.append((new_end - context, new_end, end))
        end = new_end
    return windows
