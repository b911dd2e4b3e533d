"""Tests for pieceboard.models: the registered MLP, weight resolution (offline), build modes and helpers.

Everything runs on CPU with tiny inputs. Pretrained weights are never downloaded: each "pretrained" file is a
randomly initialised timm model of the same architecture saved locally, so the tests can check tensor by tensor
that the backbone was loaded and the classifier was replaced.
"""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import pytest
import safetensors.torch
import timm
import torch
from torch import nn

import pieceboard.models
from pieceboard.config import MLP_NAME, PieceboardError, unknown_model
from pieceboard.device import is_convnet
from pieceboard.models import (
    MLP_WIDTHS,
    PieceboardMLP,
    WeightsError,
    build_model,
    count_parameters,
    normalization,
    resolve_weights,
    set_train_mode,
)

NUM_CLASSES = 7
MLP_IMG = 16
CNN_IMG = 32
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# name -> (image size for build_model, classifier attribute, a backbone tensor to compare, hub id)
MODELS = {
    MLP_NAME: (MLP_IMG, "head", "body.1.weight", None),
    "resnet18": (CNN_IMG, "fc", "conv1.weight", "timm/resnet18.a1_in1k"),
    "mobilenetv3_large_100": (CNN_IMG, "classifier", "conv_stem.weight", "timm/mobilenetv3_large_100.ra_in1k"),
}
PRETRAINED_MODES = ("finetune", "linear_probe")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network, and empty private HF / torch hub caches for every test.

    huggingface_hub reads HF_HUB_CACHE / HF_HOME into `huggingface_hub.constants` at import time, and
    `try_to_load_from_cache` looks at `constants.HF_HUB_CACHE` when called, so the constant is patched as well
    as the environment. torch.hub reads TORCH_HOME at call time.
    """
    hf_home = tmp_path / "hf-home"
    hub_cache = hf_home / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))

    def _no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    return hub_cache


def _reference_model(name: str, seed: int = 0) -> nn.Module:
    """The same architecture with a 1000-class ImageNet-style head, as a published checkpoint would have."""
    torch.manual_seed(seed)
    kwargs = {"img_size": MLP_IMG} if name == MLP_NAME else {}
    return timm.create_model(name, pretrained=False, num_classes=1000, **kwargs)


@pytest.fixture(scope="session")
def weights_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A local .safetensors "pretrained" file per model (random weights, 1000 classes, seed 0)."""
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for name in MODELS:
        path = folder / f"{name}.safetensors"
        safetensors.torch.save_file(_reference_model(name).state_dict(), str(path))
        files[name] = path
    return files


def _batch(img: int) -> torch.Tensor:
    return torch.randn(2, 3, img, img, generator=torch.Generator().manual_seed(1))


def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _bn_state(model: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for bn in _bn_layers(model) for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)]


# ---------------------------------------------------------------------------------------------- the MLP in timm


def test_mlp_is_registered_in_timm():
    assert pieceboard.models.pieceboard_mlp  # importing pieceboard.models registers the model
    assert timm.is_model(MLP_NAME)
    assert timm.list_models("pieceboard*") == [MLP_NAME]
    assert MLP_NAME in timm.list_models()


def test_mlp_has_six_linear_layers_with_relu_between():
    model = timm.create_model(MLP_NAME, num_classes=NUM_CLASSES, img_size=MLP_IMG)
    assert isinstance(model, PieceboardMLP)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.ReLU))]
    kinds = ["L" if isinstance(m, nn.Linear) else "R" for m in layers]
    assert "".join(kinds) == "LRLRLRLRLRL"  # six Linear, a ReLU between each pair, none after the last
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (3 * MLP_IMG * MLP_IMG, 1024),
        (1024, 512),
        (512, 256),
        (256, 128),
        (128, 64),
        (64, NUM_CLASSES),
    ]
    assert model.get_classifier() is linears[-1]
    assert model.num_classes == NUM_CLASSES

    x = _batch(MLP_IMG)
    out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    # The forward pass is exactly Linear/ReLU alternation on the flattened image.
    with torch.no_grad():
        h = x.flatten(1)
        for lin in linears[:-1]:
            h = torch.relu(lin(h))
        torch.testing.assert_close(model.forward_features(x), h)
        torch.testing.assert_close(out.detach(), linears[-1](h))


