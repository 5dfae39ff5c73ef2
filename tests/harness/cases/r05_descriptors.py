# category: resources
# name: exhaust file descriptors
# safe-status: ok
import os

fds = []
try:
    while len(fds) < 1_000_000:
        fds.append(os.open("/dev/null", os.O_RDONLY))
except OSError as exc:
    print(f"BLOCKED: {len(fds)} descriptors then {exc.strerror}")
if len(fds) > 100_000:
    print(f"ESCAPED: {len(fds)} descriptors")
