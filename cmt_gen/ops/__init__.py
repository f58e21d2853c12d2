"""Tensor operations both forms of the network share: the tracing probe (`capture`) and the
position bias at any size (`position_bias`)."""
