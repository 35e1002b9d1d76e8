"""Device backends behind narrow interfaces: audio, screen, camera."""
