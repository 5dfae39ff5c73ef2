# category: network
# name: TCP to a server on the host's loopback
# safe-status: ok
import socket

try:
    socket.create_connection(("127.0.0.1", {{HOST_TCP_PORT}}), timeout=2).sendall(b"ESCAPE")
    print("ESCAPED: reached the host's loopback")
except OSError as exc:
    print("BLOCKED:", exc.strerror or exc)
