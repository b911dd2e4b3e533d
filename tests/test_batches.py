"""batches.py: whole batches from the cache, seeded, sharded, on the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pieceboard.batches import CROP_SCALE, POLICY_GROUP, BatchLoader, Recipe, augment, to_float


def _loader(indices, batch_size, world=1, rank=0, shuffle=True, seed=0, n=100):
    pixels = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1).repeat(2, 1).repeat(2, 2).repeat(3, 3)
    labels = np.arange(n, dtype=np.int64) % 7
    return BatchLoader(pixels, labels, indices, batch_size, shuffle=shuffle, seed=seed, rank=rank, world=world)


def test_every_training_image_once_per_epoch_in_seeded_order():
    indices = np.arange(3, 90, 2)
    loader = _loader(indices, batch_size=8)
    seen, orders = [], []
    for epoch in range(2):
        loader.set_epoch(epoch)
        batch_ids = [idx.numpy() for _, _, idx in loader]
        flat = np.concatenate(batch_ids)
        assert sorted(flat.tolist()) == indices.tolist()
        orders.append(loader.order())
        seen.append(flat)
    assert not np.array_equal(orders[0], orders[1])
    again = _loader(indices, batch_size=8)
    again.set_epoch(1)
    assert np.array_equal(again.order(), orders[1])


def test_batches_carry_matching_pixels_and_labels():
    loader = _loader(np.arange(50), batch_size=16)
    for images, labels, idx in loader:
        assert images.shape[1:] == (3, 2, 2) and images.dtype == torch.uint8
        assert torch.equal(images[:, 0, 0, 0].long(), idx)
        assert torch.equal(labels, idx % 7)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("n", [1, 7, 25])
def test_shards_cover_the_split_exactly_once(world, n):
    indices, batch = np.arange(n), 2 * world  # the global batch divides evenly over the processes
    test_shards = [
        np.concatenate(_loader(indices, batch, world, r, shuffle=False).batches() or [[]]) for r in range(world)
    ]
    covered = np.concatenate(test_shards).astype(int)
    assert sorted(covered.tolist()) == list(range(n))  # evaluation: every image exactly once, nothing dropped
    train = [_loader(indices, batch, world, r).batches() for r in range(world)]
    assert len({len(t) for t in train}) == 1  # every process takes the same number of steps
    flat = np.concatenate([b for t in train for b in t]) if train[0] else np.array([], dtype=int)
    assert len(set(flat.tolist())) == len(flat)  # no image twice
    assert len(flat) >= n - (2 * world - 1)  # at most a last batch under 2 images per process is dropped


def test_training_drops_only_a_single_image_tail():
    assert [len(b) for b in _loader(np.arange(17), batch_size=8).batches()] == [8, 8]
    assert [len(b) for b in _loader(np.arange(18), batch_size=8).batches()] == [8, 8, 2]
    assert [len(b) for b in _loader(np.arange(17), batch_size=8, shuffle=False).batches()] == [8, 8, 1]


def test_to_float_normalises_and_augment_is_seeded():
    images = torch.full((4, 3, 6, 6), 255, dtype=torch.uint8)
    x = to_float(images, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    assert torch.allclose(x, torch.full_like(x, 2.0))
    ramp = torch.arange(6.0).expand(4, 3, 6, 6).clone()
    a = augment(ramp, ["hflip", "crop"], torch.Generator().manual_seed(0))
    b = augment(ramp, ["hflip", "crop"], torch.Generator().manual_seed(0))
    assert a.shape == ramp.shape and torch.equal(a, b) and torch.isfinite(a).all()
    flipped = augment(ramp, ["hflip"], torch.Generator().manual_seed(1))
    for image in flipped:
        assert torch.equal(image, ramp[0]) or torch.equal(image, ramp[0].flip(2))


def test_to_float_layout_follows_the_model():
    images = torch.from_numpy(np.zeros((2, 4, 4, 3), dtype=np.uint8)).permute(0, 3, 1, 2)
    assert to_float(images, [0.5] * 3, [0.5] * 3).is_contiguous(memory_format=torch.channels_last)
    assert to_float(images, [0.5] * 3, [0.5] * 3, channels_last=False).is_contiguous()


def _uint8_batch(n=16, size=8):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=generator)
    return pixels.permute(0, 3, 1, 2)  # NCHW view of NHWC memory, as the loader gives


def test_a_policy_draws_per_group_of_images_from_its_own_stream():
    images, labels = _uint8_batch(), torch.arange(16) % 3
    norm = ([0.0] * 3, [1 / 255] * 3)  # to_float then gives the pixel values back
    recipe = Recipe(["trivialaugment"], CROP_SCALE, 0.0, 0.0, 3, torch.Generator().manual_seed(0), seed=1)
    state = torch.random.get_rng_state()
    x, targets = recipe(images, labels, *norm)
    assert torch.equal(torch.random.get_rng_state(), state)  # torch's global generator is left as it was
    assert torch.equal(targets, labels) and x.is_contiguous(memory_format=torch.channels_last)
    changed = [not torch.equal(x[i].round().to(torch.uint8), images[i]) for i in range(16)]
    assert any(changed)  # some groups drew an operation that changes pixels
    # The same seed draws the same operations; another seed others.
    same = Recipe(["trivialaugment"], CROP_SCALE, 0.0, 0.0, 3, torch.Generator().manual_seed(0), seed=1)
    other = Recipe(["trivialaugment"], CROP_SCALE, 0.0, 0.0, 3, torch.Generator().manual_seed(0), seed=2)
    assert torch.equal(same(images, labels, *norm)[0], x)
    assert not torch.equal(other(images, labels, *norm)[0], x)
    # Groups of POLICY_GROUP images draw apart: the groups of one batch do not all get the same operation.
    ones = torch.full((8 * POLICY_GROUP, 3, 8, 8), 100, dtype=torch.uint8)
    ramp = ones * torch.arange(8).view(1, 1, 1, 8).to(torch.uint8)
    out = Recipe(["randaugment"], CROP_SCALE, 0.0, 0.0, 3, torch.Generator(), seed=0)(
        ramp, torch.zeros(64).long(), *norm
    )[0]
    groups = {tuple(out[i * POLICY_GROUP].flatten().tolist()) for i in range(8)}
    assert len(groups) > 1


@pytest.mark.parametrize("n", [16, 15])
def test_mixup_gives_soft_targets_and_leaves_an_odd_image_unmixed(n):
    images, labels = _uint8_batch(n), torch.arange(n) % 4
    np.random.seed(0)  # timm's Mixup draws from NumPy's global generator (seeded per cell by accelerate's set_seed)
    x, targets = Recipe([], CROP_SCALE, 1.0, 0.0, 4, torch.Generator(), seed=0)(images, labels, [0.5] * 3, [0.25] * 3)
    assert targets.shape == (n, 4) and torch.allclose(targets.sum(1), torch.ones(n))
    assert (targets.max(1).values < 1).all() if n % 2 == 0 else (targets[:-1].max(1).values < 1).all()
    plain = to_float(images, [0.5] * 3, [0.25] * 3)
    assert not torch.allclose(x[:2], plain[:2])
    if n % 2:
        assert torch.equal(targets[-1], torch.nn.functional.one_hot(labels[-1], 4).float())
        assert torch.equal(x[-1], plain[-1])
