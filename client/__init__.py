"""Python client of the captions service (WebSocket /v1/stream, docs/protocol.md)."""
