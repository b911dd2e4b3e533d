"""Models: any timm name, plus the original study's MLP registered in timm's registry as `pieceboard_mlp`.

    import timm, pieceboard
    mlp = timm.create_model("pieceboard_mlp", num_classes=18, img_size=50)
    kept = timm.create_model("local-dir:results/demo/runs/mlp@16px/model", pretrained=True)  # a model folder

Fine-tune modes: `scratch` (random init, everything trains), `finetune` (pretrained, everything trains),
`linear_probe` (pretrained, only the classifier trains; the frozen backbone's BatchNorm layers stay in eval mode,
so their running statistics remain the pretrained ones).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath
from timm.models import build_model_with_cfg, register_model
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pieceboard._io import StorageError, make_folder, require_space, staged_folder
from pieceboard.config import MLP_NAME, PieceboardError, is_mlp

MLP_WIDTHS = (1024, 512, 256, 128, 64)  # five hidden layers + the classifier = six fully-connected layers


class WeightsError(PieceboardError):
    """Pretrained weights were asked for but cannot be found offline."""


class PieceboardMLP(nn.Module):
    """Six fully-connected layers with ReLU between them, on the flattened image (the original study's MLP)."""

    def __init__(
        self,
        num_classes: int = 1000,
        img_size: int | tuple[int, int] = 50,
        in_chans: int = 3,
        widths: tuple[int, ...] = MLP_WIDTHS,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = widths[-1]
        # A side, or (height, width) as timm records it in a model folder's config.json.
        height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
        layers: list[nn.Module] = [nn.Flatten()]
        width_in = in_chans * height * width
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
        "fixed_input_size": True,  # the first layer's width is the number of pixels
        "architecture": MLP_NAME,
    }
}


@register_model
def pieceboard_mlp(pretrained: bool = False, **kwargs) -> PieceboardMLP:
    """The original study's six-layer MLP; `img_size` sets the input size it is built for."""
    return build_model_with_cfg(PieceboardMLP, MLP_NAME, pretrained, **kwargs)


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


def resolve_weights(
    model_name: str, mode: str, weights: str | None, source: str | None = None, image_size: int | None = None
) -> str | None:
    """Find the pretrained weights a run needs, without touching the network.

    A run's own `weights` file is opened and checked (`check_weights_file`) without running anything in it.

    Args:
        model_name: A timm name.
        mode: scratch, finetune or linear_probe.
        weights: The run's `weights` file, if it names one.
        source: The benchmark file, for the `pieceboard prefetch` command the message gives.
        image_size: The run's image size (the MLP's first layer depends on it); default the model's own.

    Returns:
        A local file to load, or None for a scratch run.

    Raises:
        WeightsError: Naming the model, the file looked for or what is wrong with it, and how to provide it.
    """
    if mode == "scratch":
        return None
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir():
            inside = path / MODEL_WEIGHTS  # a model folder pieceboard kept (runs/<id>/model) holds its file here
            name = inside if inside.is_file() else "the .safetensors file inside it"
            raise WeightsError(f"{model_name}: weights {path} is a folder; set weights to {name}")
        if not path.is_file():
            raise WeightsError(f"{model_name}: weights file {path} does not exist")
        if path.suffix not in WEIGHT_SUFFIXES:
            raise WeightsError(f"{model_name}: weights file {path} must be .safetensors (or .pth/.pt/.bin)")
        stat = path.stat()
        check_weights_file(model_name, str(path), image_size, stat.st_size, stat.st_mtime_ns)
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
        f"run `pieceboard prefetch {source or 'FILE.toml'}` while online, or set "
        'weights = "path/to/model.safetensors" in the run'
    )


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_ZIP, _PICKLE = b"PK\x03\x04", b"\x80"  # a torch.save file (zip, since torch 1.6); an older one starts as a pickle
# What torch.save writes for a state dict (tensors and their storages in an OrderedDict): any other global in its
# pickle is a Python object that loading would construct, which a weights file never needs.
_TENSOR_GLOBALS = {("collections", "OrderedDict"), ("torch", "Size"), ("torch._tensor", "_rebuild_from_type_v2")}


