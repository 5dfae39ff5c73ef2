"""cellblock's wire: messages, framing, errors, profiles, and a thin client."""
