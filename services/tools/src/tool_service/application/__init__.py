"""Application layer: the tool catalogue, the built-in tools and invoking them safely."""
