# category: network
# name: UDP to the host and the internet
# safe-status: ok
import socket

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for target in (("127.0.0.1", {{HOST_UDP_PORT}}), ("8.8.8.8", 53)):
    try:
        s.sendto(b"ESCAPE", target)
        print("sent (check the host side)", target)
    except OSError as exc:
        print("BLOCKED:", target, exc.strerror)
