# category: protocol
# name: worker messages forged on the client socket
# kind: client
import os

import msgspec
import zmq

from protocol import messages as m
from protocol.wire import VERSION, client_codec

codec = client_codec()
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.rcvtimeo = 3000
sock.connect("ipc://" + os.environ["CELLBLOCK_SOCKET"])
forged = [
    m.Ready(worker="w", runtime="python", pid=1),
    m.WorkerResult(id="x", status=m.Status.OK),
    m.Spawned(worker="w", runtime="python", pid=1),
    m.Kill(worker="w", reason="x"),
]
for message in forged:
    sock.send_multipart([VERSION, msgspec.msgpack.encode(message)])
    reply = codec.decode(sock.recv_multipart())
    if isinstance(reply, m.ErrorReply):
        print("BLOCKED:", type(message).__name__, reply.error.code)
    else:
        print("ESCAPED: accepted", type(message).__name__)
