# category: output
# name: endless tiny lines on stderr
# safe-status: ok, output_limit, timeout
# expect-truncated: yes
import sys

while True:
    sys.stderr.write("spam\n")
