"""Layer 8, new variants: scaling, budget constraints, search, sampling, comparison and plots."""
