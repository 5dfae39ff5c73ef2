# category: privilege
# name: su, capabilities and the monitor from bash
# safe-status: ok
if [ "$(id -u)" = 0 ]; then echo "ESCAPED: uid 0"; else echo "BLOCKED: uid $(id -u)"; fi
grep -q 'CapEff:.*0000000000000000' /proc/self/status && echo "BLOCKED: no capabilities" || echo "ESCAPED: capabilities"
kill -9 1 2>/dev/null; sleep 0.1
echo "BLOCKED: still here after kill -9 1"
