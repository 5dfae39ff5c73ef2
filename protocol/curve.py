"""CURVE keys: making them, reading them, and the operator's list of allowed clients.

All cryptography is libzmq's (CurveZMQ, through pyzmq): this module only moves
32-byte keys between files and the Z85 text libzmq takes. A key pair lives in
two files in the ZeroMQ certificate format (czmq's and pyzmq's ``zmq.auth``):
``NAME.key`` holds the public key, ``NAME.key_secret`` both (mode 0600).

``authorized_keys`` (``[service] authorized_keys``) holds one client public key
per line, Z85 (40 characters) or base64 (44), optionally followed by a name::

    # tenant A's agents
    rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7  tenant-a
    Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID

A named key is the client ``curve:<name>`` (two keys may share a name: one
client, e.g. while a key is rotated); an unnamed one ``curve:<its key in hex>``.
That is the policy identity of every request it sends (rate, grants, history).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import time

import zmq
import zmq.auth
from zmq.utils import z85

KEY_BYTES = 32
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class KeyProblem(ValueError):
    """A key or key file that cannot be used; the message says which and why."""


def parse_key(text: str) -> bytes:
    """A 32-byte key from Z85 (40 characters) or base64 (44); the Z85 text libzmq takes."""
    text = text.strip()
    raw: bytes | None = None
    if len(text) == 40:
        try:
            raw = z85.decode(text.encode("ascii"))
        except (ValueError, KeyError, UnicodeEncodeError):
            raw = None
    elif len(text) == 44:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != KEY_BYTES:
        raise KeyProblem(f"not a CURVE key (Z85, 40 characters, or base64, 44): {text[:48]!r}")
    return z85.encode(raw)


def identity(key_z85: bytes, name: str = "") -> str:
    """The policy identity of a client key: ``curve:<name>``, or ``curve:<key in hex>``."""
    return f"curve:{name}" if name else f"curve:{z85.decode(key_z85).hex()}"


def parse_authorized(text: str, source: str = "authorized_keys") -> dict[bytes, str]:
    """Z85 public key -> identity, from an authorized_keys text; a bad line names its number."""
    keys: dict[bytes, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        # Z85 has "#" among its characters, but never first: a 32-bit group's first
        # digit is at most 82 ("#" is 84). So a word starting with "#" starts a comment.
        parts = line.split()
        for i, word in enumerate(parts):
            if word.startswith("#"):
                del parts[i:]
                break
        if not parts:
            continue
        if len(parts) > 2:
            raise KeyProblem(f"{source}:{number}: expected a key and at most one name, got {len(parts)} words")
        try:
            key = parse_key(parts[0])
        except KeyProblem as exc:
            raise KeyProblem(f"{source}:{number}: {exc}") from None
        name = parts[1] if len(parts) == 2 else ""
        if name and not NAME.match(name):
            raise KeyProblem(f"{source}:{number}: the name {name!r} must be letters, digits, '.', '_' or '-'")
        keys[key] = identity(key, name)
    return keys


def read_authorized(path: str) -> dict[bytes, str]:
    try:
        with open(path, encoding="utf-8") as src:
            return parse_authorized(src.read(), path)
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyProblem(f"{path}: cannot read ({exc})") from None


def load_public(spec: str) -> bytes:
    """A server's public key: Z85 or base64 text, or a certificate file (``NAME.key``)."""
    if os.path.isfile(spec):
        try:
            public, _ = zmq.auth.load_certificate(spec)
        except (OSError, ValueError) as exc:
            raise KeyProblem(f"{spec}: not a key file ({exc})") from None
        return parse_key(public.decode("ascii", "replace"))
    return parse_key(spec)


def load_pair(path: str) -> tuple[bytes, bytes]:
    """(public, secret), Z85, from a secret certificate file (``NAME.key_secret``)."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyProblem(f"{path}: not a key file ({exc})") from None
    if secret is None:
        raise KeyProblem(f"{path}: holds no secret key (use the .key_secret file of `cellblock keys new`)")
    secret = parse_key(secret.decode("ascii", "replace"))
    public = parse_key(public.decode("ascii", "replace"))
    if zmq.curve_public(secret) != public:
        raise KeyProblem(f"{path}: its public key is not the one of its secret key")
    return public, secret


def _write(path: str, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def new_pair(base: str) -> tuple[str, str, bytes]:
    """Write ``base.key`` (public, 0644) and ``base.key_secret`` (0600); never overwrites.
    Returns both paths and the public key (Z85)."""
    public, secret = zmq.curve_keypair()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    head = f"#   cellblock CURVE key pair, made {stamp} (ZeroMQ certificate format)\n"
    public_path, secret_path = f"{base}.key", f"{base}.key_secret"
    body = f'metadata\ncurve\n    public-key = "{public.decode()}"\n'
    _write(
        secret_path,
        head + "#   SECRET: keep it to its owner\n" + body + f'    secret-key = "{secret.decode()}"\n',
        0o600,
    )
    _write(public_path, head + body, 0o644)
    return public_path, secret_path, public
