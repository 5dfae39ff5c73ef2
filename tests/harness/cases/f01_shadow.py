# category: filesystem
# name: read /etc/shadow
# safe-status: ok
try:
    data = open("/etc/shadow").read()
    print("ESCAPED: /etc/shadow readable:", data[:20])
except OSError as exc:
    print("BLOCKED:", exc.strerror)
