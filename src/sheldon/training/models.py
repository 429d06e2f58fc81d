"""Models the config can name with Hydra's `_target_` (train_model.model). They share the keys
num_classes, hidden and dropout, so `train_model.model._target_=sheldon.training.models.MLP`
alone switches."""

from __future__ import annotations

import torch
import torch._dynamo  # noqa: F401  (torch.export's tracer, ~1 s: imported ahead with train_model)
from torch import nn


class SmallCNN(nn.Module):
    """Two conv blocks and a small classifier: ~97% on the MNIST sample in a few CPU epochs."""

    def __init__(
        self, num_classes: int = 10, hidden: int = 128, dropout: float = 0.25, channels: int = 16
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.LazyLinear(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """A fully connected baseline: flatten, `layers` hidden layers of width `hidden`, logits."""

    def __init__(
        self, num_classes: int = 10, hidden: int = 256, dropout: float = 0.2, layers: int = 2
    ) -> None:
        super().__init__()
        if layers < 1 or hidden < 1:
            raise ValueError(f"MLP needs layers >= 1 and hidden >= 1, got layers={layers}, hidden={hidden}")
        stack: list[nn.Module] = [nn.Flatten()]
        for _ in range(layers):
            stack += [nn.LazyLinear(hidden), nn.ReLU(), nn.Dropout(dropout)]
        stack.append(nn.Linear(hidden, num_classes))
        self.net = nn.Sequential(*stack)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ServedClassifier(nn.Module):
    """The model as it is served: raw uint8 images (N, height, width) in, class probabilities out,
    scaled as preprocess scales them (to [0, 1], with a channel axis) before `network`."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(images.to(torch.float32).div(255.0).unsqueeze(1)), dim=1)
