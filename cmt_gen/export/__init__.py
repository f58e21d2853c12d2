"""Export layer: the deploy form written as ONNX, TorchScript or a torch.export program, reloaded
and checked against eager on two input sizes (`cmt-gen export`)."""
