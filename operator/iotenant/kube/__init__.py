"""Talking to the Kubernetes API: the client, the kinds, the one apply path, the one status writer, Events, leases."""
