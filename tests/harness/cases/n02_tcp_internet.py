# category: network
# name: TCP to the internet
# safe-status: ok
import socket

for host in (("1.1.1.1", 443), ("8.8.8.8", 53), ("10.0.0.1", 80)):
    try:
        socket.create_connection(host, timeout=2)
        print("ESCAPED: connected to", host)
    except OSError as exc:
        print("BLOCKED:", host, exc.strerror or exc)
