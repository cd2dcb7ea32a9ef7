"""PRN on new images, without a store or ground truth (README "Refining new images"; ``prn refine``).

Per image, as the build and evaluation do it for a store's samples:

1. the image at its original size (a folder of JPEG/PNG files, :class:`ImageFolder`, or any dataset) and
   the base network's prediction for it (``files:``, ``coco-results:``, ``python:``; :mod:`prn_data.base`);
2. the image resized by the resize policy the checkpoint's training store was built with (§4.2), the base
   prediction encoded as PRN's inputs by :func:`prn_data.base.encode.encode_base` — the build's own code —
   and quantised as the store would hold them (so PRN sees what it was trained on);
3. PRN (§3.1–3.4) on a batch padded to the training canvas, post-processed (PPGBF and merging, §3.5,
   :func:`prn_model.merge.postprocess`), resized back to the original size.

:func:`refine` yields one :class:`Refined` per image, streaming: only the images of a few batches are
alive at a time, whatever the number of images. :class:`~prn_data.base.export.PanopticWriter` writes them
in prn's prediction layout (``OUT/panoptic.json`` + ``OUT/panoptic/<stem>.png``); :func:`refine_to_folder`
does both, as ``prn refine`` does.

What the checkpoint records of its training store (:func:`prn_model.checkpoint.data_record`: resize policy,
target parameters, label divisor, categories, canvas) is used; a checkpoint written before those were
recorded falls back to its training store's attributes when that store can still be opened, else to the
defaults (shorter side 640, longer ≤ 800, σ = 8), with a warning.
"""

from __future__ import annotations

import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from prn_data.base import BaseNetwork, BasePrediction, open_base
from prn_data.base.encode import encode_base, quarter_size
from prn_data.base.export import PANOPTIC_DIR, PANOPTIC_JSON, PanopticWriter
from prn_data.base.files import FilesBase
from prn_data.base.spec import split_spec
from prn_data.datasets import Dataset, open_dataset
from prn_data.errors import DatasetError, PrnError
from prn_data.panoptic_io import read_image
from prn_data.records import LABEL_DIVISOR, VOID, CategorySet, Sample, Segment
from prn_data.resize import ResizePolicy, resize_image
from prn_data.store import decode, open_store, quantise, schema
from prn_data.targets import TargetParams

from .checkpoint import model_from_checkpoint, read_checkpoint
from .devices import resolve_device, with_threads
from .evaluate import default_postprocess_config
from .merge import postprocess
from .network import PRN
from .ppgbf import PostProcessConfig
from .predictions import to_original_size

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
"""Files of an image folder that are read (case-insensitive)."""
DATASET_KINDS = ("coco", "cityscapes", "synthetic")
"""``--images`` specs that name a dataset rather than a folder."""
CANVAS_MULTIPLE = 32  # PRN's stride: H and W of its input are multiples of 32


class RefineError(PrnError):
    """``prn refine`` cannot run as asked: images, checkpoint and base do not fit together."""


# ------------------------------------------------------------------------------------------------ images


