"""The torch dataset over a store (prn_model.data), its Batch (prn_model.batch) and sampler (prn_model.sampler):
fields, `done` filtering, collate, sampler, workers."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch

from prn_data.testing import build_tiny_store
from prn_model.augment import AugmentConfig, GridMaskConfig
from prn_model.batch import collate, decode_batch
from prn_model.data import StoreDataset, make_loader
from prn_model.sampler import TrainSampler


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    return build_tiny_store(tmp_path_factory.mktemp("store") / "tiny.zarr")


def test_fields_equal_the_store(store_url):
    from prn_data.store import open_store

    store = open_store(store_url)
    ds = StoreDataset(store_url)
    assert len(ds) == len(store) == 6
    assert ds.canvas == (64, 96) and ds.num_classes == len(store.categories)
    s = ds[2]
    raw = store.read_sample(2, crop=False)
    h, w = raw["size"]
    assert s["index"] == 2 and tuple(s["size"]) == (h, w)
    assert s["image"].dtype == np.uint8 and s["image"].shape == (3, 64, 96)
    np.testing.assert_array_equal(s["image"], raw["image"])
    np.testing.assert_array_equal(s["instance"], raw["base/instance"])
    np.testing.assert_array_equal(s["base_semantic"], raw["base/semantic"])
    for key in ("center", "center_offset", "box_offset", "semantic_weight", "center_weight", "offset_weight"):
        np.testing.assert_array_equal(s[key], raw[f"gt/{key}"], err_msg=key)
    np.testing.assert_array_equal(s["semantic"], raw["gt/semantic"])
    np.testing.assert_array_equal(s["foreground"], raw["gt/foreground"])
    # derived fields: foreground weight = not VOID; valid = the top-left (h, w)
    np.testing.assert_array_equal(s["foreground_weight"], (raw["gt/panoptic"] != -1).astype(np.float32))
    assert s["valid"].sum() == h * w and s["valid"][:h, :w].all()


def test_only_done_samples(store_url, tmp_path):
    from prn_data.store import open_store

    copy = tmp_path / "partial.zarr"
    shutil.copytree(store_url, copy)
    st = open_store(str(copy), mode="r+")
    st.array("done")[1] = False
    st.array("done")[4] = False
    ds = StoreDataset(str(copy))
    assert len(ds) == 4
    assert ds.indices.tolist() == [0, 2, 3, 5]
    assert [int(ds[k]["index"]) for k in range(4)] == [0, 2, 3, 5]
    # key = epoch · n + i: epoch 1 of the same i reads the same row
    assert int(ds[4 + 1]["index"]) == 2


def test_collate_gives_the_batch_contract(store_url):
    ds = StoreDataset(store_url)
    b = collate([ds[0], ds[3]])
    want = {
        "image": ((2, 3, 64, 96), torch.float32),
        "instance": ((2, 7, 64, 96), torch.float32),
        "base_semantic": ((2, ds.num_classes, 16, 24), torch.float32),
        "semantic": ((2, 64, 96), torch.int64),
        "center": ((2, 1, 64, 96), torch.float32),
        "center_offset": ((2, 2, 64, 96), torch.float32),
        "box_offset": ((2, 4, 64, 96), torch.float32),
        "foreground": ((2, 64, 96), torch.int64),
        "semantic_weight": ((2, 64, 96), torch.float32),
        "center_weight": ((2, 64, 96), torch.float32),
        "offset_weight": ((2, 64, 96), torch.float32),
        "foreground_weight": ((2, 64, 96), torch.float32),
        "valid": ((2, 64, 96), torch.bool),
        "size": ((2, 2), torch.int64),
        "index": ((2,), torch.int64),
    }
    assert set(b) == set(want)
    for key, (shape, dtype) in want.items():
        assert tuple(b[key].shape) == shape and b[key].dtype == dtype, key
    assert b["index"].tolist() == [0, 3]
    assert b["image"].max() <= 255 and b["image"].min() >= 0


def test_no_open_store_crosses_a_pickle(store_url):
    ds = StoreDataset(store_url)
    assert ds._store is None  # metadata read, handle dropped
    ds[0]
    assert ds._store is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._store is None
    np.testing.assert_array_equal(clone[1]["image"], ds[1]["image"])


def test_sampler_shards_and_resumes():
    s = TrainSampler(5, seed=3, rank=0, world_size=1)
    first = list(_take(iter(s), 12))
    perm0 = np.random.default_rng([3, 0]).permutation(5)
    perm1 = np.random.default_rng([3, 1]).permutation(5)
    perm2 = np.random.default_rng([3, 2]).permutation(5)
    assert first == perm0.tolist() + (perm1 + 5).tolist() + (perm2[:2] + 10).tolist()
    # starting at 7 continues the same stream
    assert list(_take(iter(TrainSampler(5, seed=3, start=7)), 5)) == first[7:12]
    # two ranks: 3 keys each per epoch (5 padded to 6 by wrapping), together covering all 5 samples
    r0 = TrainSampler(5, seed=3, rank=0, world_size=2).epoch_keys(0).tolist()
    r1 = TrainSampler(5, seed=3, rank=1, world_size=2).epoch_keys(0).tolist()
    assert len(r0) == len(r1) == 3
    assert r0 == [perm0[0], perm0[2], perm0[4]] and r1 == [perm0[1], perm0[3], perm0[0]]
    assert set(r0) | set(r1) == set(range(5))


def _take(it, n):
    for _ in range(n):
        yield next(it)


def test_augmentation_is_keyed_by_sample_and_epoch(store_url):
    cfg = AugmentConfig(flip=True, flip_prob=1.0, gridmask=GridMaskConfig(prob=1.0, d_min=8, d_max=16))
    ds = StoreDataset(store_url, cfg, seed=5)
    a, b = ds[7], ds[7]
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    plain = StoreDataset(store_url)[1]
    w = int(plain["size"][1])
    # always flipped: dx negated inside the valid region
    np.testing.assert_array_equal(a["center_offset"][1][:, :w], -plain["center_offset"][1][:, w - 1 :: -1])


def test_crop_through_the_dataset(store_url):
    ds = StoreDataset(store_url, AugmentConfig(flip=False, gridmask=None, crop=(32, 64)), seed=0)
    b = collate([ds[0], ds[1]])
    assert tuple(b["image"].shape) == (2, 3, 32, 64)
    assert tuple(b["base_semantic"].shape) == (2, ds.num_classes, 8, 16)
    full = StoreDataset(store_url)[0]
    h, w = (int(v) for v in full["size"])
    # the crop origin is a multiple of 4 inside the valid region: find it in the full image
    crop = b["image"][0].numpy().astype(np.uint8)
    hits = [(y, x) for y in range(0, max(0, h - 32) + 1, 4) for x in range(0, max(0, w - 64) + 1, 4)
            if np.array_equal(full["image"][:, y : y + 32, x : x + 64], crop)]
    assert hits
    y, x = hits[0]
    np.testing.assert_array_equal(b["base_semantic"][0].numpy(),
                                  full["base_semantic"][:, y // 4 : y // 4 + 8, x // 4 : x // 4 + 16])
    np.testing.assert_array_equal(b["center_offset"][0].numpy(), full["center_offset"][:, y : y + 32, x : x + 64])


def test_device_decode_gives_bit_identical_batches(store_url):
    cfg = AugmentConfig(flip_prob=0.5, gridmask=GridMaskConfig(prob=0.5, d_min=8, d_max=16))
    loader_ds = StoreDataset(store_url, cfg, seed=3)
    device_ds = StoreDataset(store_url, cfg, seed=3, decode="device")
    keys = range(6, 12)  # epoch 1: some flipped, some masked
    coded = collate([device_ds[k] for k in keys])
    assert coded["center_offset"].dtype == torch.int16 and coded["base_semantic"].dtype == torch.uint16
    assert coded["semantic_weight"].dtype == torch.uint8
    ref = collate([loader_ds[k] for k in keys])
    got = decode_batch(coded, device_ds.decode_spec)
    assert set(got) == set(ref)
    for key in ref:
        assert got[key].dtype == ref[key].dtype and torch.equal(got[key], ref[key]), key
    # the stored offsets are 1/16-px codes: the decoded dx is code / 16
    assert torch.equal(got["center_offset"], coded["center_offset"].float() * (1 / 16))


def test_workers_give_the_same_batches_as_the_main_process(store_url):
    cfg = AugmentConfig(gridmask=GridMaskConfig(prob=0.5, d_min=8, d_max=16))
    ds = StoreDataset(store_url, cfg, seed=1)
    batches = []
    for workers in (0, 2):
        loader = make_loader(ds, 2, TrainSampler(len(ds), seed=1), num_workers=workers, mp_context="forkserver")
        it = iter(loader)
        batches.append([next(it) for _ in range(4)])
        del it
    for b0, b2 in zip(*batches):
        for key in b0:
            assert torch.equal(b0[key], b2[key]), key


def test_batch_path_equals_per_sample_path(store_url):
    """ds[[keys]] (what make_loader's workers call: codes decoded straight into the batch, flips fused into
    the decode) gives exactly the batch that collating ds[k] one by one gives, and the device-decoded one."""
    cfg = AugmentConfig(flip_prob=0.5, gridmask=GridMaskConfig(prob=0.5, d_min=8, d_max=16))
    ds = StoreDataset(store_url, cfg, seed=4)
    dev = StoreDataset(store_url, cfg, seed=4, decode="device")
    keys = list(range(6, 18))  # epochs 1 and 2
    flips = [bool(np.random.default_rng([4, k // 6, k % 6]).random() < 0.5) for k in keys]
    assert any(flips) and not all(flips)
    got = ds[keys]
    ref = collate([ds[k] for k in keys])
    via_device = decode_batch(collate([dev[k] for k in keys]), dev.decode_spec)
    assert set(got) == set(ref) == set(via_device)
    for key in ref:
        assert got[key].dtype == ref[key].dtype and torch.equal(got[key], ref[key]), key
        assert torch.equal(got[key], via_device[key]), key
    # a flipped sample: dx negated and left/right swapped inside the valid width, by hand from the plain read
    j = flips.index(True)
    plain = StoreDataset(store_url)[keys[j] % 6]
    w = int(plain["size"][1])
    np.testing.assert_array_equal(got["center_offset"][j, 1, :, :w].numpy(), -plain["center_offset"][1][:, w - 1 :: -1])
    np.testing.assert_array_equal(got["box_offset"][j, 2, :, :w].numpy(), plain["box_offset"][3][:, w - 1 :: -1])
    np.testing.assert_array_equal(got["instance"][j, 6, :, :w].numpy(), plain["instance"][5][:, w - 1 :: -1])
    # make_loader hands whole batches to the dataset and yields the same tensors
    it = iter(make_loader(ds, 4, TrainSampler(len(ds), seed=2), num_workers=0))
    first = next(it)
    keys0 = TrainSampler(len(ds), seed=2).epoch_keys(0)[:4].tolist()
    for key, t in collate([ds[k] for k in keys0]).items():
        assert torch.equal(first[key], t), key
