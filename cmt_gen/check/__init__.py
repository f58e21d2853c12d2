"""Layer 6, counting by tracing (fvcore, FlopCounterMode) and checks against Table 2 or a budget."""
