"""What talks to the world: the Kubernetes API (kube), what its watches delivered (watch_cache), registries
(registry, registry_sessions), Kubernetes Events (events)."""