def test_mlp_reset_classifier_and_features():
    model = timm.create_model(MLP_NAME, num_classes=NUM_CLASSES, img_size=MLP_IMG)
    x = _batch(MLP_IMG)
    assert model.forward_features(x).shape == (2, MLP_WIDTHS[-1])
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity)
    assert model(x).shape == (2, MLP_WIDTHS[-1])


# ------------------------------------------------------------------------------------------------- build_model


@pytest.mark.parametrize("name", list(MODELS))
def test_build_model_scratch(name, weights_files):
    img, clf_name, probe, _ = MODELS[name]
    saved = safetensors.torch.load_file(str(weights_files[name]))
    torch.manual_seed(123)  # a different seed from the saved file
    model = build_model(name, "scratch", NUM_CLASSES, img, None)

    assert not torch.equal(model.state_dict()[probe], saved[probe])
    clf = model.get_classifier()
    assert clf is getattr(model, clf_name)
    assert clf.out_features == NUM_CLASSES
    assert all(p.requires_grad for p in model.parameters())
    assert count_parameters(model, trainable_only=True) == count_parameters(model)
    model.eval()
    with torch.no_grad():
        assert model(_batch(img)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("mode", PRETRAINED_MODES)
@pytest.mark.parametrize("name", list(MODELS))
def test_build_model_pretrained_loads_backbone_and_replaces_head(name, mode, weights_files):
    img, clf_name, probe, _ = MODELS[name]
    path = weights_files[name]
    assert resolve_weights(name, mode, str(path)) == str(path)
    saved = safetensors.torch.load_file(str(path))
    torch.manual_seed(321)
    model = build_model(name, mode, NUM_CLASSES, img, resolve_weights(name, mode, str(path)))
    state = model.state_dict()

    # Every backbone tensor (weights and BN buffers) is the saved one.
    assert torch.equal(state[probe], saved[probe])
    backbone_keys = [k for k in saved if not k.startswith(clf_name + ".")]
    assert backbone_keys and len(backbone_keys) == len(saved) - 2
    for key in backbone_keys:
        assert torch.equal(state[key], saved[key]), key

    # The classifier has the new size and is a fresh one, not (a slice of) the saved head.
    clf = model.get_classifier()
    assert clf is getattr(model, clf_name)
    assert clf.out_features == NUM_CLASSES
    assert saved[f"{clf_name}.weight"].shape[0] == 1000
    assert clf.weight.shape == (NUM_CLASSES, saved[f"{clf_name}.weight"].shape[1])
    assert not torch.equal(clf.weight.detach(), saved[f"{clf_name}.weight"][:NUM_CLASSES])
    assert model.num_classes == NUM_CLASSES

    clf_numel = sum(p.numel() for p in clf.parameters())
    if mode == "finetune":
        assert all(p.requires_grad for p in model.parameters())
        assert count_parameters(model, trainable_only=True) == count_parameters(model)
    else:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {f"{clf_name}.weight", f"{clf_name}.bias"}
        assert count_parameters(model, trainable_only=True) == clf_numel
        assert count_parameters(model) > clf_numel

    model.eval()
    with torch.no_grad():
        assert model(_batch(img)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("mode", PRETRAINED_MODES)
def test_build_model_pretrained_without_file_raises(mode):
    with pytest.raises(WeightsError, match=rf"resnet18: mode '{mode}' needs pretrained weights"):
        build_model("resnet18", mode, NUM_CLASSES, CNN_IMG, None)


def test_linear_probe_trains_only_the_head(weights_files):
    model = build_model("resnet18", "linear_probe", NUM_CLASSES, CNN_IMG, str(weights_files["resnet18"]))
    set_train_mode(model)
    loss = model(_batch(CNN_IMG)).logsumexp(1).sum()
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {"fc.weight", "fc.bias"}
    assert count_parameters(model, trainable_only=True) == 512 * NUM_CLASSES + NUM_CLASSES


# ---------------------------------------------------------------------------------------------- set_train_mode


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_large_100"])
def test_set_train_mode_linear_probe_keeps_frozen_bn_in_eval(name, weights_files):
    img, clf_name, _, _ = MODELS[name]
    model = build_model(name, "linear_probe", NUM_CLASSES, img, str(weights_files[name]))
    model.eval()
    set_train_mode(model)

    assert model.training
    assert getattr(model, clf_name).training
    bns = _bn_layers(model)
    assert bns
    assert not any(bn.training for bn in bns)

    before = _bn_state(model)
    model(_batch(img))
    after = _bn_state(model)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    # ...and those are still the saved (pretrained) statistics.
    saved = safetensors.torch.load_file(str(weights_files[name]))
    for key, value in model.state_dict().items():
        if "running_" in key:
            assert torch.equal(value, saved[key]), key


@pytest.mark.parametrize("mode", ["finetune", "scratch"])
def test_set_train_mode_trainable_bn_in_train_mode(mode, weights_files):
    weights = str(weights_files["resnet18"]) if mode == "finetune" else None
    model = build_model("resnet18", mode, NUM_CLASSES, CNN_IMG, weights)
    set_train_mode(model)
    bns = _bn_layers(model)
    assert all(m.training for m in model.modules())
    before = _bn_state(model)
    model(_batch(CNN_IMG))
    after = _bn_state(model)
    # Every BN layer updated its running statistics and counter.
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(int(bn.num_batches_tracked) == 1 for bn in bns)


def test_set_train_mode_affine_free_bn_still_trains():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 8, 8))  # materialise the lazy layer
    set_train_mode(model)  # everything trainable: nothing is frozen
    assert model[1].training


