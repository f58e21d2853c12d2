"""Layer 2, analytic cost: per-layer formulas, whole-model counts, Table 2, memory estimates. No torch."""
