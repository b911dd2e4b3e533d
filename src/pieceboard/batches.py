"""Batches on the device: whole batches sliced from the cache by a seeded order, sharded across processes.

    loader = BatchLoader(pixels, labels, train_indices, batch_size=64, shuffle=True, seed=0, device=device)
    for images, labels, positions in loader: ...   # uint8 NCHW (channels_last memory) on the device

With the whole cache resident on a GPU (`resident_copy`) a batch is one gather on the device; otherwise batches are
read from the memory map (on a GPU through pinned memory, one batch ahead).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


class BatchLoader:
    """Whole batches sliced from the cache by a seeded permutation, sharded across processes.

    `batch_size` is the global batch: each step takes the next `batch_size` images of the epoch's order and
    process `rank` of `world` gets its contiguous share (shares differ by at most one image). Every process
    computes the same order from `seed + epoch`, so no communication is needed. A final training batch that would
    give a process fewer than 2 images is dropped (BatchNorm cannot train on one image, and a process with none
    would stall the others); the epoch's reshuffle means a different few images sit out each epoch. Evaluation
    never drops an image.

    Yields `(images, labels, indices)`: uint8 NCHW images on `device` (a view of NHWC memory, i.e. channels_last),
    int64 labels and the manifest positions of the images. With `resident` (the whole cache already on the device,
    from `resident_copy`) a batch is gathered on the device; otherwise it is read from the memory map, and on a GPU
    copied from pinned memory by a reader thread one batch ahead.
    """

    def __init__(
        self,
        pixels: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        device: str | object = "cpu",
        prefetch: bool | None = None,
        resident: tuple[Any, Any] | None = None,
    ):
        self.pixels, self.labels, self.indices = pixels, labels, np.asarray(indices)
        self.resident = resident
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world, self.device = rank, world, device
        # A reader thread overlaps host reads with GPU work; on a CPU it only takes cycles from the compute threads
        # (measured: the MLP step ran ~20% slower with it on 2 cores), so there batches are read in line.
        self.on_cuda = getattr(device, "type", str(device)) == "cuda"
        self.prefetch = (self.on_cuda and resident is None) if prefetch is None else prefetch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration follows."""
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """This epoch's order of manifest positions (the same on every process)."""
        if not self.shuffle:
            return self.indices
        rng = np.random.default_rng([self.seed, self.epoch])
        return self.indices[rng.permutation(len(self.indices))]

    def batches(self) -> list[np.ndarray]:
        """This process's manifest positions for each step of the epoch."""
        order = self.order()
        steps = []
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            if self.shuffle and len(batch) < self.batch_size and len(batch) < 2 * self.world:
                break  # only ever the last, partial batch
            steps.append(np.array_split(batch, self.world)[self.rank])
        return steps

    def __len__(self) -> int:
        return len(self.batches())

    def _load(self, positions: np.ndarray):
        import torch

        # Sorted reads walk the memory map forwards; the order inside a batch does not matter to the step.
        positions = np.sort(positions)
        if self.resident is not None:
            index = torch.from_numpy(positions).to(self.device, non_blocking=True)
            images, labels = (t.index_select(0, index) for t in self.resident)
            return images.permute(0, 3, 1, 2), labels, index  # positions already on the device
        images = torch.from_numpy(np.ascontiguousarray(self.pixels[positions]))
        labels = torch.from_numpy(self.labels[positions])
        if self.on_cuda:
            images = images.pin_memory()
        images = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        return images, labels.to(self.device, non_blocking=True), torch.from_numpy(positions)

    def __iter__(self):
        steps = self.batches()
        if not self.prefetch:
            yield from (self._load(p) for p in steps)
            return
        # One batch is read from the memory map in a thread while the current one trains.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as reader:
            pending = reader.submit(self._load, steps[0]) if steps else None
            for i in range(len(steps)):
                batch = pending.result()
                pending = reader.submit(self._load, steps[i + 1]) if i + 1 < len(steps) else None
                yield batch


