"""ImageNet initialisation from a local torchvision ResNet state dict (``model.pretrained`` / ``prn train
--pretrained``): the trainer loads it into the encoder; files that do not fit are refused with one line naming
the file and the first bad key."""

from __future__ import annotations

import pytest
import torch

from prn_data.testing import build_tiny_store, run_prn
from prn_model.checkpoint import load_checkpoint
from prn_model.config import save_config
from prn_model.network import PRN, PRNConfig
from prn_model.pretrained import WeightsError, load_pretrained_encoder
from prn_model.resnet import ResNetEncoder
from prn_model.train import train

from helpers import TINY_MODEL, tiny_config

WIDTHS = tuple(TINY_MODEL["widths"])


def torchvision_style(widths=WIDTHS, depth: int = 18, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict laid out as torchvision's ResNet at ``widths``: the encoder's blocks as torchvision
    builds them (input = the stem's ``widths[0]`` channels, no CoordConv, BatchNorm), random values, plus
    the stem (``conv1``, ``bn1``) and the classifier ``fc``."""
    g = torch.Generator().manual_seed(seed)
    enc = ResNetEncoder(widths[0], depth=depth, widths=widths, coords=False, norm="batch")
    sd = {k: (torch.rand(v.shape, generator=g) + 0.5 if v.is_floating_point() else v.clone())
          for k, v in enc.state_dict().items()}
    sd["conv1.weight"] = torch.randn(widths[0], 3, 7, 7, generator=g)
    for s in ("weight", "bias", "running_mean", "running_var"):
        sd[f"bn1.{s}"] = torch.rand(widths[0], generator=g)
    sd["fc.weight"] = torch.randn(10, enc.out_channels[-1], generator=g)
    sd["fc.bias"] = torch.randn(10, generator=g)
    return sd


def check_encoder_equals(enc: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> int:
    """Every file tensor outside the stem, fc and layer1.0's input side is the encoder's (CoordConv weights:
    in their first channels, the coordinate channels 0); returns how many were compared."""
    n = 0
    for k, v in sd.items():
        if k.split(".")[0] in ("conv1", "bn1", "fc") or k in ("layer1.0.conv1.weight", "layer1.0.downsample.0.weight"):
            continue
        got = enc[k]
        if got.shape != v.shape:  # a CoordConv kernel: (out, in + 2, k, k)
            assert torch.equal(got[:, :-2], v) and not got[:, -2:].any(), k
        else:
            assert torch.equal(got, v), k
        n += 1
    return n


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_tiny_store(tmp_path_factory.mktemp("pretrained") / "s.zarr", n=2, short=32, max_long=64)


def test_model_pretrained_initialises_the_encoder(store, tmp_path):
    sd = torchvision_style()
    path = tmp_path / "resnet18_tiny.pth"
    torch.save(sd, path)
    run = tmp_path / "run"
    # one step at lr 0 leaves the weights as loaded (GroupNorm: no running statistics move either)
    cfg = tiny_config(store, run, iters=1, **{"model.pretrained": str(path), "optim.lr": 0.0})
    train(cfg, show_progress=False)
    model, saved = load_checkpoint(run / "model.pt")
    assert saved.model["pretrained"] == str(path)
    # GroupNorm here: the file's BatchNorm statistics find no tensor; every other block tensor is compared
    blocks = {k: v for k, v in sd.items() if k.split(".")[-1] not in ("running_mean", "running_var", "num_batches_tracked")}
    # all but the stem (3), fc (2) and layer1.0.conv1 (its input is the input module's 3·8 + 2 channels)
    assert check_encoder_equals(model.encoder.state_dict(), blocks) == len(blocks) - 6
    # loading a checkpoint never reads the file again: it may be gone
    path.unlink()
    assert torch.equal(load_checkpoint(run / "model.pt")[0].encoder.layer3[1].conv2.weight, sd["layer3.1.conv2.weight"])


def test_prn_train_pretrained_flag_and_a_missing_file(store, tmp_path):
    cfg_path = tmp_path / "tiny.yaml"
    save_config(tiny_config(store, tmp_path / "unused"), cfg_path)
    p = run_prn("train", cfg_path, "--out", tmp_path / "run", "--iters", "1", "--pretrained", tmp_path / "nope.pth",
                check=False)
    assert p.returncode == 2 and "nope.pth: no such file" in p.stderr and "Traceback" not in p.stderr
    path = tmp_path / "r.pth"
    torch.save(torchvision_style(), path)
    run_prn("train", cfg_path, "--out", tmp_path / "run2", "--iters", "1", "--lr", "0", "--pretrained", path)
    model, _ = load_checkpoint(tmp_path / "run2" / "model.pt")
    sd = {k: v for k, v in torchvision_style().items() if "running" not in k and "num_batches" not in k}
    assert check_encoder_equals(model.encoder.state_dict(), sd) > 40


def _tiny_prn(**kw) -> PRN:
    m = {k: v for k, v in TINY_MODEL.items()}
    m.update(kw)
    return PRN(PRNConfig(num_classes=4, **m))


@pytest.mark.parametrize("make,message", [
    # a ResNet-34 file into a depth-18 encoder: its third layer1 block is not here
    (lambda: torchvision_style(depth=34), "unexpected key 'layer1.2.conv1.weight'"),
    # widths differ in the last stage
    (lambda: torchvision_style(widths=(8, 16, 32, 32)),
     "key 'layer4.0.conv1.weight': shape (32, 32, 3, 3) ≠ encoder (64, 34, 3, 3)"),
    # a tensor the encoder needs is absent
    (lambda: {k: v for k, v in torchvision_style().items() if k != "layer3.1.conv2.weight"},
     "missing key 'layer3.1.conv2.weight'"),
])
def test_files_that_do_not_fit_are_refused_naming_the_first_bad_key(tmp_path, make, message):
    path = tmp_path / "weights.pth"
    torch.save(make(), path)
    model = _tiny_prn()
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        load_pretrained_encoder(model, path)
    text = str(err.value)
    assert text.startswith(f"{path}: not a torchvision ResNet-18 state dict") and message in text
    assert "\n" not in text
    # refused before anything was copied
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    # not strict: the same file loads what fits and reports the rest
    rep = load_pretrained_encoder(model, path, strict=False)
    assert rep.problems and message in rep.problems[0]
