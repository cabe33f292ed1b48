"""The agentrt tools service: what agents may do to the world, confined and audited."""
