"""`python -m agent_registry` starts the registry."""

from agent_registry.main import main

main()
