"""Adapters: gRPC API, SQL read model, NATS catalogue and publisher, persistence wiring."""
