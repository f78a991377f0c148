"""The model code of this example repo: a small classifier over 16 numeric features."""

import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self, features: int = 16, hidden: int = 32, classes: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=-1)


def build() -> nn.Module:
    """The factory mldeploy calls to rebuild the module before loading model/weights.pt."""
    return Classifier()
