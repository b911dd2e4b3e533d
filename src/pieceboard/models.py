"""Models: any timm name, plus the original study's MLP registered in timm's registry as `pieceboard_mlp`.

    import timm, pieceboard
    mlp = timm.create_model("pieceboard_mlp", num_classes=18, img_size=50)

Fine-tune modes: `scratch` (random init, everything trains), `finetune` (pretrained, everything trains),
`linear_probe` (pretrained, only the classifier trains; the frozen backbone's BatchNorm layers stay in eval mode,
so their running statistics remain the pretrained ones).
"""

from __future__ import annotations

import difflib
import functools
import os
from pathlib import Path

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, register_model
from torch import nn

from pieceboard.config import MLP_NAME, PieceboardError

MLP_WIDTHS = (1024, 512, 256, 128, 64)  # five hidden layers + the classifier = six fully-connected layers


class WeightsError(PieceboardError):
    """Pretrained weights were asked for but cannot be found offline."""


class PieceboardMLP(nn.Module):
    """Six fully-connected layers with ReLU between them, on the flattened image (the original study's MLP)."""

    def __init__(
        self, num_classes: int = 1000, img_size: int = 50, in_chans: int = 3, widths: tuple[int, ...] = MLP_WIDTHS
    ):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = widths[-1]
        layers: list[nn.Module] = [nn.Flatten()]
        width_in = in_chans * img_size * img_size
        for width in widths:
            layers += [nn.Linear(width_in, width), nn.ReLU(inplace=True)]
            width_in = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width_in, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        """The final layer, as timm models expose it."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final layer for a new number of classes."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything but the classifier."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        return self.head(self.body(x))


# timm's register_model reads this module-level table for the pretrained config (mean/std, classifier name).
default_cfgs = {
    MLP_NAME: {
        "url": "",
        "num_classes": 1000,  # timm's convention; a weights file's head of another size is dropped
        "input_size": (3, 50, 50),
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": None,
        "classifier": "head",
        "architecture": MLP_NAME,
    }
}


@register_model
def pieceboard_mlp(pretrained: bool = False, **kwargs) -> PieceboardMLP:
    """The original study's six-layer MLP; `img_size` sets the input size it is built for."""
    return build_model_with_cfg(PieceboardMLP, MLP_NAME, pretrained, **kwargs)


def known_model(name: str) -> bool:
    """Whether timm (with pieceboard's MLP registered) can build `name`."""
    return timm.is_model(name)


def similar_models(name: str, n: int = 5) -> list[str]:
    """The registered names nearest to a misspelt one."""
    return difflib.get_close_matches(name, timm.list_models(), n=n, cutoff=0.6)


def _hub_cached_file(model_name: str) -> str | None:
    """The pretrained weights of `model_name` if already in the Hugging Face or torch hub cache."""
    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return found
    if cfg.url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if cached.is_file():
            return str(cached)
    return None


def resolve_weights(model_name: str, mode: str, weights: str | None) -> str | None:
    """Find the pretrained weights a run needs, without touching the network.

    Args:
        model_name: A timm name.
        mode: scratch, finetune or linear_probe.
        weights: The run's `weights` file, if it names one.

    Returns:
        A local file to load, or None for a scratch run.

    Raises:
        WeightsError: Naming the model, the file looked for and how to provide it.
    """
    if mode == "scratch":
        return None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"{model_name}: weights file {path} does not exist")
        if path.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
            raise WeightsError(f"{model_name}: weights file {path} must be .safetensors (or .pth/.pt/.bin)")
        return str(path)
    cached = _hub_cached_file(model_name)
    if cached:
        return cached
    cfg = timm.models.get_pretrained_cfg(model_name)
    where = (cfg.hf_hub_id or cfg.url) if cfg else None
    if not where:
        raise WeightsError(
            f'{model_name}: has no published pretrained weights; set weights = "file.safetensors" in its run '
            'or use mode = "scratch"'
        )
    raise WeightsError(
        f"{model_name}: pretrained weights ({where}) are not in the local cache and cannot be downloaded now; "
        f'run `pieceboard prefetch FILE.toml` while online, or set weights = "path/to/model.safetensors" in the run'
    )


def build_model(model_name: str, mode: str, num_classes: int, image_size: int, weights_file: str | None) -> nn.Module:
    """Create a model ready to train in the given mode.

    Args:
        model_name: A timm name, or pieceboard_mlp.
        mode: scratch, finetune or linear_probe.
        num_classes: Output classes; a pretrained classifier of another size is replaced.
        image_size: Input size (the MLP's input layer depends on it).
        weights_file: From `resolve_weights`; required unless mode is scratch.

    Returns:
        The model, with only the classifier trainable in linear_probe mode.
    """
    kwargs: dict = {"num_classes": num_classes}
    if model_name.split(".")[0] == MLP_NAME:
        kwargs["img_size"] = image_size
    if mode == "scratch":
        model = timm.create_model(model_name, pretrained=False, **kwargs)
    else:
        if weights_file is None:
            raise WeightsError(f"{model_name}: mode {mode!r} needs pretrained weights")
        model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={"file": weights_file}, **kwargs)
    if mode == "linear_probe":
        model.requires_grad_(False)
        model.get_classifier().requires_grad_(True)
    return model


def set_train_mode(model: nn.Module) -> None:
    """`model.train()`, except that norm layers with no trainable parameters keep their frozen statistics."""
    model.train()
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        # Frozen = has parameters and none trains (an affine-free BatchNorm has none, and still trains its stats).
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and params and not any(p.requires_grad for p in params):
            module.eval()


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Parameter count, optionally only those that train."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def has_depthwise_conv(model: nn.Module) -> bool:
    """Whether the model uses depthwise convolutions (MobileNet, EfficientNet, ConvNeXt...)."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in model.modules())


@functools.lru_cache(maxsize=64)
def uses_depthwise_conv(model_name: str) -> bool:
    """`has_depthwise_conv` for a model name, built on the meta device (no memory, no weights)."""
    kwargs = {"img_size": 32} if model_name.split(".")[0] == MLP_NAME else {}
    with torch.device("meta"):
        return has_depthwise_conv(timm.create_model(model_name, pretrained=False, num_classes=2, **kwargs))


def is_convnet(model: nn.Module) -> bool:
    """Whether the model has 2-D convolutions (channels_last can only help those)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def normalization(
    model: nn.Module, mode: str, dataset_mean_std: tuple[list[float], list[float]] | None
) -> tuple[list[float], list[float]]:
    """Mean and std to normalise inputs: the backbone's pretrained config, or the dataset's for scratch runs."""
    if mode == "scratch":
        if dataset_mean_std is None:
            raise ValueError("a scratch run needs the dataset's mean and std")
        return dataset_mean_std
    cfg = timm.data.resolve_data_config({}, model=model)
    return list(cfg["mean"]), list(cfg["std"])
