"""The agentrt executor: templates, model providers, sessions and runs, over gRPC."""
