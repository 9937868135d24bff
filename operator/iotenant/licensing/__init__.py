"""Licences: claims, signing and verification, the operator's key ring, trusted billing issuers, the plan catalogue."""
