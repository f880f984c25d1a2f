"""Tests of the U-Net (models/unet.py, models/unet_parts.py)."""

from __future__ import annotations

import pytest
import torch

from models import UNet, UNetConfig, build_model, count_parameters

# The paper's U-Net (64 base channels, depth 4, transposed convolutions) with BatchNorm and no
# conv bias before it; "about 31.0 M" is what the README and docstrings promise.
PAPER_PARAMETERS = 31_037_633


def tiny_unet(**overrides: int | bool) -> UNet:
    """A small plain U-Net (no deep-supervision heads unless asked), in eval mode."""
    torch.manual_seed(0)
    return UNet(UNetConfig(**{"base_channels": 4, "depth": 2, "deep_supervision": False,
                              **overrides})).eval()


@pytest.mark.parametrize("bilinear", [False, True])
def test_output_shape_matches_input(bilinear: bool) -> None:
    model = tiny_unet(bilinear=bilinear)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 48))
    assert logits.shape == (2, 1, 32, 48)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("height, width", [(17, 33), (1, 1), (100, 7), (300, 201)])
def test_odd_sizes_give_logits_of_the_same_size(height: int, width: int) -> None:
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4)).eval()  # depth 4: sizes must be padded to 16
    with torch.no_grad():
        logits = model(torch.randn(1, 3, height, width))
    assert logits.shape == (1, 1, height, width)
    assert torch.isfinite(logits).all()


def test_odd_size_trains_in_train_mode() -> None:
    model = tiny_unet().train()
    logits = model(torch.randn(2, 3, 13, 21))
    logits.mean().backward()
    assert logits.shape == (2, 1, 13, 21)
    assert all(p.grad is not None for p in model.parameters())


def test_out_channels_are_respected() -> None:
    model = tiny_unet(out_channels=3)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 8)).shape == (1, 3, 8, 8)


def test_default_model_has_the_papers_parameter_count() -> None:
    model = UNet()
    assert model.config == UNetConfig(base_channels=64, depth=4, bilinear=False)
    assert count_parameters(model) == pytest.approx(PAPER_PARAMETERS, rel=0.005)


def test_bilinear_variant_builds_and_runs() -> None:
    model = UNet(UNetConfig(bilinear=True)).eval()
    # A 1x1 conv replaces each 2x2 transposed conv, so the bilinear model is smaller.
    assert 0 < count_parameters(model) < count_parameters(UNet())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 16)).shape == (1, 1, 16, 16)


def test_count_parameters_ignores_frozen_parameters() -> None:
    model = tiny_unet()
    total = count_parameters(model)
    for p in model.outc.parameters():
        p.requires_grad_(False)
    frozen = sum(p.numel() for p in model.outc.parameters())
    assert count_parameters(model) == total - frozen


@pytest.mark.parametrize("overrides", [{}, {"bilinear": True}, {"norm": "group"},
                                       {"deep_supervision": True}])
def test_build_model_rebuilds_from_config_dict(overrides: dict) -> None:
    original = tiny_unet(**overrides)
    rebuilt = build_model(original.config.to_dict())
    assert rebuilt.config == original.config
    original_shapes = {k: v.shape for k, v in original.state_dict().items()}
    rebuilt_shapes = {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert rebuilt_shapes == original_shapes
    rebuilt.load_state_dict(original.state_dict())  # strict: same keys, same shapes
    rebuilt.eval()
    x = torch.randn(1, 3, 20, 12)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), original(x))


def test_the_default_config_is_train_pys_and_old_configs_keep_their_meaning() -> None:
    from training.options import defaults

    args = defaults()
    assert UNetConfig() == UNetConfig(base_channels=args.base_channels, depth=args.depth,
                                      bilinear=args.bilinear, norm=args.norm,
                                      deep_supervision=args.deep_supervision)
    # A config stored before the norm and deep-supervision fields existed: BatchNorm, no heads.
    old = {key: value for key, value in UNetConfig(base_channels=4, depth=2).to_dict().items()
           if key not in ("norm", "deep_supervision")}
    assert UNetConfig.from_dict(old) == UNetConfig(base_channels=4, depth=2, norm="batch",
                                                   deep_supervision=False)


def test_build_model_accepts_a_config() -> None:
    config = UNetConfig(base_channels=4, depth=2)
    assert build_model(config).config == config


def test_build_model_refuses_unknown_keys() -> None:
    config = {**UNetConfig(base_channels=4, depth=2).to_dict(), "dropout": 0.1}
    with pytest.raises(ValueError, match="dropout"):
        build_model(config)


@pytest.mark.parametrize("bad", [{"depth": 0}, {"base_channels": 0}])
def test_nonpositive_sizes_raise(bad: dict) -> None:
    with pytest.raises(ValueError, match="positive"):
        UNet(UNetConfig(**bad))


def test_group_norm_trains_on_a_single_image_and_has_no_running_statistics() -> None:
    model = tiny_unet(norm="group").train()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not list(model.buffers())
    logits = model(torch.randn(1, 3, 16, 16))
    logits.mean().backward()
    assert logits.shape == (1, 1, 16, 16)


def test_unknown_norm_is_refused() -> None:
    with pytest.raises(ValueError, match="group"):
        UNet(UNetConfig(norm="instance"))


@pytest.mark.parametrize("height, width", [(32, 48), (13, 21)])
def test_deep_supervision_adds_coarser_logits_in_training_only(height: int, width: int) -> None:
    model = UNet(UNetConfig(base_channels=4, depth=3, deep_supervision=True)).train()
    outputs = model(torch.randn(2, 3, height, width))
    # Full size, then 1/2 and 1/4 (rounded up: padded borders that hold image pixels stay).
    assert [tuple(o.shape[-2:]) for o in outputs] == [
        (height, width), (-(-height // 2), -(-width // 2)), (-(-height // 4), -(-width // 4))]
    sum(o.mean() for o in outputs).backward()
    assert all(p.grad is not None for p in model.parameters())
    plain = UNet(UNetConfig(base_channels=4, depth=3, deep_supervision=False))
    plain.load_state_dict(model.state_dict(), strict=False)  # the same weights, without heads
    model.eval(), plain.eval()
    x = torch.randn(1, 3, height, width)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
