"""The deploy form: exact folds, the rewritten layers and the CPU kernels they run on.

The trained layers (`model.layers`) name their rewrite here (`hook`); nothing in
this package imports `model`, so the rewrite and the network form no circle.
"""
