# category: filesystem
# name: symlink to host paths
# safe-status: ok
import os

os.symlink("/root", "/work/r")
os.symlink("/etc/shadow", "/tmp/s")
for path in ("/work/r", "/tmp/s"):
    try:
        print("ESCAPED:", path, os.listdir(path) if os.path.isdir(path) else open(path).read(10))
    except OSError as exc:
        print("BLOCKED:", path, exc.strerror)
