# category: leaks
# name: files left for the next run
# safe-status: ok
# kind: pair
import os

for path in ("/work/left-behind", "/tmp/left-behind", "/dev/shm/left-behind"):
    try:
        open(path, "w").write("secret from run one")
    except OSError:
        pass
print("BLOCKED: wrote the files")
# ---- second run ----
import os

for path in ("/work/left-behind", "/tmp/left-behind", "/dev/shm/left-behind"):
    if os.path.exists(path):
        print("ESCAPED: found", path)
print("BLOCKED: nothing found")
