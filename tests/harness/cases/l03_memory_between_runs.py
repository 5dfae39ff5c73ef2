# category: leaks
# name: interpreter state and SysV shared memory
# safe-status: ok
# kind: pair
import builtins
import ctypes

builtins.CELLBLOCK_LEAK = "run one"
libc = ctypes.CDLL(None, use_errno=True)
shmid = libc.shmget(0x5EC7, 4096, 0o1666)
print("BLOCKED: shm", shmid)
# ---- second run ----
import builtins
import ctypes

if hasattr(builtins, "CELLBLOCK_LEAK"):
    print("ESCAPED: interpreter state survived")
libc = ctypes.CDLL(None, use_errno=True)
if libc.shmget(0x5EC7, 0, 0) >= 0:
    print("ESCAPED: shared memory survived")
print("BLOCKED: clean")
