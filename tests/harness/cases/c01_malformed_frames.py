# category: protocol
# name: malformed frames from a client
# kind: client
import os

import zmq

from protocol.wire import VERSION, client_codec

codec = client_codec()
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.rcvtimeo = 3000
sock.connect("ipc://" + os.environ["CELLBLOCK_SOCKET"])
bad = [[os.urandom(40)], [VERSION, os.urandom(100)], [b"XX/1", b"\x80"], [VERSION, b"\x81\xa4type\xa5grant"], []]
for frames in bad:
    if not frames:
        continue
    sock.send_multipart(frames)
    try:
        reply = codec.decode(sock.recv_multipart())
        print("BLOCKED: error reply", getattr(reply, "error", None) and reply.error.code)
    except zmq.Again:
        print("ESCAPED: no reply to a bad frame")
