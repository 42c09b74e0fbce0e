"""Training data: identity folders, the aligned cache, exclusions, P×K batches, augmentation."""
from __future__ import annotations

import numpy as np
import torch

from model.train.data import PKSampler, augment, load_aligned_folder
from tests.conftest import IMAGES_PER_IDENTITY, SMALL_IDENTITIES


def test_pk_sampler_gives_p_identities_times_k_images():
    labels = np.repeat(np.arange(10), [2, 3, 5, 1, 8, 2, 2, 4, 6, 3])
    sampler = PKSampler(labels, p=4, k=3, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for b in batches:
        assert len(b) == 12
        ids, counts = np.unique(labels[b], return_counts=True)
        assert len(ids) == 4 and (counts == 3).all()
        assert 3 not in ids  # a single-image identity gives no positive pair


def test_pk_sampler_ranks_draw_different_batches():
    labels = np.repeat(np.arange(20), 4)
    a = next(iter(PKSampler(labels, 4, 2, seed=0, rank=0)))
    b = next(iter(PKSampler(labels, 4, 2, seed=0, rank=1)))
    assert not np.array_equal(a, b)


def test_augment_keeps_shape_and_range():
    x = torch.rand(8, 3, 112, 112) * 2 - 1
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert not torch.equal(out, x)


def test_aligned_cache_is_built_once_and_reused(small_aligned, small_lfw, cache_dir):
    assert len(small_aligned) == len(SMALL_IDENTITIES) * IMAGES_PER_IDENTITY
    assert small_aligned.crops.dtype == np.uint8 and small_aligned.crops.shape[1:] == (112, 112, 3)
    assert set(small_aligned.identities) == set(SMALL_IDENTITIES)
    assert sum(m == "detected" for m in small_aligned.methods) >= 0.95 * len(small_aligned)
    files = sorted(cache_dir.glob("lfw-*.npy"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime
    again = load_aligned_folder(small_lfw / "lfw-deepfunneled", "lfw", cache_dir=cache_dir)
    assert files[0].stat().st_mtime == mtime  # read from the cache, not rebuilt
    assert np.array_equal(np.asarray(again.crops), np.asarray(small_aligned.crops))


def test_exclusion_keeps_training_identity_disjoint(small_lfw, cache_dir):
    from model.train.loop import load_config, load_training_data
    config = load_config(None, {"data.roots": {"lfw": str(small_lfw / "lfw-deepfunneled")},
                                "data.exclude_identities_from": str(small_lfw / "pairs.txt"),
                                "data.exclude_folds": "1"})
    data, lfw, summary = load_training_data(config, str(cache_dir), progress=False)
    fold1 = set(SMALL_IDENTITIES[:2]) | set(SMALL_IDENTITIES[10:12])  # 2 same + 2 diff pairs
    assert not fold1 & set(data.identities)
    assert set(SMALL_IDENTITIES) - fold1 == set(data.identities)
    assert len(lfw) == len(SMALL_IDENTITIES) * IMAGES_PER_IDENTITY
    assert summary["excluded"]["identities"] == 4 and summary["excluded"]["folds"] == [1]


def test_pk_sampler_extra_images_come_from_the_whole_set_singletons_included():
    labels = np.array([0] * 4 + [1] * 4 + [2] * 4 + list(range(3, 23)))  # 20 singletons
    sampler = PKSampler(labels, p=2, k=2, seed=0, extra=6)
    assert len(sampler) == len(labels) // (2 * 2 + 6)
    seen_singletons = set()
    for batch in sampler:
        assert len(batch) == 2 * 2 + 6
        assert len(set(labels[batch[:4]])) == 2
        seen_singletons |= {i for i in batch[4:] if labels[i] >= 3}
    assert seen_singletons  # images no P×K batch could use still reach training


def test_augment_reports_which_crops_it_mirrored():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(32, 3, 8, 8) * 2 - 1
    out, flipped = augment(x, gen, flip=0.5, max_shift=0, scale_jitter=0, color=0,
                           return_flips=True)
    assert flipped.dtype == torch.bool and 0 < flipped.sum() < 32
    assert torch.equal(out[flipped], x[flipped].flip(3))
    assert torch.equal(out[~flipped], x[~flipped])


def _collect_garbage_in_worker(_: int) -> bool:
    import gc
    return gc.collect() >= 0


def test_offline_workers_are_spawned_so_a_live_onnx_session_cannot_hang_them(small_lfw):
    """A forked worker inherits an ONNX Runtime session without its threads and can hang
    freeing it (seen in `make test`); spawned workers share nothing with the parent."""
    from model.nn.runtime import OnnxEncoder  # a core dependency: always installed
    from model.nn.siamese import SiameseEncoder
    from model.train.data import align_folder
    from model.train.pool import process_pool
    session = OnnxEncoder(SiameseEncoder(
        {"arch": "mobilefacenet", "embedding_dim": 32, "width": 0.25,
         "depth": [1, 1, 1, 1, 1], "final_channels": 64}).eval(), threads=2)
    with process_pool(2) as pool:
        assert pool._mp_context.get_start_method() == "spawn"
        assert all(pool.map(_collect_garbage_in_worker, range(4), timeout=120))
    rels = sorted(str(p.relative_to(small_lfw / "lfw-deepfunneled"))
                  for p in (small_lfw / "lfw-deepfunneled").rglob("*.jpg"))[:8]
    crops, methods = align_folder(small_lfw / "lfw-deepfunneled", rels, workers=2,
                                  progress=False)
    assert len(crops) == 8 and len(methods) == 8
    del session
