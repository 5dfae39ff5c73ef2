# category: resources
# name: fill the work directory
# safe-status: ok
written = 0
try:
    with open("/work/fill", "wb") as out:
        while written < (2 << 30):
            out.write(b"\0" * (1 << 20))
            written += 1 << 20
except OSError as exc:
    print(f"BLOCKED: stopped at {written >> 20} MiB: {exc.strerror}")
if written >= (1 << 30):
    print(f"ESCAPED: wrote {written >> 20} MiB")
