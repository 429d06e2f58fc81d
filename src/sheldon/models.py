"""Models the config can name with Hydra's `_target_` (train_model.model)."""

from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    """Two conv blocks and a small classifier: >97% on MNIST-sized digits in a few CPU epochs."""

    def __init__(
        self, num_classes: int = 10, channels: int = 32, hidden: int = 128, dropout: float = 0.25
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

    def forward(self, x):
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """A fully connected baseline: flatten, hidden layers, logits."""

    def __init__(
        self, num_classes: int = 10, hidden: tuple[int, ...] = (256, 128), dropout: float = 0.2
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.LazyLinear(width), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.LazyLinear(num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