# ----------------------------------------------------------------------------------------------- resolve_weights


def test_resolve_weights_scratch_is_none(tmp_path):
    assert resolve_weights("resnet18", "scratch", None) is None
    assert resolve_weights("resnet18", "scratch", str(tmp_path / "missing.safetensors")) is None
    assert resolve_weights(MLP_NAME, "scratch", None) is None


@pytest.mark.parametrize("mode", PRETRAINED_MODES)
def test_resolve_weights_missing_local_file(mode, tmp_path):
    missing = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(WeightsError) as info:
        resolve_weights("resnet18", mode, str(missing))
    message = str(info.value)
    assert message.startswith("resnet18: ")
    assert str(missing) in message
    assert "does not exist" in message
    assert isinstance(info.value, PieceboardError)


@pytest.mark.parametrize("suffix", [".txt", ".ckpt", ""])
def test_resolve_weights_wrong_suffix(suffix, tmp_path):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not weights")
    with pytest.raises(WeightsError) as info:
        resolve_weights("resnet18", "finetune", str(path))
    message = str(info.value)
    assert message.startswith("resnet18: ")
    assert str(path) in message
    assert ".safetensors" in message


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pt", ".bin"])
def test_resolve_weights_accepted_suffixes(suffix, tmp_path, weights_files):
    path = tmp_path / f"model{suffix}"
    state = safetensors.torch.load_file(str(weights_files["resnet18"]))
    if suffix == ".safetensors":
        safetensors.torch.save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 3}, path)  # a training checkpoint: tensors and plain values
    assert resolve_weights("resnet18", "linear_probe", str(path)) == str(path)


def test_resolve_weights_expands_home(tmp_path, monkeypatch, weights_files):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "w.safetensors").write_bytes(weights_files["resnet18"].read_bytes())
    assert resolve_weights("resnet18", "finetune", "~/w.safetensors") == str(tmp_path / "w.safetensors")


def _fails_preflight(path: Path, *words: str, model: str = "resnet18", image_size: int | None = None) -> None:
    with pytest.raises(WeightsError) as info:
        resolve_weights(model, "finetune", str(path), image_size=image_size)
    message = str(info.value)
    assert message.startswith(f"{model}: weights ") and str(path) in message and "\n" not in message, message
    for word in words:
        assert word in message, (word, message)


def test_weights_that_are_not_weights_are_refused_before_training(tmp_path, weights_files):
    text = tmp_path / "notes.safetensors"
    text.write_text("these are not weights\n")
    _fails_preflight(text, "is not a weights file", "'these ar'")
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    _fails_preflight(tmp_path / "notes.pth", "is not a weights file")
    (tmp_path / "folder.safetensors").mkdir()
    _fails_preflight(tmp_path / "folder.safetensors", "is a folder", "the .safetensors file inside it")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(weights_files["resnet18"].read_bytes()[:4096])  # a copy that stopped half way
    _fails_preflight(cut, "is not a valid safetensors file")
    renamed = tmp_path / "model.pth"
    renamed.write_bytes(weights_files["resnet18"].read_bytes())
    _fails_preflight(renamed, "holds safetensors data", "name it .safetensors")


