"""Becoming the service's own unprivileged user, for the processes that talk to untrusted
peers; and who else may reach the socket the clients connect to."""

from __future__ import annotations

import os

import prctl

from supervisor.config import group_id


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


def expose(path: str, group: str) -> None:
    """Who may connect to a socket the service bound: ``[service] client_group``. "": its
    own user only (and root); a group: that group's members; "*": every local user. The
    runtime directory must let them through (``supervisor.main``: 0711 then)."""
    if group == "*":
        os.chmod(path, 0o666)  # noqa: S103 - the operator's choice; each uid is its own client unless trusted
        return
    if group:
        os.chown(path, -1, group_id(group))
    os.chmod(path, 0o660 if group else 0o600)
