"""Becoming the service's own unprivileged user, for the processes that talk to untrusted peers."""

from __future__ import annotations

import os

import prctl


def drop_privileges(uid: int) -> None:
    """Root mode: become ``uid`` (and its group), for good.

    Called once everything that needs root is done (modules imported, the
    database open, sockets bound): the checkout or the state directory's
    parents may not be reachable by that uid.
    """
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    prctl.set_no_new_privs(1)
    if set(os.getresuid()) != {uid} or set(os.getresgid()) != {uid}:
        raise PermissionError(f"could not drop to uid {uid}")
