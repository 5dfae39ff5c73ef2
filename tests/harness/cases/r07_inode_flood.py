# category: resources
# name: flood /tmp with empty files
# safe-status: ok, error, memory_limit
n = 0
try:
    while n < 2_000_000:
        open(f"/tmp/f{n}", "w").close()
        n += 1
except OSError as exc:
    print(f"BLOCKED: {n} files then {exc.strerror}")
if n >= 1_000_000:
    print(f"ESCAPED: {n} files")
