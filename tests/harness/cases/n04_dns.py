# category: network
# name: DNS resolution
# safe-status: ok
import socket

try:
    print("ESCAPED: resolved", socket.getaddrinfo("example.com", 443)[0][4])
except OSError as exc:
    print("BLOCKED:", exc)