def test_weights_of_another_architecture_or_size_are_refused(tmp_path, weights_files):
    # timm loads pretrained weights non-strictly once it replaced the classifier: without this check a file of
    # another model would leave every layer random and the run would silently train from scratch.
    _fails_preflight(weights_files["resnet18"], "does not fit mobilenetv3_large_100", "e.g. conv_stem.weight",
                     model="mobilenetv3_large_100")  # fmt: skip
    # The MLP's first layer depends on the image size: a file made for another size does not fit.
    other = MLP_IMG * 2
    _fails_preflight(weights_files[MLP_NAME], f"at image_size {other}", "body.1.weight", model=MLP_NAME,
                     image_size=other)  # fmt: skip
    assert resolve_weights(MLP_NAME, "finetune", str(weights_files[MLP_NAME]), image_size=MLP_IMG) == str(
        weights_files[MLP_NAME]
    )
    state = safetensors.torch.load_file(str(weights_files["resnet18"]))
    partial = tmp_path / "partial.safetensors"
    safetensors.torch.save_file({k: v for k, v in state.items() if not k.startswith("layer4.")}, str(partial))
    _fails_preflight(partial, "tensors are not in the file", "layer4.")
    headless = tmp_path / "headless.safetensors"  # the classifier is replaced anyway: it may be missing
    safetensors.torch.save_file({k: v for k, v in state.items() if not k.startswith("fc.")}, str(headless))
    assert resolve_weights("resnet18", "finetune", str(headless)) == str(headless)


@pytest.mark.parametrize("mode", PRETRAINED_MODES)
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_large_100"])
def test_resolve_weights_not_cached_explains_what_to_do(name, mode, _offline):
    assert not _offline.exists()  # the HF cache is empty
    with pytest.raises(WeightsError) as info:
        resolve_weights(name, mode, None)
    message = str(info.value)
    assert message.startswith(f"{name}: ")
    assert MODELS[name][3] in message  # the hub id looked for
    assert "run `pieceboard prefetch FILE.toml` while online" in message
    assert "weights =" in message
    assert "not in the local cache" in message
    with pytest.raises(WeightsError, match="run `pieceboard prefetch benchmarks/all.toml` while online"):
        resolve_weights(name, mode, None, "benchmarks/all.toml")


@pytest.mark.parametrize("mode", PRETRAINED_MODES)
def test_resolve_weights_mlp_has_no_published_weights(mode):
    with pytest.raises(WeightsError) as info:
        resolve_weights(MLP_NAME, mode, None)
    message = str(info.value)
    assert message.startswith(f"{MLP_NAME}: ")
    assert "has no published pretrained weights" in message
    assert "weights =" in message
    assert 'mode = "scratch"' in message


def test_resolve_weights_finds_file_in_hf_cache(_offline, weights_files):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = _offline / "models--timm--resnet18.a1_in1k"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    cached = snapshot / "model.safetensors"
    cached.write_bytes(weights_files["resnet18"].read_bytes())

    found = resolve_weights("resnet18", "finetune", None)
    assert found == str(cached)
    # ...and that file builds the model, offline.
    model = build_model("resnet18", "finetune", NUM_CLASSES, CNN_IMG, found)
    saved = safetensors.torch.load_file(str(cached))
    assert torch.equal(model.conv1.weight.detach(), saved["conv1.weight"])
    assert model.fc.out_features == NUM_CLASSES


def test_resolve_weights_hf_cache_of_another_model_is_not_used(_offline):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = _offline / "models--timm--resnet34.a1_in1k"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit / "model.safetensors").write_bytes(b"x")
    with pytest.raises(WeightsError, match="timm/resnet18.a1_in1k"):
        resolve_weights("resnet18", "finetune", None)


def test_resolve_weights_finds_file_in_torch_hub_cache(tmp_path):
    url = timm.models.get_pretrained_cfg("resnet18").url
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    cached = checkpoints / url.rsplit("/", 1)[-1]
    cached.write_bytes(b"x")
    assert resolve_weights("resnet18", "linear_probe", None) == str(cached)


# ------------------------------------------------------------------------------------------ .pth and unpickling


