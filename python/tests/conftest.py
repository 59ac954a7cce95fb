"""Shared fixtures: a small learnable data set and a small trained CNN (with BatchNorm,
so that eval and training mode differ), made in a second, seeded."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)


def make_data(n, seed, classes=3, side=16):
    """Each class a smooth colour template, each image its template at a random
    contrast plus noise, in [0, 1]."""
    g = torch.Generator().manual_seed(1000)
    templates = F.interpolate(torch.rand(classes, 3, 4, 4, generator=g), size=side, mode="bilinear")
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    contrast = 0.4 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)
    noise = 0.15 * torch.randn(n, 3, side, side, generator=g)
    images = (0.5 + contrast * (templates[labels] - 0.5) + noise).clamp(0, 1)
    return images.float(), labels


class SmallCnn(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = F.avg_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.conv2(x)).mean(dim=(2, 3))
        return self.head(x)


@pytest.fixture(scope="session")
def data():
    return make_data(256, seed=1), make_data(64, seed=2)


@pytest.fixture(scope="session")
def trained(data):
    (x, y), _ = data
    torch.manual_seed(0)
    model = SmallCnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(20):
        for i in range(0, len(x), 64):
            optimiser.zero_grad()
            F.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            optimiser.step()
    model.eval()
    return model


@pytest.fixture
def model(trained):
    """The trained model in eval mode, its gradients cleared (tests may change both)."""
    trained.eval()
    trained.zero_grad(set_to_none=True)
    return trained


@pytest.fixture
def test_set(data):
    return data[1]
