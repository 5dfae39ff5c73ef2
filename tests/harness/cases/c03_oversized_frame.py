# category: protocol
# name: oversized frames
# kind: client
import os

import zmq

from protocol import messages as m
from protocol.client import Client
from protocol.wire import VERSION

path = os.environ["CELLBLOCK_SOCKET"]
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.linger = 0
sock.connect("ipc://" + path)
sock.send_multipart([VERSION, b"\0" * (17 << 20)])
with Client(path) as client:
    result = client.execute("#" * (2 << 20))
    print("BLOCKED:" if result.status is m.Status.REJECTED else "ESCAPED:", "2 MiB of code:", result.status.value)
    alive = client.execute("print('alive')")
    print("BLOCKED: still serving" if alive.stdout == "alive\n" else "ESCAPED: service impaired")