@functools.lru_cache(maxsize=64)
def check_weights_file(model_name: str, path: str, image_size: int | None, size: int, mtime_ns: int) -> None:
    """Open a run's weights file and check it can be what timm loads, without running anything in it.

    A safetensors file (by its content, whatever its name) must have a readable header and, for every tensor of the
    model but its classifier (which timm replaces), one of the same name and shape: timm loads pretrained weights
    non-strictly once the classifier is replaced, so a file that does not fit would otherwise leave layers silently
    random. A PyTorch file (.pth/.pt/.bin) is never unpickled here: its pickle is read as opcodes, and it must hold
    tensors only (no pickled modules or other objects); its tensor names are checked when the run loads it. `size`
    and `mtime_ns` key the cache: an edited file is checked again.

    Raises:
        WeightsError: What the file is and what is wrong, naming it.
    """
    where = f"{model_name}: weights file {path}"
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise WeightsError(f"{where} cannot be read ({exc.strerror or exc})") from None
    if _looks_like_safetensors(head):
        if not path.endswith(".safetensors"):
            raise WeightsError(f"{where} holds safetensors data: name it .safetensors so that it is read as such")
        _check_tensors(model_name, where, _safetensors_shapes(path, where), image_size)
    elif head.startswith(_ZIP):
        if path.endswith(".safetensors"):
            raise WeightsError(f"{where} is a PyTorch (torch.save) file, not safetensors: name it .pth")
        _check_pickle(path, where)
    elif head.startswith(_PICKLE):
        raise WeightsError(
            f"{where} is a PyTorch file in the format before torch 1.6, which pieceboard does not read; save the "
            f"state dict again with torch.save, or as .safetensors"
        )
    else:
        shown = head[:8].decode("ascii", "replace").encode("unicode_escape").decode()
        raise WeightsError(f"{where} is not a weights file (neither safetensors nor torch.save; it starts {shown!r})")


def _looks_like_safetensors(head: bytes) -> bool:
    # 8 bytes of little-endian header length, then the header's JSON.
    return len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 1 << 27


