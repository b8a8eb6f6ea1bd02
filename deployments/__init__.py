"""The Ray Serve service: a CPU ingest (WebSocket/HTTP) in front of GPU model replicas."""
