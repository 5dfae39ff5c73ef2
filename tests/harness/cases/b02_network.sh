# category: network
# name: TCP through /dev/tcp and DNS from bash
# safe-status: ok
if (exec 3<>/dev/tcp/127.0.0.1/{{HOST_TCP_PORT}}) 2>/dev/null; then echo "ESCAPED: host loopback"; else echo "BLOCKED: host loopback"; fi
if (exec 3<>/dev/tcp/1.1.1.1/443) 2>/dev/null; then echo "ESCAPED: internet"; else echo "BLOCKED: internet"; fi
if getent hosts example.com >/dev/null 2>&1; then echo "ESCAPED: dns"; else echo "BLOCKED: dns"; fi
