"""`python -m agent_executor` starts the executor."""

from agent_executor.main import main

main()
