"""Kubernetes deployment: renders the KubeRay RayService from serve_config.yaml."""
