# category: protocol
# name: a client floods requests
# kind: client
import os

import zmq

from protocol import messages as m
from protocol.client import Client
from protocol.wire import client_codec

codec = client_codec()
path = os.environ["CELLBLOCK_SOCKET"]
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.rcvtimeo = 60000
sock.connect("ipc://" + path)
n = 300
for i in range(n):
    sock.send_multipart(codec.encode(m.ExecuteRequest(id=f"r{i}", code="print(1)", client_id="flooder")))
replies = {}
while len(replies) < n:
    reply = codec.decode(sock.recv_multipart())
    if isinstance(reply, m.ExecuteResult):
        replies[reply.id] = reply.status.value
counts = {s: list(replies.values()).count(s) for s in set(replies.values())}
print("BLOCKED: one reply each:", counts)
with Client(path) as client:
    other = client.execute("print('served')", client_id="bystander")
    print("BLOCKED: bystander served" if other.stdout == "served\n" else f"ESCAPED: bystander got {other.status}")
