# category: network
# name: raw and packet sockets
# safe-status: ok
import socket

for family, kind, proto in (
    (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    (socket.AF_PACKET, socket.SOCK_RAW, 0),
    (socket.AF_NETLINK, socket.SOCK_RAW, 0),
):
    try:
        socket.socket(family, kind, proto)
        print("ESCAPED: opened", family, kind)
    except OSError as exc:
        print("BLOCKED:", family, exc.strerror)
