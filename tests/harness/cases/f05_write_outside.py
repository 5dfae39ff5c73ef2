# category: filesystem
# name: write outside the work directory
# safe-status: ok
for path in (
    "/usr/cellblock-escape-marker",
    "/etc/cellblock-escape-marker",
    "/cellblock-escape-marker",
    "/proc/sys/kernel/hostname",
    "/dev/cellblock-escape-marker",
):
    try:
        with open(path, "w") as out:
            out.write("x")
        print("ESCAPED: wrote", path)
    except OSError as exc:
        print("BLOCKED:", path, exc.strerror)
