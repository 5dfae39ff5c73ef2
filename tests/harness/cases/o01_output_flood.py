# category: output
# name: 100 MB of output
# safe-status: ok, output_limit
# expect-truncated: yes
import os

block = b"x" * (1 << 20)
for _ in range(100):
    os.write(1, block)
