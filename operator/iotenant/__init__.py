"""iotenant: a Kubernetes operator that gives every customer of an IoT platform a private, licensed IoT stack."""

__version__ = "0.1.0"
