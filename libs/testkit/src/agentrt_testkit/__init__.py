"""Test kit for agentrt: real NATS servers and PostgreSQL databases for pytest.

Installed as a pytest plugin (entry point `agentrt`); see `plugin` for fixtures.
"""
