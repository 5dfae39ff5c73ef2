"""Clients of the broker: the CLI, the MCP server, the security harness, doctor and the
embedded starter. They run with the user's rights beside the service, talk to it only
through its client socket, and no service module imports them."""