RESIDENT_CHUNK = 1024  # images per host-to-device copy when the cache is made resident
RESIDENT_SHARE = 0.1  # of a GPU's memory that one worker's cached images may take; the models need the rest


def resident_copy(pixels: np.ndarray, labels: np.ndarray, device: Any, share: float = RESIDENT_SHARE) -> tuple | None:
    """The whole cache and its labels on a GPU, when they fit in `share` of its memory; None otherwise (or on a CPU).

    11,700 images at 200 px are 1.4 GB; on the GPU a batch is then one gather, with no host copy in the step.
    """
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return None
    if pixels.nbytes > share * torch.cuda.get_device_properties(device).total_memory:
        return None
    # Copied a slice at a time: the cache is a read-only memory map, which torch.from_numpy takes only with a
    # warning (tensors are writable), and one full host copy first would need the whole cache in host memory again.
    images = torch.empty(pixels.shape, dtype=torch.uint8, device=device)
    for start in range(0, len(pixels), RESIDENT_CHUNK):
        images[start : start + RESIDENT_CHUNK] = torch.from_numpy(np.array(pixels[start : start + RESIDENT_CHUNK]))
    return images, torch.from_numpy(np.array(labels)).to(device)


def to_float(images, mean: list[float], std: list[float], channels_last: bool = True):
    """uint8 NCHW on the device -> normalised float32, in channels_last or contiguous NCHW memory.

    Batches arrive as NCHW views of NHWC memory, which is channels_last already; a contiguous copy is made only for
    models that want NCHW (the MLP, or `channels_last = false`).
    """
    shift, scale = _affine(tuple(mean), tuple(std), images.device)
    x = images.float().sub_(shift).mul_(scale)
    return x if channels_last else x.contiguous()


@functools.lru_cache(maxsize=16)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], device):
    import torch

    shift = torch.tensor([255.0 * m for m in mean], device=device).view(1, 3, 1, 1)
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device).view(1, 3, 1, 1)
    return shift, scale


