"""Files a request hands in and a run gives back: what a name may be, what a file is.

Shared by the broker (which checks a request's names before anything runs)
and the monitor (which checks them again where it writes).
"""

from __future__ import annotations

import mimetypes

MAX_DEPTH = 8  # folders deep, in a name and under /work/out
TEMPORARY = ".cellblock-upload-"  # files in are written under these names, then renamed
DEVICE_NAMES = frozenset(
    ["con", "prn", "aux", "nul"] + [f"com{i}" for i in range(1, 10)] + [f"lpt{i}" for i in range(1, 10)]
)
# The standard library's own table only: never the host's /etc/mime.types,
# which the sandbox does not have and which would make the answer host-specific.
_types = mimetypes.MimeTypes(filenames=())
_TEXT_TYPES = ("application/json", "application/xml", "application/javascript", "image/svg+xml")


def media_type(name: str) -> str:
    guessed, _ = _types.guess_type(name, strict=False)
    if guessed is None and name.endswith((".md", ".log", ".tsv", ".jsonl", ".toml", ".yaml", ".yml")):
        return "text/plain"
    return guessed or "application/octet-stream"


def is_text(media: str) -> bool:
    return media.startswith("text/") or media in _TEXT_TYPES


def name_problem(name: str) -> str:
    """Why ``name`` cannot be a file under /work ("" when it can)."""
    if not name or len(name) > 255:
        return "must be 1-255 characters"
    if name.startswith("/"):
        return "must be relative to /work, not absolute"
    if "\\" in name or "\0" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "must not hold control characters, NUL or backslashes"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "must not hold empty, '.' or '..' parts"
    if any(part.startswith(TEMPORARY) for part in parts):
        return f"must not start with {TEMPORARY!r} (cellblock's own temporary names)"
    if parts[-1].split(".")[0].lower() in DEVICE_NAMES:
        return "must not be a device name (CON, NUL, COM1, ...): the file may be saved on any system"
    if len(parts) > MAX_DEPTH:
        return f"must be at most {MAX_DEPTH} folders deep"
    return ""
