"""SpliceNet, the model: sizes, conditioning on the [CLS] code, checkpoint files."""

import io

import pytest
import torch

from pipeline.errors import SpliceError
from pipeline.method.splicenet import (
    FORMAT,
    SpliceNet,
    SpliceNetConfig,
    load_net,
    save_net,
)

CODE = 32


def tiny(seed: int = 0, **changes) -> SpliceNet:
    torch.manual_seed(seed)
    return SpliceNet(SpliceNetConfig(width=1 / 16, code_dim=CODE, **changes)).eval()


@pytest.mark.parametrize("size", [(1, 1), (31, 33), (64, 64), (45, 70)])
def test_output_has_the_input_size_in_zero_one(size):
    model = tiny()
    structure = torch.rand(2, 3, *size)
    with torch.no_grad():
        out = model(structure, torch.randn(2, CODE))
    assert out.shape == structure.shape
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_paper_widths():
    model = SpliceNet(SpliceNetConfig())
    assert model.stem.weight.shape[0] == 32
    assert [block.conv2.weight.shape[0] for block in model.encoder] == [64, 128, 256, 512, 1024]
    assert model.mapping[0].weight.shape == (768, 768) and len(model.mapping) == 2
    # the encoder is not modulated; every decoder and skip 3x3 conv and the output 1x1 conv are
    assert not any(hasattr(m, "affine") for m in model.encoder.modules())
    assert model.to_rgb.weight.shape[-2:] == (1, 1) and model.to_rgb.weight.shape[0] == 3


@pytest.mark.parametrize("demodulate", [True, False])
def test_the_code_changes_the_output_and_equal_codes_give_equal_outputs(demodulate):
    model = tiny(demodulate=demodulate)
    structure = torch.rand(1, 3, 40, 40).expand(3, -1, -1, -1)  # one image three times
    codes = torch.randn(2, CODE)
    with torch.no_grad():
        out = model(structure, torch.stack([codes[0], codes[1], codes[0]]))
    assert torch.equal(out[0], out[2])  # equal codes, equal outputs, whatever the batch-mates
    assert (out[0] - out[1]).abs().mean() > 1e-3  # a different appearance code, a different image
    with torch.no_grad():
        alone = model(structure[:1], codes[:1])
    torch.testing.assert_close(alone[0], out[0], rtol=1e-5, atol=1e-6)  # no batch statistics


def test_one_code_broadcasts_over_the_batch():
    model = tiny()
    structure, code = torch.rand(2, 3, 32, 32), torch.randn(1, CODE)
    with torch.no_grad():
        torch.testing.assert_close(model(structure, code), model(structure, code.expand(2, -1)))


def test_the_output_has_gradients_for_every_parameter():
    model = tiny().train()
    model(torch.rand(2, 3, 32, 32), torch.randn(2, CODE)).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_checkpoint_round_trip(tmp_path):
    model = tiny(seed=3)
    path = tmp_path / "net.pt"
    save_net(model, path, backbone="random:vit_tiny_patch16_224", resolution=64, step=7, domains=["cat"])
    torch.load(path, weights_only=True)  # plain tensors and Python values only
    loaded, meta = load_net(path.read_bytes())
    assert meta["format"] == FORMAT and meta["step"] == 7 and meta["domains"] == ["cat"]
    assert loaded.config == model.config and not loaded.training
    structure, code = torch.rand(1, 3, 20, 24), torch.randn(1, CODE)
    with torch.no_grad():
        assert torch.equal(loaded(structure, code), model(structure, code))
    assert load_net(str(path))[1]["resolution"] == 64


def test_a_file_of_another_format_is_refused_with_its_name(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"format": "splice-pair/1", "model": {}}, path)
    with pytest.raises(SpliceError, match=r"other\.pt.*'splice-pair/1'.*splicenet/1"):
        load_net(str(path))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SpliceError, match="junk.pt"):
        load_net(str(tmp_path / "junk.pt"))
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "config": {"width": 0.1, "colour": 1}, "model": {}}, buffer)
    with pytest.raises(SpliceError, match="colour"):
        load_net(buffer.getvalue(), name="s3://b/net.pt")
