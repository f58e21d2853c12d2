"""Layer 7, speed without timing every candidate: calibrate building blocks, fit, predict.

`calibrate` times CMT's building blocks on a device (torch, imported lazily);
`features`, `fit`, `calibration_file` and `predict` are torch-free, so the
design tools (layer 8) can rank thousands of candidates by predicted speed.
"""
