"""The generator is the authors' `skip()` network: same parameters, same order, same outputs.

The reference below is assembled as `skip()` (models/unet/skip.py of omerbt/Splice, called by `define_G` with its
defaults) assembles it: nested `nn.Sequential`s, a `Concat` that centre-crops every branch to the smallest, zero
padding inside `nn.Conv2d` (`pad='zero'`), BatchNorm and LeakyReLU(0.2) after every convolution, a 1x1 convolution
after each up block, a final 1x1 convolution and a sigmoid. Weights are copied over by position.
"""

import pytest
import torch
from torch import nn

from pipeline.method.generator import SkipGenerator


class Concat(nn.Module):
    """The authors' Concat: run every branch, crop all to the smallest size (centred), concatenate channels."""

    def __init__(self, *branches):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        outputs = [branch(x) for branch in self.branches]
        height = min(o.shape[2] for o in outputs)
        width = min(o.shape[3] for o in outputs)
        cropped = []
        for o in outputs:
            top, left = (o.shape[2] - height) // 2, (o.shape[3] - width) // 2
            cropped.append(o[:, :, top : top + height, left : left + width])
        return torch.cat(cropped, dim=1)


def conv(in_f, out_f, kernel, stride=1):
    return nn.Conv2d(in_f, out_f, kernel, stride, padding=int((kernel - 1) / 2), bias=True)  # pad='zero'


def authors_skip(down=(16, 32, 64, 128, 128), up=(16, 32, 64, 128, 128), skip_channels=(4, 4, 4, 4, 4)):
    model = nn.Sequential()
    current, depth = model, 3
    for i in range(len(down)):
        deeper, skip = nn.Sequential(), nn.Sequential()
        current.append(Concat(skip, deeper))
        current.append(nn.BatchNorm2d(skip_channels[i] + (up[i + 1] if i < len(down) - 1 else down[i])))
        skip.extend([conv(depth, skip_channels[i], 1), nn.BatchNorm2d(skip_channels[i]), nn.LeakyReLU(0.2)])
        deeper.extend(
            [
                conv(depth, down[i], 3, 2),
                nn.BatchNorm2d(down[i]),
                nn.LeakyReLU(0.2),
                conv(down[i], down[i], 3),
                nn.BatchNorm2d(down[i]),
                nn.LeakyReLU(0.2),
            ]
        )
        deeper_main = nn.Sequential()
        if i < len(down) - 1:
            deeper.append(deeper_main)
            k = up[i + 1]
        else:
            k = down[i]
        deeper.append(nn.Upsample(scale_factor=2, mode="bilinear"))
        current.extend(
            [
                conv(skip_channels[i] + k, up[i], 3),
                nn.BatchNorm2d(up[i]),
                nn.LeakyReLU(0.2),
                conv(up[i], up[i], 1),
                nn.BatchNorm2d(up[i]),
                nn.LeakyReLU(0.2),
            ]
        )
        depth, current = down[i], deeper_main
    model.extend([conv(up[0], 3, 1), nn.Sigmoid()])
    return model


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    ours = SkipGenerator().train()
    theirs = authors_skip().train()
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert [v.shape for v in ours_state.values()] == [v.shape for v in theirs_state.values()]  # same order, same shapes
    theirs.load_state_dict(dict(zip(theirs_state, ours_state.values())))
    return ours, theirs


@pytest.mark.parametrize("size", [(64, 64), (96, 128), (75, 101), (37, 53), (36, 36), (224, 167)])
def test_outputs_equal_the_authors_skip_network(pair, size):
    ours, theirs = pair
    image = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
    with torch.no_grad():
        expected = theirs(image)
        actual = ours(image)
    assert actual.shape == image.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_training_steps_stay_equal(pair):
    """Gradients and BatchNorm's running statistics follow too: two Adam steps later the outputs still agree."""
    ours, theirs = (SkipGenerator().train(), authors_skip().train())
    theirs.load_state_dict(dict(zip(theirs.state_dict(), ours.state_dict().values())))
    optimizers = [torch.optim.Adam(m.parameters(), lr=2e-3, betas=(0.0, 0.99)) for m in (ours, theirs)]
    image = torch.rand(1, 3, 70, 90, generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        for model, optimizer in zip((ours, theirs), optimizers):
            model(image).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(image), theirs(image), rtol=0, atol=1e-6)