def test_pth_state_dict_loads(tmp_path):
    reference = _reference_model("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("resnet18", "finetune", NUM_CLASSES, CNN_IMG, resolve_weights("resnet18", "finetune", path))
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    assert model.fc.out_features == NUM_CLASSES


def _leave_mark(path: str) -> str:
    Path(path).write_text("unpickled")
    return "payload"


class _Payload:
    """Unpickling this runs code (as a malicious checkpoint would)."""

    def __init__(self, mark: str):
        self.mark = mark

    def __reduce__(self):
        return (_leave_mark, (self.mark,))


class _Plain:
    def __init__(self):
        self.value = 1


@pytest.mark.parametrize("payload", ["code", "object"])
def test_pickle_with_arbitrary_objects_is_not_unpickled(payload, tmp_path):
    mark = tmp_path / "mark.txt"
    state = dict(_reference_model("resnet18").state_dict())
    state["extra"] = _Payload(str(mark)) if payload == "code" else _Plain()
    path = tmp_path / "evil.pth"
    torch.save(state, path)
    # The preflight reads the pickle's opcodes, never unpickles it, and names what it would construct.
    _fails_preflight(path, "holds a pickled Python object", "_leave_mark" if payload == "code" else "_Plain")
    # timm, reached without the preflight, loads with torch.load(weights_only=True) and refuses it too.
    with pytest.raises((RuntimeError, pickle.UnpicklingError), match=r"(?i)weights.only") as info:
        build_model("resnet18", "finetune", NUM_CLASSES, CNN_IMG, str(path))
    assert ("_Payload" if payload == "code" else "_Plain") in str(info.value) or "_leave_mark" in str(info.value)
    assert not mark.exists()


# ---------------------------------------------------------------------------------------------------- helpers


def test_unknown_model_names_the_nearest_ones():
    assert "resnet18" in unknown_model("resnet81")
    assert MLP_NAME in unknown_model("pieceboard_mpl")
    assert unknown_model("zzzzzzzzzzzz") == "unknown model 'zzzzzzzzzzzz'"
    assert unknown_model("resnet18") is None and unknown_model("resnet18.a1_in1k") is None
    assert unknown_model(MLP_NAME) is None and unknown_model(f"{MLP_NAME}.tag") is None


def test_count_parameters_exact():
    model = build_model(MLP_NAME, "scratch", NUM_CLASSES, MLP_IMG, None)
    sizes = (3 * MLP_IMG * MLP_IMG, *MLP_WIDTHS, NUM_CLASSES)
    expected = sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False))
    assert expected == 1_485_191
    assert count_parameters(model) == expected
    assert count_parameters(model, trainable_only=True) == expected
    model.body.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 64 * NUM_CLASSES + NUM_CLASSES
    assert count_parameters(model) == expected
    assert count_parameters(_reference_model("resnet18")) == 11_689_512


def test_is_convnet():
    assert not is_convnet(build_model(MLP_NAME, "scratch", NUM_CLASSES, MLP_IMG, None))
    assert is_convnet(build_model("resnet18", "scratch", NUM_CLASSES, CNN_IMG, None))
    assert is_convnet(build_model("mobilenetv3_large_100", "scratch", NUM_CLASSES, CNN_IMG, None))


def test_normalization_scratch_returns_dataset_stats():
    stats = ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    model = build_model("resnet18", "scratch", NUM_CLASSES, CNN_IMG, None)
    assert normalization(model, "scratch", stats) == stats


@pytest.mark.parametrize("mode", PRETRAINED_MODES)
@pytest.mark.parametrize("name", list(MODELS))
def test_normalization_pretrained_returns_model_stats(name, mode, weights_files):
    img = MODELS[name][0]
    model = build_model(name, mode, NUM_CLASSES, img, str(weights_files[name]))
    mean, std = normalization(model, mode, ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6]))
    cfg = timm.models.get_pretrained_cfg(name)
    assert mean == list(cfg.mean) == pytest.approx(IMAGENET_MEAN)
    assert std == list(cfg.std) == pytest.approx(IMAGENET_STD)
    assert isinstance(mean, list) and isinstance(std, list)


def test_mlp_default_head_follows_timm_convention():
    model = timm.create_model(MLP_NAME, img_size=MLP_IMG)
    assert model.get_classifier().out_features == 1000
