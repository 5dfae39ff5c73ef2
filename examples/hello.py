# Runs in a fresh sandbox: its own pid, mount, network, ipc and uts
# namespaces, a read-only root, no capabilities, a seccomp filter.
import os
import platform
import socket

print("hello from cellblock")
print(f"python {platform.python_version()}, pid {os.getpid()}, uid {os.getuid()}, host {socket.gethostname()}")
print(f"cwd {os.getcwd()}, root holds {sorted(os.listdir('/'))}")
try:
    with open("/etc/shadow") as secrets:
        secrets.read()
except OSError as exc:
    print(f"/etc/shadow: {exc.strerror}")
try:
    socket.create_connection(("1.1.1.1", 53), timeout=1)
except OSError as exc:
    print(f"network: {exc.strerror or exc}")
