"""Layer 7, measurement on the device at hand: settings, timing, memory, peers and the runner."""
