"""iotenant data-plane services: ingest, api and the device simulator."""
