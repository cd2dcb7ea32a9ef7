"""The Panoptic Refinement Network (paper §3.1–3.4).

``PRN(cfg).forward(image, instance, semantic)`` takes the RGB image and a base network's instance maps and
semantic probabilities and returns the refined predictions:

* input module (§3.2): RGB branch (two 5×5 stride-2 convs → ``n_en`` at 1/4), instance branch (two 5×5
  stride-2 convs over the 7 instance channels → ``n_en`` at 1/4), semantic branch (one 5×5 conv over the
  ``num_classes`` probabilities at 1/4 → ``n_en``), concatenated with a 2-channel normalised coordinate map
  → ``3·n_en + 2`` channels;
* encoder (§3.3): ResNet stages 1–4 (:class:`~prn_model.resnet.ResNetEncoder`) with CoordConv in every block;
* shared decoder (§3.3): top-down from 1/32 with skips from the 1/16, 1/8 and 1/4 encoder features,
  CoordConv in every layer → ``c_de`` channels at 1/4;
* heads (§3.4): semantic logits at 1/4; the decoder output upsampled ×4 (bilinear), then parallel branches
  of a 5×5 (Coord)Conv and a 1×1 conv for center (1), offsets (2 center + 4 box in one branch) and foreground
  (1 logit).

Ablation switches (§4.5): ``coordconv`` ∈ {both, encoder, decoder, none} — "encoder" covers the input
module's coordinate map and every encoder block, "decoder" covers every decoder layer and the 5×5 convs of
the instance branches; ``foreground`` ∈ {branch, semantic} — "semantic" derives the foreground logit from the
semantic logits as logsumexp(thing logits) − logsumexp(stuff logits), upsampled ×4; ``box_offsets`` off
drops the 4 box channels (the output then has no ``box_offset`` key and the loss skips that term).

``residual`` (this project's addition, not in the paper; off by default): the §3.4 heads are unchanged but
their outputs become corrections added to the base network's own maps, and each head's last conv starts at
zero, so an untrained PRN reproduces its inputs exactly and training only has to learn the refinement.
"""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F

from prn_data.errors import PrnError

from .coordconv import add_coords
from .resnet import DEPTHS, ResNetEncoder, conv_norm_relu

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class ModelConfigError(PrnError, ValueError):
    """A PRN configuration is invalid (unknown depth, switch value, field …)."""


class ModelInputError(PrnError, ValueError):
    """Tensors given to :meth:`PRN.forward` have the wrong shape."""


