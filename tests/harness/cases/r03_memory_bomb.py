# category: resources
# name: memory bomb (2 GiB)
# safe-status: memory_limit
blocks = []
for _ in range(32):
    blocks.append(bytearray(64 << 20))
print("ESCAPED: allocated 2 GiB")
