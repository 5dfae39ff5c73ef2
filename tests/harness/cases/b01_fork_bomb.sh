# category: resources
# name: fork bomb in bash
# safe-status: ok, error, killed, timeout
# timeout: 5
bomb() { bomb | bomb & }
bomb 2>/dev/null
sleep 1
count=$(ls /proc | grep -c '^[0-9]')
if [ "$count" -gt 200 ]; then echo "ESCAPED: $count processes"; else echo "BLOCKED: $count processes at most"; fi