def image_sample(image: np.ndarray, file_name: str, image_id: str | None = None) -> Sample:
    """A :class:`Sample` of an ``(h, w, 3) uint8`` RGB image without ground truth (all VOID, no
    segments), for :func:`refine` in a user's own loop. ``image_id`` defaults to the file name's stem."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise RefineError(f"{file_name}: expected an (h, w, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    return Sample(image=image, panoptic=np.full((h, w), VOID, np.int32), segments=[],
                  image_id=str(image_id if image_id is not None else Path(file_name).stem),
                  file_name=Path(file_name).name, orig_size=(int(h), int(w)))


class ImageFolder:
    """The JPEG/PNG images directly in a folder (sorted by name) as samples without ground truth; image id
    = file stem (``000000142238.jpg`` → ``"000000142238"``, written as COCO's integer 142238)."""

    name = "images"
    split = ""
    categories: CategorySet | None = None

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(self.root, "image folder does not exist")
        self.files = sorted(p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise DatasetError(self.root, f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
        seen: dict[str, Path] = {}
        for p in self.files:
            if p.stem in seen:
                raise DatasetError(self.root, f"{seen[p.stem].name} and {p.name} have the same name; their "
                                              "predictions would be one file")
            seen[p.stem] = p

    def __len__(self) -> int:
        return len(self.files)

    def keys(self) -> list[str]:
        return [p.stem for p in self.files]

    def load(self, index: int) -> Sample:
        path = self.files[index]
        return image_sample(read_image(path), path.name)

    def __repr__(self) -> str:
        return f"<ImageFolder {self.root} ({len(self)} images)>"


def open_images(spec: str | Path, split: str | None = None) -> ImageFolder | Dataset:
    """``--images``: a dataset spec (``coco:PATH``, ``cityscapes:PATH``, ``synthetic[:N]``, with ``split``)
    or a folder of images."""
    text = str(spec)
    kind = text.partition(":")[0].strip().lower()
    if kind in DATASET_KINDS and (":" in text or (text.strip().lower() == "synthetic" and not Path(text).is_dir())):
        if not split:
            raise RefineError(f"--images {text}: a dataset needs --split (e.g. val2017, val)")
        return open_dataset(text, split)
    path = Path(text).expanduser()
    if not path.is_dir():
        raise DatasetError(path, "not a folder of images, nor a dataset spec (coco:PATH, cityscapes:PATH, "
                                 "synthetic[:N])")
    return ImageFolder(path)


# ------------------------------------------------------------------------------------------- checkpoint


@dataclass
class Refiner:
    """A checkpoint ready to refine: the model on its device and how its inputs were made.

    ``categories``: the training store's (None for an old checkpoint whose store is gone: :func:`refine`
    then takes the images' or the base's); ``canvas``: the training canvas ``(H, W)`` batches are padded to
    (PRN's CoordConv and GroupNorm see the canvas, so padding as in training keeps its outputs the ones
    ``prn evaluate`` gets; images larger than it get their own, rounded up to 32); ``source``: where the
    record came from (``checkpoint``, the store's URL, or ``defaults``)."""

    model: PRN
    path: str
    device: torch.device
    policy: ResizePolicy
    params: TargetParams
    label_divisor: int
    categories: CategorySet | None
    canvas: tuple[int, int] | None
    postprocess: PostProcessConfig
    source: str
    warnings: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return int(self.model.cfg.num_classes)


def _training_record(ckpt: dict, path: str) -> tuple[dict, str, list[str]]:
    """``(record, source, warnings)``: the checkpoint's ``data`` record, else its training store's
    attributes, else nothing (defaults)."""
    if ckpt.get("data"):
        return dict(ckpt["data"]), "checkpoint", []
    store = ((ckpt.get("config") or {}).get("data") or {}).get("store")
    if store:
        try:
            return dict(open_store(store).attrs), str(store), [
                f"{path}: the checkpoint does not record its inputs' resize policy; read them from its training "
                f"store {store}"]
        except (PrnError, OSError, ValueError, KeyError):
            pass
    return {}, "defaults", [
        f"{path}: the checkpoint records no resize policy and its training store {store or '(none)'} cannot be "
        f"opened; using the defaults (shorter side {ResizePolicy().short}, longer ≤ {ResizePolicy().max_long}, "
        f"σ = {TargetParams().sigma:g})"]


def load_refiner(checkpoint: str | Path, device: str | torch.device = "cpu", *,
                 postprocess_cfg: PostProcessConfig | None = None) -> Refiner:
    """Read ``checkpoint`` (``prn train``'s ``model.pt`` or a training checkpoint) for :func:`refine`;
    warnings (an old checkpoint's fallbacks) are issued with :func:`warnings.warn` and kept in
    ``Refiner.warnings``."""
    path = str(checkpoint)
    ckpt = read_checkpoint(checkpoint)
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    model = model_from_checkpoint(ckpt, path, dev)
    record, source, notes = _training_record(ckpt, path)
    try:
        policy = ResizePolicy.from_json(record["resize_policy"]) if "resize_policy" in record else ResizePolicy()
        params = TargetParams.from_json(record["target_params"]) if "target_params" in record else TargetParams()
        cats = CategorySet.from_json(record["categories"]) if record.get("categories") else None
        canvas = tuple(int(v) for v in record["canvas"]) if record.get("canvas") else None
    except (KeyError, TypeError, ValueError, PrnError) as exc:
        raise RefineError(f"{path}: malformed record of the training store ({exc})") from None
    for note in notes:
        warnings.warn(note, stacklevel=2)
    pp = postprocess_cfg or (default_postprocess_config(record) if record else PostProcessConfig())
    return Refiner(model=model, path=path, device=dev, policy=policy, params=params,
                   label_divisor=int(record.get("label_divisor", params.label_divisor or LABEL_DIVISOR)),
                   categories=cats, canvas=canvas, postprocess=pp, source=source, warnings=notes)


def _describe(cats: CategorySet | Sequence[dict]) -> list[tuple[int, bool]]:
    return [(int(c.id), bool(c.isthing)) if hasattr(c, "id") else (int(c["id"]), bool(c.get("isthing", 0)))
            for c in cats]


def _differ(a: list[tuple[int, bool]], b: list[tuple[int, bool]], ordered: bool) -> str | None:
    """What differs between two class lists ``[(id, isthing)]``, in words (None: the same)."""
    if (a == b) if ordered else (set(a) == set(b)):
        return None
    ia, ib = dict(a), dict(b)
    parts = []
    if sorted(set(ia) - set(ib)):
        parts.append(f"only the checkpoint has ids {sorted(set(ia) - set(ib))[:8]}")
    if sorted(set(ib) - set(ia)):
        parts.append(f"only the other has ids {sorted(set(ib) - set(ia))[:8]}")
    flip = sorted(k for k in set(ia) & set(ib) if ia[k] != ib[k])
    if flip:
        parts.append(f"thing/stuff differs for ids {flip[:8]}")
    if not parts:
        parts.append("same classes in another order (the order sets PRN's semantic channels)")
    return f"{len(a)} vs {len(b)} classes: " + "; ".join(parts)


def resolve_categories(refiner: Refiner, images: object, base: str | BaseNetwork) -> CategorySet:
    """The classes PRN predicts: the checkpoint's (its training store's); for an old checkpoint without
    them, the images' dataset's, else the ``files:`` base's JSON. Raises :class:`RefineError` naming both
    sides when the checkpoint's classes differ from the dataset's or the base's, or when the model's class
    count or thing classes do not fit them."""
    cats = refiner.categories
    own = getattr(images, "categories", None)
    if isinstance(own, CategorySet):
        if cats is None:
            cats = own
        else:
            why = _differ(_describe(cats), _describe(own), ordered=True)
            if why:
                raise RefineError(f"checkpoint {refiner.path} and dataset {getattr(images, 'root', images)} have "
                                  f"different classes ({why})")
    files = base if isinstance(base, FilesBase) else None
    if isinstance(base, str) and split_spec(base)[0] == "files":
        files = FilesBase(split_spec(base)[1], cats or CategorySet([]))
    file_cats = files.file_categories() if files is not None else None
    if file_cats:
        if cats is None:
            try:
                cats = CategorySet.from_json([dict(c, train_id=i, name=c.get("name", str(c["id"])))
                                              for i, c in enumerate(file_cats)])
            except (KeyError, TypeError, ValueError) as exc:
                raise RefineError(f"{files.json_path}: malformed categories ({exc})") from None
        else:
            why = _differ(_describe(cats), _describe(file_cats), ordered=False)
            if why:
                raise RefineError(f"checkpoint {refiner.path} and base {files.spec} ({files.json_path}) have "
                                  f"different classes ({why})")
    if cats is None:
        raise RefineError(f"{refiner.path}: the checkpoint records no classes and neither the images nor the base "
                          "list them; give --images as a dataset spec (coco:PATH …) or a files: base whose JSON "
                          "lists its categories")
    mcfg = refiner.model.cfg
    if len(cats) != mcfg.num_classes:
        raise RefineError(f"checkpoint {refiner.path} predicts {mcfg.num_classes} classes, the images' and base's "
                          f"classes are {len(cats)}")
    if mcfg.thing_ids and sorted(int(t) for t in mcfg.thing_ids) != sorted(cats.thing_train_ids):
        raise RefineError(f"checkpoint {refiner.path} has thing classes (train ids) {sorted(mcfg.thing_ids)}, "
                          f"the images' and base's {sorted(cats.thing_train_ids)}")
    return cats


# ---------------------------------------------------------------------------------------------- inputs


def _round_up(v: int) -> int:
    return -(-int(v) // CANVAS_MULTIPLE) * CANVAS_MULTIPLE


@dataclass
class Prepared:
    """One image ready for PRN at the resized ``size (h, w)``: ``image (3, h, w) uint8``, ``instance
    (7, h, w) float32``, ``semantic (N_cl, ⌈h/4⌉, ⌈w/4⌉) float32`` (as a store would give them back), and
    what the output needs: the sample's ids, ``orig_size`` and the base prediction (original size)."""

    image_id: str
    file_name: str
    orig_size: tuple[int, int]
    size: tuple[int, int]
    image: np.ndarray
    instance: np.ndarray
    semantic: np.ndarray
    base: BasePrediction


def prepare(sample: Sample, pred: BasePrediction, refiner: Refiner, num_classes: int) -> Prepared:
    """PRN's inputs for one image (module docstring, step 2): the build's resize and
    :func:`~prn_data.base.encode.encode_base`, then quantised and decoded as the store's ``base/instance``
    and ``base/semantic`` are."""
    orig = (int(sample.image.shape[0]), int(sample.image.shape[1]))
    size = refiner.policy.output_size(*orig)
    enc = encode_base(pred, size, num_classes, refiner.params)
    canvas = (_round_up(size[0]), _round_up(size[1]))
    if refiner.canvas is not None:
        canvas = (max(canvas[0], refiner.canvas[0]), max(canvas[1], refiner.canvas[1]))
    defs = {d.path: d for d in schema(canvas, num_classes, True)}
    inputs = {}
    for key, path in (("instance", "base/instance"), ("semantic", "base/semantic")):
        d = defs[path]
        codes = quantise(d, enc[key], np.empty(enc[key].shape, d.dtype))
        inputs[key] = np.asarray(decode(d, codes), dtype=np.float32)
    image = resize_image(np.ascontiguousarray(sample.image), size).transpose(2, 0, 1)
    return Prepared(image_id=str(sample.image_id), file_name=str(sample.file_name), orig_size=orig, size=size,
                    image=image, instance=inputs["instance"], semantic=inputs["semantic"], base=pred)


@dataclass
class Refined:
    """PRN's result for one image at its original size: ``panoptic (h, w) int32`` (ids ``category_id *
    label_divisor + k``, VOID = −1), its ``segments`` (instances carry their center score, §3.5), and the
    base network's prediction it refined (``base.meta["missing"]`` when the base had none)."""

    image_id: str
    file_name: str
    orig_size: tuple[int, int]
    panoptic: np.ndarray
    segments: list[Segment]
    base: BasePrediction


def _canvas(items: Sequence[Prepared], refiner: Refiner) -> tuple[int, int]:
    H = max(_round_up(p.size[0]) for p in items)
    W = max(_round_up(p.size[1]) for p in items)
    if refiner.canvas is not None:
        H, W = max(H, refiner.canvas[0]), max(W, refiner.canvas[1])
    return H, W


def _stack(items: Sequence[Prepared], canvas: tuple[int, int], num_classes: int) -> dict[str, np.ndarray]:
    """The batch's network inputs, zero-padded to ``canvas`` as the store's padding decodes."""
    B, (H, W) = len(items), canvas
    qh, qw = quarter_size(canvas)
    out = {"image": np.zeros((B, 3, H, W), np.float32), "instance": np.zeros((B, 7, H, W), np.float32),
           "semantic": np.zeros((B, num_classes, qh, qw), np.float32)}
    for b, p in enumerate(items):
        h, w = p.size
        out["image"][b, :, :h, :w] = p.image
        out["instance"][b, :, :h, :w] = p.instance
        out["semantic"][b, :, : p.semantic.shape[1], : p.semantic.shape[2]] = p.semantic
    return out


def run_batch(refiner: Refiner, items: Sequence[Prepared], categories: CategorySet) -> list[Refined]:
    """PRN and its post-processing on prepared images; results at each image's original size."""
    canvas = _canvas(items, refiner)
    host = _stack(items, canvas, len(categories))
    x = {k: torch.from_numpy(v).to(refiner.device) for k, v in host.items()}
    with torch.no_grad():
        out = refiner.model(x["image"], x["instance"], x["semantic"])
    results = postprocess(out, categories, refiner.postprocess, sizes=[p.size for p in items],
                          label_divisor=refiner.label_divisor)
    refined = []
    for p, (pan, segs) in zip(items, results):
        pan, segs = to_original_size(pan, segs, p.orig_size)
        refined.append(Refined(p.image_id, p.file_name, p.orig_size, pan, segs, p.base))
    return refined


# ------------------------------------------------------------------------------------------- streaming


def _ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """``map(fn, items)`` in order, ``workers`` threads ahead (0: in the calling thread); at most
    ``workers + 1`` results wait at a time, so memory stays flat in the number of items."""
    if workers <= 0:
        yield from map(fn, items)
        return
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(workers) as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def _chunks(images: object, batch: int) -> Iterator[list]:
    """Batches of work: index lists for a dataset (loaded in the worker), sample lists for an iterable."""
    if hasattr(images, "load") and hasattr(images, "__len__"):
        n = len(images)
        for s in range(0, n, batch):
            yield list(range(s, min(n, s + batch)))
        return
    chunk: list = []
    for sample in images:
        chunk.append(sample)
        if len(chunk) == batch:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def open_refine_base(base: str | BaseNetwork, categories: CategorySet, images: object, *,
                     allow_missing: bool = False) -> BaseNetwork:
    """The base network of ``base`` (a spec, or already open) for ``images``; the simulated base (made
    from the ground truth) is refused for images without ground truth, ``none`` always."""
    if not isinstance(base, str):
        return base
    if split_spec(base)[0] == "simulated" and not isinstance(getattr(images, "categories", None), CategorySet):
        raise RefineError(f"base {base!r} simulates a base network from the ground truth; these images have none "
                          "(give --images as a dataset spec, or a real base: files:, coco-results:, python:)")
    net = open_base(base, categories, allow_missing=allow_missing)
    if net is None:
        raise RefineError("base 'none' gives PRN nothing to refine; give a base network's predictions")
    return net


def refine(images: str | Path | Dataset | ImageFolder | Iterable[Sample], base: str | BaseNetwork,
           refiner: Refiner | str | Path, *, split: str | None = None, batch: int = 1, workers: int = 0,
           allow_missing: bool = False, device: str = "cpu") -> Iterator[Refined]:
    """Refine ``images`` with PRN: one :class:`Refined` per image, in order, as they are done.

    ``images``: an ``--images`` spec (:func:`open_images`, with ``split`` for a dataset), a dataset, or any
    iterable of :class:`Sample` (e.g. :func:`image_sample` of your arrays). ``base``: a base spec or an open
    base network. ``refiner``: :func:`load_refiner`'s result, or a checkpoint path (loaded on ``device``).
    ``batch`` images per forward pass; ``workers`` threads load images, run the base and encode inputs ahead
    of the network (0: all in the calling thread). ``allow_missing``: an image the base has no prediction
    for is refined from an empty one (all VOID) instead of raising.

    Errors (:class:`~prn_data.errors.PrnError`, each naming the file or image): a missing prediction, an
    image the base has none for, classes of the checkpoint that differ from the images' dataset's or the
    base's (:func:`resolve_categories`), the simulated base on images without ground truth.
    """
    if batch < 1:
        raise RefineError(f"batch must be ≥ 1, got {batch}")
    if isinstance(images, (str, Path)):
        images = open_images(images, split)
    if not isinstance(refiner, Refiner):
        refiner = load_refiner(refiner, device)
    cats = resolve_categories(refiner, images, base)
    net = open_refine_base(base, cats, images, allow_missing=allow_missing)
    n_cl = len(cats)
    loader = images.load if hasattr(images, "load") and hasattr(images, "__len__") else None

    def work(chunk: list) -> list[Prepared]:
        samples = [loader(i) for i in chunk] if loader is not None else list(chunk)
        preds = net.predict(samples)
        return [prepare(s, p, refiner, n_cl) for s, p in zip(samples, preds)]

    for prepared in _ordered_map(work, _chunks(images, batch), workers):
        yield from run_batch(refiner, prepared, cats)


def check_out(out: str | Path, overwrite: bool = False) -> Path:
    """``out`` as a folder predictions may be written to: not a file, and holding no ``panoptic.json``
    unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RefineError(f"{out}: is a file, not a folder")
    if (out / PANOPTIC_JSON).exists() and not overwrite:
        raise RefineError(f"{out / PANOPTIC_JSON}: already exists; give another --out or --overwrite")
    return out


@with_threads
def refine_to_folder(images: str | Path | Dataset | ImageFolder | Iterable[Sample], base: str | BaseNetwork,
                     checkpoint: Refiner | str | Path, out: str | Path, *, split: str | None = None,
                     batch: int = 1, workers: int = 0, allow_missing: bool = False, device: str = "cpu",
                     overwrite: bool = False, on_progress: Callable[[int, int | None], None] | None = None) -> dict:
    """``prn refine``: :func:`refine` written to ``out`` in prn's prediction layout (``out/panoptic.json``
    + ``out/panoptic/<stem>.png``; ``files:out`` reads it back, ``prn pq`` scores it). An ``out`` that
    already holds a ``panoptic.json`` is refused unless ``overwrite``. ``on_progress(done, total)``
    after each image (``total`` None for an iterable of unknown length). Returns ``{"json", "png_dir",
    "images", "missing", "threads"}`` (``missing``: images refined from an empty base prediction; ``threads``:
    torch's intra-op threads meanwhile, set by ``threads=``, :func:`~prn_model.devices.with_threads`)."""
    out = check_out(out, overwrite)
    if isinstance(images, (str, Path)):
        images = open_images(images, split)
    refiner = checkpoint if isinstance(checkpoint, Refiner) else load_refiner(checkpoint, device)
    cats = resolve_categories(refiner, images, base)
    net = open_refine_base(base, cats, images, allow_missing=allow_missing)
    total = len(images) if hasattr(images, "__len__") else None
    extra = {"checkpoint": refiner.path, "base": base if isinstance(base, str) else getattr(base, "spec", "")}
    n = missing = 0
    with PanopticWriter(out, cats, **extra) as writer:
        for r in refine(images, net, refiner, batch=batch, workers=workers):
            writer.add(image_id=r.image_id, file_name=r.file_name, panoptic=r.panoptic, segments=r.segments)
            n += 1
            missing += bool(r.base.meta.get("missing"))
            if on_progress is not None:
                on_progress(n, total)
    return {"json": str(writer.json_path), "png_dir": str(out / PANOPTIC_DIR), "images": n, "missing": missing,
            "threads": torch.get_num_threads()}


__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFolder",
    "check_out",
    "Prepared",
    "Refined",
    "RefineError",
    "Refiner",
    "image_sample",
    "load_refiner",
    "open_images",
    "open_refine_base",
    "prepare",
    "refine",
    "refine_to_folder",
    "resolve_categories",
    "run_batch",
]
