"""Type=notify: a real service tells systemd READY=1 once it serves, and STOPPING=1 as it drains.

systemd is not this host's init, so the test plays systemd's part: a datagram
socket named by NOTIFY_SOCKET, as systemd gives a Type=notify service.
"""

from __future__ import annotations

import os
import pathlib
import socket
from collections.abc import Iterator

import pytest

from protocol.client import Client
from supervisor.tools.embedded import Embedded

pytestmark = pytest.mark.integration


@pytest.fixture
def notify(tmp_path: pathlib.Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    os.chmod(tmp_path, 0o755)
    os.chmod(path, 0o777)  # the service's main keeps the invoking uid, but the test may run as any
    sock.settimeout(30)
    yield path, sock
    sock.close()


def config(tmp_path: pathlib.Path) -> str:
    path = tmp_path / "cellblock.toml"
    path.write_text(f'[service]\nstate_dir = "{tmp_path / "state"}"\npool = {{"python:data" = 0}}\n')
    return str(path)


def test_the_service_says_ready_once_it_serves_and_stopping_as_it_drains(
    tmp_path: pathlib.Path, notify: tuple[str, socket.socket]
) -> None:
    path, sock = notify
    service = Embedded(config=config(tmp_path), extra_env={"NOTIFY_SOCKET": path})
    client_sock = service.start()
    try:
        assert sock.recv(4096) == b"READY=1"
        with Client(client_sock) as client:
            assert client.status().uptime_s >= 0  # ready meant serving
    finally:
        service.stop()
    assert sock.recv(4096) == b"STOPPING=1"


def test_an_embedded_service_does_not_speak_for_its_host_apps_unit(
    tmp_path: pathlib.Path, notify: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host app that is itself a Type=notify unit starts an embedded service: its systemd
    must hear nothing from it."""
    path, sock = notify
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    service = Embedded(config=config(tmp_path))
    service.start()
    service.stop()
    sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        sock.recv(4096)
