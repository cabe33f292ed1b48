"""Domain layer: tool descriptions, results, and the pure rules for paths, text and URLs."""
