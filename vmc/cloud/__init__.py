"""L4: the cloud contract (CBOR over MQTT), its codec and the sync service."""
