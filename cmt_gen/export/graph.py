"""The module an exporter sees: the deploy form's classifier path and nothing else."""

from __future__ import annotations

import torch
from torch import nn


class InferenceGraph(nn.Module):
    """stem -> stages -> head of a (deploy-form) `CMT`, sharing its weights.

    Exporters trace or script a module's whole forward; `CMT.forward` also
    carries the timm API (feature pyramids, intermediates) that a deployed
    classifier never runs, so the graph is cut down to the classifier path.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if model.head is None:
            raise ValueError("a features_only model has no classifier to export")
        self.stem = model.stem
        self.stages = model.stages
        self.head = model.head
        self.train(False)  # exported graphs are for inference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)
