"""The egress proxy: the only way out of a sandbox, for runs that hold a net grant.

A sandbox has no network of its own. For a run with a net grant the broker
asks this process to open a unix socket for that run alone; the worker binds
it into the sandbox at /mnt/egress.sock, a forwarder inside listens on the
sandbox's 127.0.0.1:3128, and HTTP_PROXY/HTTPS_PROXY point there. Every
request names its host (HTTP CONNECT, or an absolute URL for plain HTTP),
and this process decides:

1. deny patterns of the operator win over any grant;
2. the host must match one of the run's grants (``example.com`` exactly,
   ``*.example.com`` any subdomain);
3. an IP literal is refused unless granted by that address;
4. names are resolved here, never in the sandbox, and an answer that is not
   a public unicast address (``non_public``: private, loopback, link-local,
   shared, multicast, reserved, documentation, benchmarking, or IPv4 of
   those kinds carried inside IPv6) is refused (no DNS rebinding), unless
   the operator lists that address and port in ``egress.allow_targets``;
   a literal granted by address is held to the same policy.

Plain HTTP is read request by request, and each one is checked and recorded
before any of it is forwarded: its head, then its body as its one framing
says (Content-Length or chunked; both, or anything ambiguous, is refused as
smuggling). The proxy writes what goes upstream itself (the URL's host,
framing as parsed, ``Connection: close``), one upstream connection per
request, so an upstream that keeps connections open never receives bytes
the proxy did not check. A request that is refused ends the connection and
nothing after it is read. Inside a CONNECT tunnel the bytes go to the
granted host only. Each decision, counted when it repeats and with the
bytes sent each way, is reported to the broker when the run closes;
refusals for load (429) and connections cut off for a slow or oversized
head are decisions too, with host "" and port 0.
"""

from supervisor.egress.addresses import non_public
from supervisor.egress.http import HEAD_LIMIT
from supervisor.egress.proxy import MAX_CONNECTIONS, EgressConfig, Proxy
from supervisor.egress.record import MAX_DECISIONS, Run

__all__ = ["HEAD_LIMIT", "MAX_CONNECTIONS", "MAX_DECISIONS", "EgressConfig", "Proxy", "Run", "non_public"]