@dataclass(frozen=True)
class PRNConfig:
    """Everything that fixes PRN's architecture; stored in checkpoints via :meth:`to_dict`.

    ``num_classes`` N_cl; ``depth`` ∈ {18, 34, 50, 101} (basic blocks for 18/34); ``widths`` the four
    ResNet stage widths (torchvision: 64, 128, 256, 512; outputs ×4 for bottlenecks); ``n_en`` N_en, channels
    of each input branch; ``c_de`` C_de, decoder output channels; ``skip_channels`` width of the decoder's
    1×1 skip projections; ``semantic_head_channels`` / ``head_channels`` widths of the 5×5 convs of the
    semantic head (1/4) and of each full-resolution instance branch; ``offset_scale`` (pixels) divides the 6
    offset channels of the instance input and multiplies the offset branch's output, so the network works
    with values of order 1 while its inputs and outputs are in pixels; ``image_mean`` / ``image_std`` (0..255
    units) normalise the RGB input; ``norm`` "batch" or "group" (GroupNorm for tiny batches);
    ``thing_ids`` the train ids of thing classes (needed when ``foreground == "semantic"``; ``residual``
    uses them for the base's thing probability). ``residual`` (not in the paper) makes the heads predict
    corrections to the base inputs, see :meth:`PRN.residual_base`. ``pretrained``: a local torchvision ResNet
    state-dict file whose ImageNet weights initialise the encoder (§4.2; :mod:`prn_model.pretrained`) — read
    by the trainer when a run starts, never when a checkpoint is loaded (kept here as the run's record).
    """

    num_classes: int
    depth: int = 50
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    n_en: int = 64
    c_de: int = 256
    skip_channels: int = 128
    semantic_head_channels: int = 128
    head_channels: int = 32
    coordconv: str = "both"
    foreground: str = "branch"
    box_offsets: bool = True
    offset_scale: float = 128.0
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    norm: str = "batch"
    thing_ids: tuple[int, ...] = ()
    residual: bool = False
    pretrained: str | None = None

    def __post_init__(self) -> None:
        # Lists come back from YAML/JSON; the dataclass is frozen, so normalise through object.__setattr__.
        for name in ("widths", "image_mean", "image_std", "thing_ids"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = []
        if self.num_classes < 1:
            problems.append(f"num_classes must be ≥ 1, got {self.num_classes}")
        if self.depth not in DEPTHS:
            problems.append(f"depth must be one of {sorted(DEPTHS)}, got {self.depth}")
        if len(self.widths) != 4 or min(self.widths) < 1:
            problems.append(f"widths must be 4 positive stage widths, got {self.widths}")
        for name in ("n_en", "c_de", "skip_channels", "semantic_head_channels", "head_channels"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.coordconv not in ("both", "encoder", "decoder", "none"):
            problems.append(f"coordconv must be both|encoder|decoder|none, got {self.coordconv!r}")
        if self.foreground not in ("branch", "semantic"):
            problems.append(f"foreground must be branch|semantic, got {self.foreground!r}")
        if self.norm not in ("batch", "group"):
            problems.append(f"norm must be batch|group, got {self.norm!r}")
        if not self.offset_scale > 0:
            problems.append(f"offset_scale must be > 0, got {self.offset_scale}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            problems.append("image_mean and image_std must have 3 values, std > 0")
        if any(not 0 <= t < self.num_classes for t in self.thing_ids):
            problems.append(f"thing_ids must lie in 0..{self.num_classes - 1}, got {self.thing_ids}")
        if self.foreground == "semantic" and not 0 < len(set(self.thing_ids)) < self.num_classes:
            problems.append("foreground='semantic' needs thing_ids naming some, but not all, classes")
        if problems:
            raise ModelConfigError("invalid PRN config: " + "; ".join(problems))

    @property
    def encoder_coords(self) -> bool:
        return self.coordconv in ("both", "encoder")

    @property
    def decoder_coords(self) -> bool:
        return self.coordconv in ("both", "decoder")

    @property
    def offset_channels(self) -> int:
        return 6 if self.box_offsets else 2

    def to_dict(self) -> dict:
        """Plain JSON/YAML-able dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @staticmethod
    def from_dict(d: dict) -> "PRNConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ModelConfigError`."""
        known = {f.name for f in fields(PRNConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelConfigError(f"invalid PRN config: unknown field(s) {unknown}")
        if "num_classes" not in d:
            raise ModelConfigError("invalid PRN config: num_classes is required")
        return PRNConfig(**d)


class InputModule(nn.Module):
    """§3.2: three input branches at 1/4 resolution plus the coordinate map.

    ``forward(image (B,3,H,W) normalised, instance (B,7,H,W) normalised, semantic (B,N_cl,H/4,W/4))``
    → ``(B, 3·n_en [+2], H/4, W/4)``.
    """

    def __init__(self, cfg: PRNConfig):
        super().__init__()
        n, norm = cfg.n_en, cfg.norm
        self.rgb = nn.Sequential(conv_norm_relu(3, n, 5, norm=norm, stride=2), conv_norm_relu(n, n, 5, norm=norm, stride=2))
        self.instance = nn.Sequential(
            conv_norm_relu(7, n, 5, norm=norm, stride=2), conv_norm_relu(n, n, 5, norm=norm, stride=2)
        )
        self.semantic = conv_norm_relu(cfg.num_classes, n, 5, norm=norm)
        self.coords = cfg.encoder_coords
        self.out_channels = 3 * n + (2 if self.coords else 0)

    def forward(self, image: torch.Tensor, instance: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        x = torch.cat((self.rgb(image), self.instance(instance), self.semantic(semantic)), dim=1)
        if self.coords:
            x = add_coords(x)
        return x


class Decoder(nn.Module):
    """§3.3 shared decoder: 1×1 over the 1/32 features, then for the 1/16, 1/8, 1/4 skips: bilinear ×2 up,
    concat with a 1×1 projection of the skip, 3×3 fuse. Every conv is a CoordConv when ``coords``.

    ``forward([c2, c3, c4, c5])`` → ``(B, c_de, H/4, W/4)``.
    """

    def __init__(self, in_channels: list[int], c_de: int, skip_channels: int, *, coords: bool, norm: str):
        super().__init__()
        self.top = conv_norm_relu(in_channels[3], c_de, 1, norm=norm, coords=coords)
        self.skips = nn.ModuleList(
            conv_norm_relu(c, skip_channels, 1, norm=norm, coords=coords) for c in reversed(in_channels[:3])
        )
        self.fuse = nn.ModuleList(
            conv_norm_relu(c_de + skip_channels, c_de, 3, norm=norm, coords=coords) for _ in range(3)
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.top(feats[3])
        for skip, proj, fuse in zip(reversed(feats[:3]), self.skips, self.fuse):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = fuse(torch.cat((x, proj(skip)), dim=1))
        return x


class Head(nn.Sequential):
    """§3.4 prediction branch: 5×5 (Coord)Conv → norm → ReLU → 1×1 conv to ``out_channels``.

    The 1×1 predictor always runs in float32, also under autocast: bf16 keeps 8 significant bits, i.e. an
    offset of 300 px would come out to within ±1 px only, and this conv is cheap.
    """

    def __init__(self, in_channels: int, mid: int, out_channels: int, *, coords: bool, norm: str):
        super().__init__(
            conv_norm_relu(in_channels, mid, 5, norm=norm, coords=coords), nn.Conv2d(mid, out_channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self[0](x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self[1](x.float())


class PRN(nn.Module):
    """The Panoptic Refinement Network (§3.1–3.4).

    ``forward(image (B,3,H,W) float32 0..255, instance (B,7,H,W) float32 in pixels, semantic
    (B,N_cl,H/4,W/4) float32 probabilities)`` with H, W multiples of 32 returns a dict:
    ``semantic (B,N_cl,H/4,W/4)`` logits, ``center (B,1,H,W)`` heatmap, ``center_offset (B,2,H,W)`` (dy, dx)
    and ``box_offset (B,4,H,W)`` (top, bottom, left, right) in pixels (no ``box_offset`` when
    ``cfg.box_offsets`` is off), ``foreground (B,1,H,W)`` logit.
    """

    def __init__(self, cfg: PRNConfig):
        super().__init__()
        self.cfg = cfg
        self.input = InputModule(cfg)
        self.encoder = ResNetEncoder(
            self.input.out_channels, depth=cfg.depth, widths=cfg.widths, coords=cfg.encoder_coords, norm=cfg.norm
        )
        self.decoder = Decoder(
            self.encoder.out_channels, cfg.c_de, cfg.skip_channels, coords=cfg.decoder_coords, norm=cfg.norm
        )
        # The semantic head stays at 1/4 and predicts classes, not positions: no coordinates (§3.4).
        self.semantic_head = Head(cfg.c_de, cfg.semantic_head_channels, cfg.num_classes, coords=False, norm=cfg.norm)
        dc = cfg.decoder_coords
        self.center_head = Head(cfg.c_de, cfg.head_channels, 1, coords=dc, norm=cfg.norm)
        self.offset_head = Head(cfg.c_de, cfg.head_channels, cfg.offset_channels, coords=dc, norm=cfg.norm)
        self.foreground_head = (
            Head(cfg.c_de, cfg.head_channels, 1, coords=dc, norm=cfg.norm) if cfg.foreground == "branch" else None
        )
        self.register_buffer("image_mean", torch.tensor(cfg.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(cfg.image_std).view(1, 3, 1, 1), persistent=False)
        # Channel 0 (heatmap) stays as is; the 6 offset channels are divided by offset_scale.
        inv = torch.full((1, 7, 1, 1), 1.0 / cfg.offset_scale)
        inv[:, 0] = 1.0
        self.register_buffer("instance_scale", inv, persistent=False)
        # Index tensors (not a boolean mask) keep shapes static for torch.compile.
        things = sorted(set(cfg.thing_ids))
        stuff = [c for c in range(cfg.num_classes) if c not in things]
        self.register_buffer("thing_index", torch.tensor(things, dtype=torch.long), persistent=False)
        self.register_buffer("stuff_index", torch.tensor(stuff, dtype=torch.long), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Predictors start near zero output, as Panoptic-DeepLab's heads do, so the first steps are stable.
        heads = [self.semantic_head, self.center_head, self.offset_head, self.foreground_head]
        for head in heads:
            if head is not None:
                if self.cfg.residual:
                    # Exactly zero: the untrained residual PRN outputs the base's maps unchanged.
                    nn.init.zeros_(head[1].weight)
                else:
                    nn.init.normal_(head[1].weight, std=1e-3)

    def check_inputs(self, image: torch.Tensor, instance: torch.Tensor, semantic: torch.Tensor) -> None:
        """Raise :class:`ModelInputError` naming the tensor and the problem."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ModelInputError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
        b, _, h, w = image.shape
        if h % 32 or w % 32:
            raise ModelInputError(f"image height and width must be multiples of 32, got {h}×{w}")
        if tuple(instance.shape) != (b, 7, h, w):
            raise ModelInputError(f"instance must be {(b, 7, h, w)}, got {tuple(instance.shape)}")
        want = (b, self.cfg.num_classes, h // 4, w // 4)
        if tuple(semantic.shape) != want:
            raise ModelInputError(f"semantic must be {want}, got {tuple(semantic.shape)}")

    def forward(
        self, image: torch.Tensor, instance: torch.Tensor, semantic: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        self.check_inputs(image, instance, semantic)
        h, w = image.shape[-2:]
        x = self.input((image - self.image_mean) / self.image_std, instance * self.instance_scale, semantic)
        y = self.decoder(self.encoder(x))
        sem = self.semantic_head(y)
        up = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        offsets = self.offset_head(up) * self.cfg.offset_scale
        out = {"semantic": sem, "center": self.center_head(up), "center_offset": offsets[:, :2]}
        if self.cfg.box_offsets:
            out["box_offset"] = offsets[:, 2:]
        if self.foreground_head is not None:
            out["foreground"] = self.foreground_head(up)
        if self.cfg.residual:
            base = self.residual_base(instance, semantic)
            for key in list(out):
                out[key] = out[key] + base[key]
        if self.foreground_head is None:
            # Derived after the residual sum, so it follows the refined semantic logits.
            fg = semantic_foreground_logit(out["semantic"], self.thing_index, self.stuff_index)
            out["foreground"] = F.interpolate(fg, size=(h, w), mode="bilinear", align_corners=False)
        return out

    def residual_base(self, instance: torch.Tensor, semantic: torch.Tensor) -> dict[str, torch.Tensor]:
        """The base network's maps in PRN's output units, to which ``residual`` heads add corrections
        (project addition, not in the paper): ``semantic`` log(max(p, 1e-4)) (B,N_cl,H/4,W/4); ``center``
        the instance heatmap (B,1,H,W); ``center_offset`` / ``box_offset`` instance channels 1–2 / 3–6 in
        pixels; ``foreground`` (B,1,H,W) ±logit(1 − 1e-4) = ±9.21 where the base's box offsets are (not) set,
        i.e. on the base's own full-resolution instance masks. (The base's thing probability at 1/4, upsampled,
        was the first choice; its blocky edges cost 7 PQ on the demo's val set before any training: PPGBF on
        the untrained model's maps gave PQ 78.6 with it and 85.7 with this mask.) All float32."""
        h, w = instance.shape[-2:]
        semantic, instance = semantic.float(), instance.float()
        base = {
            "semantic": torch.log(semantic.clamp_min(1e-4)),
            "center": instance[:, :1],
            "center_offset": instance[:, 1:3],
        }
        if self.cfg.box_offsets:
            base["box_offset"] = instance[:, 3:7]
        if self.foreground_head is not None:
            on = instance[:, 3:7].abs().sum(1, keepdim=True) > 0
            sure = math.log((1 - 1e-4) / 1e-4)
            base["foreground"] = torch.where(on, sure, -sure).to(torch.float32)
        return base


def semantic_foreground_logit(
    logits: torch.Tensor, thing_index: torch.Tensor, stuff_index: torch.Tensor
) -> torch.Tensor:
    """Foreground logit from semantic logits ``(B, N_cl, h, w)`` → ``(B, 1, h, w)``: log P(thing) −
    log P(stuff) under the softmax, i.e. logsumexp over the thing classes (``thing_index``, int64) minus
    logsumexp over the stuff classes (the §4.5 ablation "foreground from the semantic branch")."""
    things = torch.logsumexp(logits.index_select(1, thing_index), dim=1, keepdim=True)
    stuff = torch.logsumexp(logits.index_select(1, stuff_index), dim=1, keepdim=True)
    return things - stuff


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
