"""An embedded service for one CLI call: start, wait until ready, stop.

``cellblock run`` uses a running service when one answers on the default
socket; otherwise it starts ``cellblock serve`` in a private runtime
directory just for the call, so a new user needs no daemon. The service
holds the read end of a lifeline pipe whose write end only this process
has: if this process dies without stopping it (SIGKILL, a crash), the
service sees EOF, drains and stops. Nothing is left running.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import IO

from supervisor.main import PROJECT_ROOT

START_TIMEOUT_S = 30.0


class EmbeddedError(Exception):
    pass


class Embedded:
    def __init__(
        self,
        config: str | None = None,
        pool: int = 1,
        profile: str | None = None,
        extra_env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
    ) -> None:
        """``prefix``: a command that execs the service (``nsenter --net=...``: tests of many nodes)."""
        self.config = config
        self.pool = pool
        self.profile = profile
        self.extra_env = extra_env or {}
        self.prefix = prefix or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmp = ""
        self.rundir = ""
        self.log: IO[bytes] | None = None
        self.lifeline = -1  # write end; closing it stops the service

    def start(self) -> str:
        self.tmp = tempfile.mkdtemp(prefix="cellblock-")
        os.chmod(self.tmp, 0o711)  # noqa: S103 - traverse only; the broker (its own uid when root) must reach its directory
        rundir = self.rundir = os.path.join(self.tmp, "run")
        ready_r, ready_w = os.pipe()
        lifeline_r, self.lifeline = os.pipe()  # both ends close-on-exec here: no other child inherits it
        cmd = [
            *self.prefix,
            sys.executable,
            "-m",
            "supervisor.tools.cli",
            "serve",
            "--runtime-dir",
            rundir,
            "--pool",
            str(self.pool),
            "--ready-fd",
            str(ready_w),
            "--lifeline-fd",
            str(lifeline_r),
        ]
        if self.config:
            cmd += ["--config", self.config]
        if self.profile:
            cmd += ["--profile", self.profile]
        env = dict(os.environ)
        env["PYTHONPATH"] = PROJECT_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        # A host app that is itself a Type=notify unit: its systemd must not hear our READY=1.
        env.pop("NOTIFY_SOCKET", None)
        env.update(self.extra_env)
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - kept open for the service's life
        self.proc = subprocess.Popen(
            cmd, pass_fds=[ready_w, lifeline_r], env=env, start_new_session=True, stdout=self.log, stderr=self.log
        )
        os.close(ready_w)
        os.close(lifeline_r)
        try:
            readable, _, _ = select.select([ready_r], [], [], START_TIMEOUT_S)
            ok = bool(readable) and os.read(ready_r, 1) == b"R"
        finally:
            os.close(ready_r)
        if not ok:
            code = self.proc.poll()
            self.stop()
            raise EmbeddedError(
                f"the embedded service did not start (exit {code}):\n{self.log_text()}"
                "run 'cellblock doctor' for what this host is missing"
            )
        return os.path.join(rundir, "client.sock")

    def log_text(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.lifeline >= 0:
            os.close(self.lifeline)
            self.lifeline = -1
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = ""
        if self.log is not None:
            self.log.close()
            self.log = None

    def __enter__(self) -> Embedded:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
