# category: escape
# name: unshare, mount, chroot and nsenter from bash
# safe-status: ok
for cmd in "unshare -U true" "unshare -m true" "mount -t tmpfs x /tmp" "chroot / true" "nsenter -t 1 -m true"; do
  if $cmd 2>/dev/null; then echo "ESCAPED: $cmd"; else echo "BLOCKED: $cmd"; fi
done
