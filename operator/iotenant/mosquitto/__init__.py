"""A tenant's Mosquitto: identities and roles, the dynamic-security sync, the admin listener's TLS, its configuration."""
