# category: privilege
# name: setuid binaries
# safe-status: ok
import os
import subprocess

for path in ("/usr/bin/su", "/usr/bin/passwd", "/usr/bin/mount"):
    if os.path.exists(path):
        out = subprocess.run([path, "--help"], capture_output=True, text=True)
        print("BLOCKED:", path, "ran as uid", os.getuid())
print("euid after:", os.geteuid())
if os.geteuid() == 0:
    print("ESCAPED: root")
