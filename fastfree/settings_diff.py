"""Which settings differ between a stored configuration and the one asked for now, in words.

Refusals to resume name them ("free.bell.outer: 'interpolate' there, 'adam' now") so the fix is
plain: resume with the same flags, or start elsewhere.
"""

from __future__ import annotations


def _walk(have, want, prefix: str) -> list[str]:
    if isinstance(have, dict) and isinstance(want, dict):
        out = []
        for k in sorted(set(have) | set(want), key=str):
            out += _walk(have.get(k), want.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if have == want else [f"{prefix or 'value'}: {have!r} there, {want!r} now"]


def settings_diff(have: dict | None, want: dict, missing: str = "nothing stored") -> str:
    """'key.sub: A there, B now; ...' for every leaf that differs (pure)."""
    if have is None:
        return missing
    return "; ".join(_walk(have, want, "")) or "unknown difference"


__all__ = ["settings_diff"]