def _safetensors_shapes(path: str, where: str) -> dict[str, tuple[int, ...]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {key.removeprefix("module."): tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{where} is not a valid safetensors file ({exc})") from None


def _check_tensors(model_name: str, where: str, found: dict[str, tuple[int, ...]], image_size: int | None) -> None:
    kwargs = {"img_size": image_size} if is_mlp(model_name) and image_size else {}
    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False, **kwargs)
    classifiers = model.pretrained_cfg.get("classifier") or ()
    replaced = {f"{name}.{part}" for name in ([classifiers] if isinstance(classifiers, str) else classifiers)
                for part in ("weight", "bias")}  # fmt: skip
    wanted = {
        key: tuple(tensor.shape)
        for key, tensor in model.state_dict().items()
        if key not in replaced and not key.endswith("num_batches_tracked")
    }
    missing = [key for key in wanted if key not in found]
    if missing:
        raise WeightsError(
            f"{where} does not fit {model_name}: {len(missing)} of its {len(wanted)} tensors are not in the file "
            f"(e.g. {missing[0]}); it must be a state dict of that architecture with timm's names"
        )
    # The MLP's first layer depends on the image size: without one, only the names can be checked.
    other = [key for key in wanted if found[key] != wanted[key]] if image_size or not is_mlp(model_name) else []
    if other:
        key = other[0]
        size = f" at image_size {image_size}" if kwargs else ""
        raise WeightsError(
            f"{where} does not fit {model_name}{size}: {len(other)} tensor(s) of another shape (e.g. {key}: "
            f"{list(found[key])} in the file, {list(wanted[key])} in the model)"
        )


def _check_pickle(path: str, where: str) -> None:
    import pickletools
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                raise WeightsError(f"{where} is a zip file but not a torch.save file (it has no data.pkl)")
            opcodes = list(pickletools.genops(archive.read(name)))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise WeightsError(f"{where} is a damaged torch.save file ({exc})") from None
    for opcode, arg, _ in opcodes:
        if opcode.name in ("STACK_GLOBAL", "INST", "OBJ"):  # not what torch.save writes (pickle protocol 2)
            raise WeightsError(
                f"{where} was not written by torch.save's default pickle protocol, so pieceboard cannot see what it "
                f"holds without unpickling it; save the state dict with safetensors.torch.save_file"
            )
        if opcode.name == "GLOBAL":
            module, _, attribute = str(arg).partition(" ")
            tensor_part = (module == "torch" and attribute.endswith("Storage")) or (
                module == "torch._utils" and attribute.startswith("_rebuild_")
            )
            if not tensor_part and (module, attribute) not in _TENSOR_GLOBALS:
                raise WeightsError(
                    f"{where} holds a pickled Python object ({module}.{attribute}), not only tensors, and is not "
                    f"loaded (unpickling it could run code); save the model's state_dict() instead, ideally with "
                    f"safetensors.torch.save_file"
                )


def build_model(
    model_name: str, mode: str, num_classes: int, image_size: int, weights_file: str | None, drop_path: float = 0.0
) -> nn.Module:
    """Create a model ready to train in the given mode.

    Args:
        model_name: A timm name, or pieceboard_mlp.
        mode: scratch, finetune or linear_probe.
        num_classes: Output classes; a pretrained classifier of another size is replaced.
        image_size: Input size (the MLP's input layer depends on it).
        weights_file: From `resolve_weights`; required unless mode is scratch.
        drop_path: Stochastic depth rate (timm's `drop_path_rate`); see `has_drop_path`.

    Returns:
        The model, with only the classifier trainable in linear_probe mode.
    """
    kwargs: dict = {"num_classes": num_classes}
    if is_mlp(model_name):
        kwargs["img_size"] = image_size
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
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


# torch's private common base of BatchNorm1d/2d/3d and SyncBatchNorm: the public classes share no public base.
_BATCH_NORM = nn.modules.batchnorm._BatchNorm


def set_train_mode(model: nn.Module) -> None:
    """`model.train()`, except that norm layers with no trainable parameters keep their frozen statistics."""
    model.train()
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        # Frozen = has parameters and none trains (an affine-free BatchNorm has none, and still trains its stats).
        if isinstance(module, _BATCH_NORM) and params and not any(p.requires_grad for p in params):
            module.eval()


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Parameter count, optionally only those that train."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@dataclass(frozen=True)
class Probe:
    """What a model does with an input size, seen in one forward pass on the meta device (no memory, no weights)."""

    depthwise: bool  # has depthwise convolutions (slower in bf16 than in fp32 on CPUs)
    feature_map: int | None  # side of the last feature map; None when the features are not a map (MLP, ViT)
    strided_conv_on_one_pixel: bool  # a 3x3 stride-2 convolution sees a 1x1 map (see `device.resolve_precision`)
    gflops: float  # forward pass of one image
    params: int  # with a 2-class head: what checkpoints and model folders of it will hold, give or take the head


@functools.lru_cache(maxsize=128)
def probe(model_name: str, image_size: int) -> Probe:
    """Build `model_name` on the meta device and pass one `image_size` batch through its features.

    Raises:
        PieceboardError: The model cannot take images of that size (a fixed-size ViT, a kernel larger than a map).
    """
    kwargs = {"img_size": image_size} if is_mlp(model_name) else {}
    single_pixel: list[nn.Module] = []

    def spot(module: nn.Conv2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if module.stride != (1, 1) and module.kernel_size != (1, 1) and tuple(inputs[0].shape[-2:]) == (1, 1):
            single_pixel.append(module)

    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False, num_classes=2, **kwargs).eval()
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        for conv in convs:
            conv.register_forward_hook(spot)
        try:
            features = model.forward_features(torch.zeros(1, 3, image_size, image_size))
            gflops = count_gflops(model, image_size, "meta")
        except (RuntimeError, ValueError, AssertionError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PieceboardError(f"{model_name} cannot take {image_size} px images: {message}") from None
    depthwise = any(c.groups > 1 and c.groups == c.in_channels for c in convs)
    feature_map = int(features.shape[-1]) if features.ndim == 4 else None
    return Probe(depthwise, feature_map, bool(single_pixel), gflops, count_parameters(model))


@functools.lru_cache(maxsize=128)
def has_drop_path(model_name: str) -> bool:
    """Whether the model takes timm's `drop_path_rate` and builds stochastic-depth layers from it (on the meta device).

    Some timm models take the argument and ignore it; they count as without.
    """
    with torch.device("meta"):
        try:
            model = timm.create_model(model_name, pretrained=False, num_classes=2, drop_path_rate=0.1)
        except TypeError:  # the constructor has no such argument (pieceboard_mlp)
            return False
    return any(isinstance(m, DropPath) for m in model.modules())


def count_gflops(model: nn.Module, image_size: int, device: torch.device | str) -> float:
    """GFLOPs of one image's forward pass (eval mode, no grad; the model's training mode is restored)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    model.train(was_training)
    return counter.get_total_flops() / 1e9


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


# --- model folders ----------------------------------------------------------------------------------------------

MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"
# Of timm's pretrained config, what describes the architecture; the rest (the source checkpoint's tag, licence,
# test-time size) described weights that training replaced.
_ARCHITECTURE_KEYS = ("architecture", "first_conv", "classifier", "fixed_input_size")


def save_model_folder(
    model: nn.Module,
    folder: Path,
    model_name: str,
    class_names: list[str],
    image_size: int,
    mean_std: tuple[list[float], list[float]],
    pieceboard: dict,
) -> None:
    """Write a trained model in timm's Hugging Face layout, `config.json` + `model.safetensors`, replacing `folder`.

    `timm.create_model(f"local-dir:{folder}", pretrained=True)` builds it again (after `import pieceboard.models`
    for the MLP), and `timm.data.resolve_data_config` gives pieceboard's preprocessing: a squash resize
    (`crop_mode="squash"`, `crop_pct=1.0`, bilinear) to `image_size`, and the run's mean and std.

    Args:
        model: The trained model (unwrapped); it is not changed.
        folder: Where the folder goes (`runs/<id>/model`).
        model_name: Its timm name, as built.
        class_names: Label names, in class-index order.
        image_size: The square input size it was trained and tested at.
        mean_std: The normalisation it was trained and tested with.
        pieceboard: What `pieceboard predict` needs beyond timm's fields (run id, resize, precision, layout).

    Raises:
        StorageError: The disk has too little room (checked first) or filled up; nothing partial is left.
    """
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    size = sum(t.numel() * t.element_size() for t in state.values())
    require_space(make_folder(folder.parent), size + (1 << 20), f"the model of {pieceboard.get('run', model_name)}")
    # A fresh CPU copy built the way local-dir rebuilds it: contiguous tensors (safetensors refuses channels_last
    # ones) and timm's record of the construction arguments.
    kwargs: dict = {"num_classes": len(class_names)} | ({"img_size": image_size} if is_mlp(model_name) else {})
    export = timm.create_model(model_name, pretrained=False, **kwargs)
    export.load_state_dict(state)
    cfg = {key: export.pretrained_cfg[key] for key in _ARCHITECTURE_KEYS if key in export.pretrained_cfg}
    export.pretrained_cfg = cfg | {
        "input_size": (3, image_size, image_size),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "squash",
        "mean": tuple(mean_std[0]),
        "std": tuple(mean_std[1]),
    }
    config = {"label_names": list(class_names), "pieceboard": pieceboard}
    if is_mlp(model_name):  # timm records it on its own since 1.0.2x; older versions read it from here
        config["model_args"] = kwargs
    if folder.exists():  # an earlier model of this cell: replaced as a whole
        shutil.rmtree(folder)
    try:
        with staged_folder(folder, note=json.dumps({"run": pieceboard.get("run")})) as tmp:
            timm.models.save_for_hf(export, str(tmp), model_config=config, safe_serialization=True)
            # safetensors writes its file 0600; give it what the umask gave config.json, as every file here gets
            os.chmod(tmp / MODEL_WEIGHTS, (tmp / MODEL_CONFIG).stat().st_mode & 0o777)
    except SafetensorError as exc:  # safetensors' own error for a failed write, e.g. a disk that filled meanwhile
        raise StorageError(f"cannot write {folder}: {exc}") from None
