"""PRN network (paper §3.1–3.4): shapes, gradients, CoordConv, ablation switches, pretrained loading and the
compile / channels_last / bf16 paths. Tiny configurations keep every test small on the CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prn_data.errors import PrnError
from prn_model.coordconv import CoordConv2d, add_coords, coord_map
from prn_model.loss import prn_loss
from prn_model.network import PRN, ModelConfigError, ModelInputError, PRNConfig, count_parameters
from prn_model.pretrained import WeightsError, load_pretrained_encoder

TINY = dict(widths=(8, 8, 16, 16), n_en=8, c_de=16, skip_channels=8, semantic_head_channels=8, head_channels=8)


def tiny(num_classes: int = 5, **kw) -> PRNConfig:
    return PRNConfig(num_classes=num_classes, **{"depth": 18, **TINY, **kw})


def inputs(b: int, h: int, w: int, n_cl: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 3, h, w, generator=g) * 255
    instance = torch.cat((torch.rand(b, 1, h, w, generator=g), torch.randn(b, 6, h, w, generator=g) * 40), 1)
    semantic = torch.softmax(torch.randn(b, n_cl, h // 4, w // 4, generator=g), 1)
    return image, instance, semantic


def batch_for(b: int, h: int, w: int, n_cl: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "semantic": torch.randint(0, n_cl, (b, h, w), generator=g),
        "center": torch.rand(b, 1, h, w, generator=g),
        "center_offset": torch.randn(b, 2, h, w, generator=g) * 10,
        "box_offset": torch.rand(b, 4, h, w, generator=g) * 20,
        "foreground": torch.randint(0, 2, (b, h, w), generator=g),
        "semantic_weight": torch.ones(b, h, w),
        "center_weight": torch.ones(b, h, w),
        "offset_weight": torch.ones(b, h, w),
        "foreground_weight": torch.ones(b, h, w),
        "valid": torch.ones(b, h, w, dtype=torch.bool),
    }


@pytest.mark.parametrize("depth", [18, 50])
def test_output_shapes_at_a_non_square_size(depth):
    cfg = tiny(depth=depth, widths=(4, 4, 8, 8) if depth == 50 else TINY["widths"])
    out = PRN(cfg)(*inputs(2, 64, 96, 5))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "semantic": (2, 5, 16, 24),
        "center": (2, 1, 64, 96),
        "center_offset": (2, 2, 64, 96),
        "box_offset": (2, 4, 64, 96),
        "foreground": (2, 1, 64, 96),
    }
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in out.values())


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = PRN(tiny())
    out = model(*inputs(2, 32, 64, 5))
    total, _ = prn_loss(out, batch_for(2, 32, 64, 5))
    total.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.count_nonzero(p.grad)]
    assert no_grad == []


def test_coord_map_values():
    c = coord_map(1, 3, 5)
    assert c.shape == (1, 2, 3, 5)
    assert torch.equal(c[0, 0, :, 0], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(c[0, 1, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    assert torch.equal(c[0, 0], c[0, 0, :, :1].expand(3, 5))  # y constant along a row


def test_coordconv_adds_exactly_two_input_channels_and_sees_the_coordinates():
    on, off = CoordConv2d(5, 7, 3), CoordConv2d(5, 7, 3, with_coords=False)
    assert tuple(on.weight.shape) == (7, 7, 3, 3) and tuple(off.weight.shape) == (7, 5, 3, 3)
    # A 1×1 CoordConv weighting only the x channel outputs the x coordinate itself.
    probe = CoordConv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        probe.weight.copy_(torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1))
    y = probe(torch.full((1, 1, 2, 5), 9.0))
    assert torch.allclose(y[0, 0], torch.tensor([[-1.0, -0.5, 0.0, 0.5, 1.0]] * 2))


@pytest.mark.parametrize("mode", ["both", "encoder", "decoder", "none"])
def test_coordconv_switches_add_two_channels_exactly_where_on(mode):
    model = PRN(tiny(coordconv=mode))
    enc, dec = mode in ("both", "encoder"), mode in ("both", "decoder")
    assert model.input.out_channels == 3 * 8 + (2 if enc else 0)
    blocks = [b for name in ("layer1", "layer2", "layer3", "layer4") for b in getattr(model.encoder, name)]
    assert len(blocks) == 8
    for b in blocks:
        assert b.conv1.in_channels - b.conv1.feature_channels == (2 if enc else 0)
    dec_convs = [model.decoder.top[0], *(m[0] for m in model.decoder.skips), *(m[0] for m in model.decoder.fuse)]
    dec_convs += [model.center_head[0][0], model.offset_head[0][0], model.foreground_head[0][0]]
    for c in dec_convs:
        assert c.in_channels - c.feature_channels == (2 if dec else 0)
    # The first block's conv takes the input module's channels (+2 when CoordConv is on).
    assert blocks[0].conv1.in_channels == model.input.out_channels + (2 if enc else 0)


def test_resnet50_parameter_count_is_pinned():
    model = PRN(PRNConfig(num_classes=133))
    total = count_parameters(model)
    encoder = count_parameters(model.encoder)
    print(f"PRN ResNet-50 (133 classes, N_en=64, C_de=256): {total:,} parameters, encoder {encoder:,}")
    # torchvision resnet50 has 25,557,032 parameters; minus stem conv (9,408), stem bn (128) and fc
    # (2,049,000) leaves 23,498,496 in layer1..4. PRN's changes: layer1.0 takes 3·64+2 = 194 channels plus 2
    # coordinates (conv1 +64·132, downsample +256·130) and the 15 other blocks' conv1 get 2 coordinate
    # channels each (2·planes: 2·64·2 + 2·128·4 + 2·256·6 + 2·512·3).
    assert encoder == 23_498_496 + 64 * 132 + 256 * 130 + (256 + 1024 + 3072 + 3072)
    assert total == 28_863_949


def test_box_offset_switch_and_foreground_from_semantic():
    model = PRN(tiny(box_offsets=False, foreground="semantic", thing_ids=(0, 2)))
    assert model.offset_head[1].out_channels == 2 and model.foreground_head is None
    out = model.eval()(*inputs(1, 32, 32, 5))  # eval: batch norm over a 1×1 map needs running stats
    assert "box_offset" not in out and out["center_offset"].shape == (1, 2, 32, 32)
    # log P(thing) − log P(stuff) under the softmax, computed here from probabilities, then upsampled ×4.
    p = torch.softmax(out["semantic"], 1)
    fg = torch.log(p[:, [0, 2]].sum(1, keepdim=True)) - torch.log(p[:, [1, 3, 4]].sum(1, keepdim=True))
    fg = nn.functional.interpolate(fg, scale_factor=4, mode="bilinear", align_corners=False)
    assert torch.allclose(out["foreground"], fg, atol=1e-5)


def test_offsets_are_scaled_in_and_out_of_the_network():
    model = PRN(tiny(offset_scale=50.0))
    assert torch.equal(model.instance_scale.flatten(), torch.tensor([1.0] + [1 / 50.0] * 6))
    with torch.no_grad():
        model.offset_head[1].weight.zero_()
        model.offset_head[1].bias.copy_(torch.tensor([0.5, -1.0, 0.0, 0.25, 1.0, 2.0]))
    out = model.eval()(*inputs(1, 32, 32, 5))
    assert torch.allclose(out["center_offset"][0, :, 3, 7], torch.tensor([25.0, -50.0]))
    assert torch.allclose(out["box_offset"][0, :, 0, 0], torch.tensor([0.0, 12.5, 50.0, 100.0]))


def test_config_round_trip_and_validation():
    cfg = tiny(norm="group", coordconv="decoder", thing_ids=(1,), foreground="semantic")
    d = cfg.to_dict()
    assert d["widths"] == [8, 8, 16, 16] and PRNConfig.from_dict(d) == cfg
    for bad in (dict(depth=42), dict(coordconv="all"), dict(foreground="mask"), dict(offset_scale=0)):
        with pytest.raises(ModelConfigError, match=next(iter(bad))):
            tiny(**bad)
    with pytest.raises(ModelConfigError, match="thing_ids"):
        tiny(foreground="semantic")
    with pytest.raises(PrnError, match="unknown field"):
        PRNConfig.from_dict({"num_classes": 3, "depht": 50})


def test_group_norm_config_trains_with_batch_one():
    model = PRN(tiny(norm="group"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    out = model(*inputs(1, 32, 32, 5))
    total, _ = prn_loss(out, batch_for(1, 32, 32, 5))
    total.backward()
    assert torch.isfinite(total)


def test_bad_input_shapes_are_named():
    model = PRN(tiny())
    image, instance, semantic = inputs(1, 32, 32, 5)
    with pytest.raises(ModelInputError, match="multiples of 32"):
        model(image[..., :30], instance[..., :30], semantic)
    with pytest.raises(ModelInputError, match="instance"):
        model(image, instance[:, :6], semantic)
    with pytest.raises(ModelInputError, match="semantic"):
        model(image, instance, semantic[:, :4])


def _torchvision_resnet18_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with torchvision resnet18's key names and shapes (He et al. 2016, Table 1), random
    values."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def bn(prefix: str, c: int) -> None:
        sd[f"{prefix}.weight"] = torch.rand(c, generator=g)
        sd[f"{prefix}.bias"] = torch.rand(c, generator=g)
        sd[f"{prefix}.running_mean"] = torch.rand(c, generator=g)
        sd[f"{prefix}.running_var"] = torch.rand(c, generator=g) + 0.5
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(7)

    sd["conv1.weight"] = torch.randn(64, 3, 7, 7, generator=g)
    bn("bn1", 64)
    inplanes = 64
    for i, planes in enumerate((64, 128, 256, 512)):
        for j in range(2):
            p = f"layer{i + 1}.{j}"
            cin = inplanes if j == 0 else planes
            sd[f"{p}.conv1.weight"] = torch.randn(planes, cin, 3, 3, generator=g)
            bn(f"{p}.bn1", planes)
            sd[f"{p}.conv2.weight"] = torch.randn(planes, planes, 3, 3, generator=g)
            bn(f"{p}.bn2", planes)
            if j == 0 and i > 0:
                sd[f"{p}.downsample.0.weight"] = torch.randn(planes, inplanes, 1, 1, generator=g)
                bn(f"{p}.downsample.1", planes)
        inplanes = planes
    sd["fc.weight"] = torch.randn(1000, 512, generator=g)
    sd["fc.bias"] = torch.randn(1000, generator=g)
    return sd


def test_pretrained_resnet18_state_dict_maps_onto_the_encoder(tmp_path):
    sd = _torchvision_resnet18_state()
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    model = PRN(PRNConfig(num_classes=3, depth=18, n_en=16, c_de=16, skip_channels=8, semantic_head_channels=8,
                          head_channels=8))
    rep = load_pretrained_encoder(model, path)
    enc = model.encoder.state_dict()
    # Plain tensors are copied as they are.
    for k in ("layer2.0.conv2.weight", "layer4.1.bn2.running_var", "layer3.0.downsample.0.weight"):
        assert k in rep.loaded and torch.equal(enc[k], sd[k])
    # CoordConv weights take the pretrained kernel in their first channels and 0 in the two coordinate ones.
    for k in ("layer2.0.conv1.weight", "layer4.1.conv1.weight", "layer1.1.conv1.weight"):
        assert k in rep.adapted
        assert torch.equal(enc[k][:, :-2], sd[k]) and not enc[k][:, -2:].any()
    # Stem, classifier and layer1.0 (input 3·16+2 = 50 channels + 2 coordinates, not 64) are skipped.
    assert "stem" in rep.skipped["conv1.weight"] and "stem" in rep.skipped["bn1.running_mean"]
    assert "classifier" in rep.skipped["fc.weight"]
    assert rep.skipped["layer1.0.conv1.weight"] == "shape (64, 64, 3, 3) ≠ encoder (64, 52, 3, 3)"
    assert "layer1.0.downsample.0.weight" in rep.missing  # torchvision's layer1.0 has no projection
    n_file = len(sd)
    assert len(rep.loaded) + len(rep.adapted) + len(rep.skipped) == n_file
    # 7 conv1 weights adapted (all blocks but layer1.0); conv1/bn1 (5)/fc (2)/layer1.0.conv1 skipped.
    assert len(rep.adapted) == 7 and len(rep.skipped) == 1 + 5 + 2 + 1


def test_pretrained_into_group_norm_skips_batch_statistics(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(_torchvision_resnet18_state(), path)
    model = PRN(PRNConfig(num_classes=3, depth=18, norm="group", n_en=16, c_de=16, skip_channels=8,
                          semantic_head_channels=8, head_channels=8))
    rep = load_pretrained_encoder(model, path)
    assert "layer2.0.bn1.weight" in rep.loaded
    assert rep.skipped["layer2.0.bn1.running_mean"] == "no such encoder tensor"


def test_bad_weights_files_name_the_file(tmp_path):
    with pytest.raises(WeightsError, match="missing.pth: no such file"):
        load_pretrained_encoder(PRN(tiny()), tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth: not a loadable"):
        load_pretrained_encoder(PRN(tiny()), junk)
    notsd = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], notsd)
    with pytest.raises(WeightsError, match="list.pth: expected"):
        load_pretrained_encoder(PRN(tiny()), notsd)


def _reference(seed: int = 0):
    torch.manual_seed(seed)
    model = PRN(tiny()).eval()
    # Give the predictors realistic magnitudes (their init is ~0) so relative tolerances mean something.
    with torch.no_grad():
        for head in (model.semantic_head, model.center_head, model.offset_head, model.foreground_head):
            head[1].weight.normal_(0, 0.3)
    x = inputs(2, 64, 96, 5, seed=3)
    with torch.no_grad():
        ref = model(*x)
    return model, x, ref


def _max_rel_err(out: dict, ref: dict) -> float:
    return max(float((out[k].float() - ref[k]).abs().max() / ref[k].abs().max()) for k in ref)


def test_channels_last_matches_eager_fp32():
    model, x, ref = _reference()
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        out = model(*(t.contiguous(memory_format=torch.channels_last) for t in x))
    assert _max_rel_err(out, ref) < 1e-4  # fp32 with another summation order


def test_bf16_autocast_matches_eager_fp32():
    model, x, ref = _reference()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*x)
    # bf16 keeps 8 significant bits (≈0.4% per rounding); through ~20 layers the worst output is off by
    # 3.5% of its range here (measured); 8% leaves room for CPUs whose oneDNN kernels round differently.
    assert _max_rel_err(out, ref) < 0.08
    assert all(v.dtype == torch.float32 for v in out.values())  # predictors run in fp32 (pixel offsets)


@pytest.mark.slow
def test_torch_compile_matches_eager_fp32():
    model, x, ref = _reference()
    compiled = torch.compile(model)
    with torch.no_grad():
        out = compiled(*x)
    assert _max_rel_err(out, ref) < 1e-4


def test_untrained_residual_prn_outputs_exactly_the_transformed_base_maps():
    torch.manual_seed(0)
    model = PRN(tiny(thing_ids=(0, 1), residual=True)).eval()
    image, instance, _ = inputs(2, 32, 64, 5)
    instance[:, 3:7, :, :20] = 0  # no base instance on the left
    # Spatially constant probabilities, so the ×4 bilinear upsampling of P(thing) is exact by hand.
    probs = torch.tensor([0.5, 0.2, 0.0, 0.3, 0.0])
    semantic = probs.view(1, 5, 1, 1).expand(2, 5, 8, 16).contiguous()
    with torch.no_grad():
        out = model(image, instance, semantic)
    want_sem = torch.log(torch.tensor([0.5, 0.2, 1e-4, 0.3, 1e-4])).view(1, 5, 1, 1).expand(2, 5, 8, 16)
    assert torch.equal(out["semantic"], want_sem)
    assert torch.equal(out["center"], instance[:, :1])
    assert torch.equal(out["center_offset"], instance[:, 1:3])
    assert torch.equal(out["box_offset"], instance[:, 3:7])
    # Foreground prior: +logit(1 − 1e-4) where any box offset is set (the base's instance pixels), else −.
    on = instance[:, 3:7].abs().sum(1, keepdim=True) > 0
    assert on.any() and (~on).any()
    torch.testing.assert_close(out["foreground"], torch.where(on, 9.2102404, -9.2102404), atol=1e-5, rtol=0)


def test_residual_foreground_prior_is_off_without_base_instances():
    model = PRN(tiny(thing_ids=(4,), residual=True)).eval()
    image, instance, semantic = inputs(1, 32, 32, 5)
    instance[:, 3:7] = 0  # the base predicted no instance here
    with torch.no_grad():
        fg = model(image, instance, semantic)["foreground"]
    torch.testing.assert_close(fg, torch.full_like(fg, -9.2102404), atol=1e-5, rtol=0)  # logit(1e-4)


def test_residual_prn_gets_a_gradient_everywhere_after_one_step():
    torch.manual_seed(0)
    model = PRN(tiny(thing_ids=(0, 1), residual=True))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, batch = inputs(2, 32, 64, 5), batch_for(2, 32, 64, 5)
    prn_loss(model(*x), batch)[0].backward()
    # Zero-initialised predictors block the gradient to everything below them on the very first step ...
    assert not torch.count_nonzero(model.center_head[0][0].weight.grad)
    assert torch.count_nonzero(model.center_head[1].weight.grad)
    opt.step()
    opt.zero_grad()
    prn_loss(model(*x), batch)[0].backward()
    # ... and once they have moved, every parameter learns.
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.count_nonzero(p.grad)]
    assert no_grad == []


@pytest.mark.parametrize("kernel,stride,layout", [(5, 1, torch.contiguous_format), (3, 2, torch.channels_last), (1, 1, torch.channels_last)])
def test_coordconv_equals_a_convolution_over_the_concatenated_coordinates(kernel, stride, layout):
    """The split form (features and coordinates convolved apart, then summed) is the paper's CoordConv:
    one convolution over [x, y-coords, x-coords], outputs and every gradient."""
    torch.manual_seed(0)
    conv = CoordConv2d(6, 4, kernel, stride=stride).to(memory_format=layout)
    x = torch.randn(3, 6, 9, 11).contiguous(memory_format=layout).requires_grad_(True)
    y = conv(x)
    ref_w = conv.weight.detach().clone().requires_grad_(True)
    ref_b = conv.bias.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    cat = add_coords(x_ref)  # the concatenated form: [x, y-coords, x-coords]
    ref = F.conv2d(cat, ref_w, ref_b, stride, kernel // 2)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, ref_w.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.bias.grad, ref_b.grad, rtol=1e-5, atol=1e-5)


def test_strided_pointwise_is_a_strided_1x1_convolution():
    from prn_model.resnet import StridedPointwise

    torch.manual_seed(0)
    m = StridedPointwise(8, 16, 2)
    x = torch.randn(2, 8, 20, 18)
    want = F.conv2d(x, m.weight, stride=2)
    got = m(x)
    assert got.shape == want.shape == (2, 16, 10, 9)
    torch.testing.assert_close(got, want)
    assert set(m.state_dict()) == {"weight"}


_CHANNELS_LAST_BACKWARD = """
import sys, torch
sys.path.insert(0, "tests")
from helpers import TINY_MODEL
from prn_model.network import PRN, PRNConfig
torch.manual_seed(0)
m = PRN(PRNConfig(num_classes=8, thing_ids=(0, 1, 2, 3), **TINY_MODEL)).to(memory_format=torch.channels_last)
cl = torch.channels_last
x = (torch.rand(2, 3, 256, 256) * 255).contiguous(memory_format=cl)
inst = torch.randn(2, 7, 256, 256).contiguous(memory_format=cl)
sem = torch.rand(2, 8, 64, 64).contiguous(memory_format=cl)
for _ in range(2):
    sum(v.square().mean() for v in m(x, inst, sem).values()).backward()
print("backward ok")
"""


def test_tiny_model_backward_in_channels_last_at_256():
    """The tiny model's backward at 256×256 in channels-last on the CPU: with a strided 1×1 convolution in the
    encoder's downsampling path torch 2.13 corrupted the heap here (an abort, so run in a subprocess)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-c", _CHANNELS_LAST_BACKWARD], cwd=root, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "backward ok" in r.stdout
