"""`python -m agent_gateway`."""

from agent_gateway.main import main

main()
