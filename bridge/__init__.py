"""vmc-bridge: the Connectivity Platform's HTTP API (seeds 000/001) in front of a vmc fleet.

The cloud side: it speaks the MQTT contract (``vmc.cloud``) to the machines and the seed's
inbound and outbound HTTP documents to the third party, and owns the mapping between the two
(``docs/bridge.md``). It never imports the daemon's services.
"""
