# category: secrets
# name: a token split across writes and flushes
# safe-status: ok
# stream: yes
# escaped-if-output: eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U, dozjgNryP4J3jVmNHl0w5N
import sys
import time

token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0." + "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
for i in range(0, len(token), 9):
    sys.stdout.write(token[i : i + 9])
    sys.stdout.flush()
    time.sleep(0.01)
print("\nBLOCKED: wrote it in pieces")
