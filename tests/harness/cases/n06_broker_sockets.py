# category: network
# name: unix sockets toward the broker and launcher
# safe-status: ok
import socket

for name in ("client.sock", "workers.sock", "launcher.sock"):
    path = "{{RUNDIR}}/" + name
    for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET):
        try:
            socket.socket(socket.AF_UNIX, kind).connect(path)
            print("ESCAPED: connected to", path)
        except OSError as exc:
            print("BLOCKED:", name, exc.strerror)
try:
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect("\0cellblock-harness-{{HOST_TCP_PORT}}")
    print("ESCAPED: reached a host abstract socket")
except OSError as exc:
    print("BLOCKED: abstract", exc.strerror)
