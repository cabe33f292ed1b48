"""Model provider adapters: the deterministic offline model and OpenAI-compatible servers."""
