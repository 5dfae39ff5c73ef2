# category: filesystem
# name: path traversal out of /work
# safe-status: ok
import os

found = []
for path in (
    "/work/../../root",
    "/work/../../../home",
    "/../../root/.bash_history",
    "/proc/1/root/root",
    "/proc/self/root/../../root",
):
    try:
        found.append((path, os.listdir(path) if os.path.isdir(path) else open(path).read(10)))
    except OSError as exc:
        print("BLOCKED:", path, exc.strerror)
for path, what in found:
    if what:
        print("ESCAPED:", path, str(what)[:60])
