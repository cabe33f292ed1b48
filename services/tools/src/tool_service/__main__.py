"""`python -m tool_service` starts the tools service."""

from tool_service.main import main

main()
