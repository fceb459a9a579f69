"""Many images at once: folders through the local daemon, or a Ray cluster."""
