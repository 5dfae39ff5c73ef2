# category: filesystem
# name: host files from bash
# safe-status: ok
for p in /etc/shadow /root/.bash_history /home /proc/1/environ; do
  if cat "$p" >/dev/null 2>&1 || ls "$p" >/dev/null 2>&1 && [ -d "$p" ]; then echo "ESCAPED: $p"; else echo "BLOCKED: $p"; fi
done
if echo x > /etc/cellblock-escape-marker 2>/dev/null; then echo "ESCAPED: wrote /etc"; else echo "BLOCKED: write /etc"; fi
