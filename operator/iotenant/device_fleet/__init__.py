"""DeviceFleets: who is admitted, each device's credentials, the broker brought in step, fleet status."""
