# category: secrets
# name: credentials printed to stdout and stderr
# safe-status: ok
# escaped-if-output: AKIAIOSFODNN7EXAMPLE, ghp_aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5, MHcCAQEEIBkg4LVWM9
import sys

print("aws", "AKIA" + "IOSFODNN7EXAMPLE")
print("gh", "ghp_" + "aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5", file=sys.stderr)
print(
    "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5owPLRsQmcv1xoAoGCCqGSM49\n-----END EC PRIVATE KEY-----"
)
print("BLOCKED: printed three secrets")
