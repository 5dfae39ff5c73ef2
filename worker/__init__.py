"""The sandboxed side: sandbox entry, monitor, payload and runtime adapters."""
