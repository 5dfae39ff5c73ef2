# category: resources
# name: spin forever in several processes
# safe-status: timeout
# timeout: 2
import os

for _ in range(4):
    if os.fork() == 0:
        break
while True:
    pass
