"""Load ImageNet-pretrained ResNet weights from a LOCAL torchvision state-dict file into PRN's encoder.

Nothing is ever downloaded: the user supplies a file such as torchvision's ``resnet50-0676ba61.pth``
(a plain ``{name: tensor}`` dict; ``{"state_dict": …}`` / ``{"model": …}`` wrappers and a ``module.`` prefix
are accepted). Keys are matched by name onto ``PRN.encoder`` (whose layout is torchvision's, see
:mod:`prn_model.resnet`):

* same name and shape → copied (``loaded``);
* a CoordConv weight ``(out, in + 2, k, k)`` whose torchvision counterpart is ``(out, in, k, k)`` → the
  pretrained kernel is copied into the first ``in`` input channels and the 2 coordinate channels are set to
  0, so the block computes exactly the pretrained function at the start of training (``adapted``);
* anything else — the stem (``conv1``, ``bn1``; PRN replaces it by its input module, §3.3), ``fc``, keys
  whose shape differs (e.g. ``layer1.0`` when 3·N_en + 2 ≠ 64), BatchNorm statistics when the model uses
  GroupNorm — is ``skipped`` with the reason; encoder tensors no key filled are listed as ``missing``.

:func:`load_pretrained_encoder` is strict by default: beyond those expected gaps (the stem, ``fc``, the
input side of ``layer1.0``, whose width is the input module's, and BatchNorm statistics under GroupNorm), a
file key the encoder lacks, a shape mismatch, or an encoder tensor the file lacks is a :class:`WeightsError`
naming the file and the first such key — the file is then not a torchvision ResNet of this depth and width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from prn_data.errors import PrnError


class WeightsError(PrnError):
    """A weights file is missing, unreadable or not a state dict. ``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class LoadReport:
    """What :func:`load_pretrained_encoder` did: ``loaded`` / ``adapted`` encoder keys, ``skipped``
    file keys → reason, ``missing`` encoder keys left at their initialisation."""

    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # unexpected gaps, in file-key order (strict loading)

    def summary(self) -> str:
        return (
            f"pretrained encoder: {len(self.loaded)} tensors loaded, {len(self.adapted)} adapted to CoordConv, "
            f"{len(self.skipped)} file keys skipped, {len(self.missing)} encoder tensors left initialised"
        )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``torch.load(weights_only=True)`` on the CPU; unwrap and strip ``module.``."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(p, "no such file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or non-tensor pickles
        raise WeightsError(p, f"not a loadable weights-only state dict ({type(err).__name__}: {err})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(p, "expected a {name: tensor} state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def map_resnet_state_dict(encoder: nn.Module, state: dict[str, torch.Tensor]) -> LoadReport:
    """Copy matching tensors of a torchvision ResNet ``state`` into ``encoder`` (a
    :class:`~prn_model.resnet.ResNetEncoder`) in place; see the module docstring for the rules."""
    report = LoadReport()
    own = encoder.state_dict()
    filled: set[str] = set()
    with torch.no_grad():
        for key, src in state.items():
            dst = own.get(key)
            if dst is None:
                stem = key.split(".")[0] in ("conv1", "bn1")
                why = "stem replaced by the input module (§3.3)" if stem else (
                    "classifier, unused" if key.startswith("fc.") else "no such encoder tensor"
                )
                report.skipped[key] = why
                # BatchNorm statistics of a norm layer that is a GroupNorm here are expected to find no tensor
                norm_here = f"{key.rsplit('.', 1)[0]}.weight" in own and key.rsplit(".", 1)[-1] in _BN_STATS
                if not (stem or key.startswith("fc.") or norm_here):
                    report.problems.append(f"unexpected key {key!r} (no such tensor in this encoder)")
            elif dst.shape == src.shape:
                dst.copy_(src.to(dst.dtype))
                report.loaded.append(key)
                filled.add(key)
            elif (
                src.dim() == 4
                and dst.dim() == 4
                and dst.shape[1] == src.shape[1] + 2
                and (dst.shape[0], *dst.shape[2:]) == (src.shape[0], *src.shape[2:])
            ):
                dst[:, : src.shape[1]].copy_(src.to(dst.dtype))
                dst[:, src.shape[1] :].zero_()
                report.adapted.append(key)
                filled.add(key)
            else:
                report.skipped[key] = f"shape {tuple(src.shape)} ≠ encoder {tuple(dst.shape)}"
                input_side = key in _INPUT_SIDE and src.dim() == dst.dim() == 4 and (
                    (src.shape[0], *src.shape[2:]) == (dst.shape[0], *dst.shape[2:]))
                if not input_side:
                    report.problems.append(f"key {key!r}: shape {tuple(src.shape)} ≠ encoder {tuple(dst.shape)}")
    report.missing = [k for k in own if k not in filled and not k.endswith("num_batches_tracked")]
    report.problems += [f"missing key {k!r} (the encoder has it, the file does not)" for k in report.missing
                        if not k.startswith("layer1.0.")]
    return report


_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")
# The first block's input is the input module's 3·N_en (+2) channels, not torchvision's stem's 64.
_INPUT_SIDE = ("layer1.0.conv1.weight", "layer1.0.downsample.0.weight")


def load_pretrained_encoder(model: nn.Module, path: str | Path, *, strict: bool = True) -> LoadReport:
    """Load a local torchvision ResNet state-dict file into ``model.encoder`` (a PRN) or ``model`` itself
    (a ResNetEncoder). The depth and widths must match the file's (ResNet-50 weights for ``depth=50`` and
    widths 64–512 …); mismatched tensors are never forced. ``strict``: raise :class:`WeightsError` naming the
    file and the first unexpected key, mismatched shape or missing tensor (module docstring), before any
    weight is changed; otherwise skip them and say so in the report."""
    encoder = getattr(model, "encoder", model)
    depth = getattr(getattr(model, "cfg", None), "depth", None)
    state = read_state_dict(path)
    if strict:
        # a dry run on a copy first, so a refused file leaves the model as it was
        probe = map_resnet_state_dict(_Copy(encoder.state_dict()), state)
        if probe.problems:
            more = f" (and {len(probe.problems) - 1} more)" if len(probe.problems) > 1 else ""
            what = f"ResNet-{depth}" if depth else "ResNet"
            raise WeightsError(path, f"not a torchvision {what} state dict for this encoder: {probe.problems[0]}{more}")
    return map_resnet_state_dict(encoder, state)


class _Copy:
    """A stand-in module whose ``state_dict()`` is a detached copy, for :func:`map_resnet_state_dict`'s dry run."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self._state = {k: v.detach().clone() for k, v in state.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state