CROP_SCALE = (0.35, 1.0)  # share of the image a random crop keeps (the `crop_scale` default); torchvision's lower
# bound 0.08 is for 224 px ImageNet photos and leaves a few pixels at the 16-50 px sizes benchmarked here
CROP_ASPECT = (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop default
POLICIES = ("randaugment", "trivialaugment", "autoaugment")  # torchvision.transforms.v2's, by `augment` name
# torchvision's policies draw their operations once per call, for every image passed: called on a whole batch, every
# image would get the same operation. Called on groups of this many images, each group draws its own; one image at a
# time costs about 6x more (measured on the CPU with 64 images of 32 px: RandAugment 3.7 ms per batch in groups of 8,
# 23 ms one by one, 5.7 ms whole).
POLICY_GROUP = 8


def augment(images, kinds: list[str], generator, scale: tuple[float, float] | list[float] = CROP_SCALE):
    """Batch augmentations on the device: `crop` (random resized crop), then `hflip` (half the images mirrored).

    Args:
        images: Float NCHW batch.
        kinds: Which augmentations to apply; the order is always crop, then flip (other names are ignored).
        generator: A seeded torch.Generator on the images' device.
        scale: The area range of the crop, as fractions of the image.
    """
    import torch
    import torch.nn.functional as F

    n = images.shape[0]
    layout = torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    if "crop" in kinds:
        # Random resized crop as one batched affine resample.
        area = torch.empty(n, device=images.device).uniform_(*scale, generator=generator)
        log_ratio = torch.empty(n, device=images.device).uniform_(*np.log(CROP_ASPECT), generator=generator)
        ratio = torch.exp(log_ratio)
        sx = torch.sqrt(area * ratio).clamp(max=1.0)
        sy = torch.sqrt(area / ratio).clamp(max=1.0)
        tx = (torch.rand(n, device=images.device, generator=generator) * 2 - 1) * (1 - sx)
        ty = (torch.rand(n, device=images.device, generator=generator) * 2 - 1) * (1 - sy)
        theta = torch.zeros(n, 2, 3, device=images.device)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, sy, ty
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if "hflip" in kinds:
        flip = torch.rand(n, device=images.device, generator=generator) < 0.5
        images = torch.where(flip.view(n, 1, 1, 1), images.flip(3), images)
    return images.contiguous(memory_format=layout)


class Recipe:
    """What a training batch goes through on the device before the model, in this order:

    1. a torchvision policy (`randaugment`, `trivialaugment`, `autoaugment` in `augment`) on the uint8 images, each
       group of `POLICY_GROUP` images with its own draw, from a private random stream seeded by `seed`;
    2. normalisation (`to_float`);
    3. `crop` then `hflip` (`augment`), from `generator`;
    4. mixup or cutmix (timm.data.Mixup, one draw per batch), which makes the targets class probabilities. timm's
       Mixup pairs the images of a batch: in a batch with an odd number of images the last one is left unmixed.

    Args:
        kinds: The `augment` setting.
        crop_scale: The `crop_scale` setting.
        mixup: Mixup alpha; 0 is off.
        cutmix: CutMix alpha; 0 is off. With both on, each batch takes one of them, half the time each.
        num_classes: Classes, for the mixed targets.
        generator: A seeded torch.Generator on the device.
        seed: Seeds the policy's random stream (it draws on the CPU: torchvision's policies use torch's global
            generator, which is swapped for this stream while they run).
    """

    def __init__(
        self,
        kinds: list[str],
        crop_scale: tuple[float, float] | list[float],
        mixup: float,
        cutmix: float,
        num_classes: int,
        generator,
        seed: int,
    ):
        import torch

        self.kinds, self.crop_scale, self.generator, self.num_classes = kinds, tuple(crop_scale), generator, num_classes
        self.policy = _policy(next((k for k in kinds if k in POLICIES), None))
        self.policy_state = torch.Generator().manual_seed(seed).get_state()
        self.mixup = None
        if mixup or cutmix:
            from timm.data import Mixup

            # Label smoothing stays in the loss (it gives the same targets as smoothing before mixing).
            self.mixup = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=0.0, num_classes=num_classes)

    def __call__(self, images, labels, mean: list[float], std: list[float], channels_last: bool = True):
        """A uint8 NCHW batch and its labels -> the normalised float batch the model trains on, and its targets
        (class indices, or class probabilities after mixup or cutmix)."""
        if self.policy is not None:
            images = self._apply_policy(images)
        x = to_float(images, mean, std, channels_last)
        if "crop" in self.kinds or "hflip" in self.kinds:
            x = augment(x, self.kinds, self.generator, self.crop_scale)
        if self.mixup is None:
            return x, labels
        return self._mix(x, labels)

    def _apply_policy(self, images):
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.set_state(self.policy_state)
            out = torch.cat([self.policy(group) for group in images.split(POLICY_GROUP)])
            self.policy_state = torch.random.default_generator.get_state()
        return out.contiguous(memory_format=torch.channels_last)  # as the loader gives batches

    def _mix(self, x, labels):
        import torch
        import torch.nn.functional as F

        paired = len(x) - len(x) % 2
        _, targets = self.mixup(x[:paired], labels[:paired])  # mixes that view of x in place
        if paired == len(x):
            return x, targets
        rest = F.one_hot(labels[paired:], self.num_classes).to(targets.dtype)
        return x, torch.cat([targets, rest])


def _policy(name: str | None):
    if name is None:
        return None
    from torchvision.transforms import v2

    policies = {"randaugment": v2.RandAugment, "trivialaugment": v2.TrivialAugmentWide, "autoaugment": v2.AutoAugment}
    return policies[name]()  # torchvision's defaults: RandAugment 2 operations at magnitude 9 of 31, ImageNet policy
