"""Layer 1, specs: the YAML schema, safe reading, `extends` and `--set` merging, quantities. No torch."""
