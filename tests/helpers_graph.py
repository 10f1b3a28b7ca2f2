"""Small models for the graph tests (and ``package.module:factory`` references in CLI tests)."""

import torch
from torch import nn


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace this forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.conv(x)
        return self.conv(-x)


class Tiny(nn.Module):
    """conv-bn-relu, a residual add, a channel shuffle (view/transpose/contiguous), pooling, linear."""

    def __init__(self, untraceable: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.block = Untraceable() if untraceable else nn.Identity()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = x + self.conv2(x)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        x = self.block(x)
        x = self.pool(x).mean((2, 3))
        return self.fc(x)


def tiny() -> tuple[nn.Module, torch.Tensor]:
    """Factory used as ``tests.helpers_graph:tiny`` on the command line."""
    torch.manual_seed(0)
    return Tiny().eval(), torch.randn(1, 3, 32, 32)


def plain_cnn() -> tuple[nn.Module, torch.Tensor]:
    """Factory ``tests.helpers_graph:plain_cnn``: conv-bn-relu blocks and a classifier (prunable)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    return m.eval(), torch.randn(1, 3, 16, 16)
