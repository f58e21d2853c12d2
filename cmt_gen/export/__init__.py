"""Export layer: the deploy form written as ONNX, TorchScript or a torch.export program and reloaded
(`formats`), through the graph an exporter sees (`graph`); `jobs.export` runs the command."""
