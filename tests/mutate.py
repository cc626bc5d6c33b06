"""Helpers that damage valid inputs on purpose: edit a nested config by dotted path, write junk to a file."""

from __future__ import annotations

from pathlib import Path

#: `set_path(d, path, DELETE)` removes the key instead of setting it.
DELETE = object()


def set_path(d: dict, path: str, value) -> None:
    """Set (or, with DELETE, remove) `d[a][b][0]...` for the path "a.b.0..."; digits index lists."""
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for k in keys[:-1]:
        d = d[k]
    if value is DELETE:
        del d[keys[-1]]
    else:
        d[keys[-1]] = value


def write_junk(path: Path, content: bytes | str) -> None:
    """Bytes as they are; text as UTF-8, lone surrogates included (hypothesis draws them)."""
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
