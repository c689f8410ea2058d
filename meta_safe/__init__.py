"""meta_safe."""
