"""Layer 3, the torch network: layers, the CMT module and `build_model`, checkpoint conversion."""
