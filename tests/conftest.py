"""Shared pytest fixtures."""

from __future__ import annotations

import dataclasses
import io
import pathlib
import tarfile

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CIFAR_TARBALL = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"

# Members of the CIFAR-10 tarball that the data tests use.
CIFAR_CLASSES = ("airplane", "cat", "ship")
CIFAR_TRAIN_PER_CLASS = 4
CIFAR_TEST_PER_CLASS = 2


def _cifar_members() -> tuple[str, ...]:
    names = []
    for cls in CIFAR_CLASSES:
        names += [f"train/{cls}/{i:04d}.jpg" for i in range(CIFAR_TRAIN_PER_CLASS)]
        names += [f"test/{cls}/{i:04d}.jpg" for i in range(CIFAR_TEST_PER_CLASS)]
    return tuple(names)


@pytest.fixture
def isolated_index_cache(tmp_path, monkeypatch) -> pathlib.Path:
    """Points the folder sources' decode-check cache ($XDG_CACHE_HOME) at a temp dir."""
    cache = tmp_path / "xdg_cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


@pytest.fixture(scope="session")
def cifar_jpegs() -> dict[str, bytes]:
    """A few CIFAR-10 JPEG files from ../shared/data, as {member name: bytes}."""
    if not CIFAR_TARBALL.is_file():
        pytest.skip(f"CIFAR-10 tarball not found at {CIFAR_TARBALL} (see shared/data/README.md)")
    wanted = set(_cifar_members())
    found: dict[str, bytes] = {}
    with tarfile.open(CIFAR_TARBALL, "r:gz") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if name in wanted and member.isfile():
                found[name] = tar.extractfile(member).read()
                if len(found) == len(wanted):
                    break
    missing = sorted(wanted - set(found))
    if missing:
        pytest.fail(f"members {missing} not found in {CIFAR_TARBALL}")
    return found


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """A temporary image folder with real CIFAR-10 JPEGs and odd files.

    Attributes:
        root: The folder (holding train/ and test/).
        train_counts: Readable training images per class.
        test_counts: Test images per class.
        corrupt: Path of the truncated JPEG in train/cat.
        grey_png: Path of the greyscale PNG (train/cat).
        rgba_png: Path of the RGBA PNG (train/ship).
        cmyk_jpeg: Path of the CMYK JPEG (train/airplane).
        source_rgb: {path of each odd file: the RGB pixels it was made from}.
    """

    root: pathlib.Path
    train_counts: dict[str, int]
    test_counts: dict[str, int]
    corrupt: pathlib.Path
    grey_png: pathlib.Path
    rgba_png: pathlib.Path
    cmyk_jpeg: pathlib.Path
    source_rgb: dict[str, np.ndarray]

    @property
    def spec(self) -> str:
        return f"folder:{self.root}"


def _decode_jpeg(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="session")
def image_folder(cifar_jpegs: dict[str, bytes], tmp_path_factory) -> ImageFolder:
    """train/{airplane,cat,ship}: 4 CIFAR JPEGs each plus a CMYK JPEG (airplane), a
    greyscale PNG and a truncated JPEG (cat), an RGBA PNG and a text file (ship);
    test/{airplane,cat,ship}: 2 CIFAR JPEGs each. Read-only for tests."""
    from PIL import Image

    root = tmp_path_factory.mktemp("image_folder")
    for name, data in cifar_jpegs.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    base = {cls: cifar_jpegs[f"train/{cls}/0000.jpg"] for cls in CIFAR_CLASSES}

    cmyk = root / "train/airplane/cmyk.jpg"
    rgb = Image.open(io.BytesIO(base["airplane"])).convert("RGB")
    rgb.convert("CMYK").save(cmyk, format="JPEG", quality=95)

    grey = root / "train/cat/grey.png"
    grey_pixels = np.asarray(Image.open(io.BytesIO(base["cat"])).convert("L"))
    Image.fromarray(grey_pixels, mode="L").save(grey, format="PNG")

    corrupt = root / "train/cat/truncated.jpg"
    corrupt.write_bytes(base["cat"][: len(base["cat"]) // 2])

    rgba = root / "train/ship/rgba.png"
    ship = _decode_jpeg(base["ship"])
    alpha = np.full(ship.shape[:2] + (1,), 200, np.uint8)
    Image.fromarray(np.concatenate([ship, alpha], axis=-1), mode="RGBA").save(rgba, format="PNG")
    (root / "train/ship/notes.txt").write_text("not an image\n")

    return ImageFolder(
        root=root,
        train_counts={c: CIFAR_TRAIN_PER_CLASS + 1 for c in CIFAR_CLASSES},
        test_counts={c: CIFAR_TEST_PER_CLASS for c in CIFAR_CLASSES},
        corrupt=corrupt,
        grey_png=grey,
        rgba_png=rgba,
        cmyk_jpeg=cmyk,
        source_rgb={
            str(cmyk): np.asarray(rgb),
            str(grey): np.repeat(grey_pixels[..., None], 3, axis=-1),
            str(rgba): ship,
        },
    )


def quickstart_config(**overrides):
    """configs/quickstart.py with `section.key=value` overrides (dotted keys as `a__b`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "quickstart", REPO_ROOT / "configs" / "quickstart.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in overrides.items():
        section, name = key.split("__")
        setattr(getattr(config, section), name, value)
    return config


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory) -> str:
    """A finished, tiny quickstart run on the embedded digits (trained once per worker).

    48 sandwich steps of batch 16 (0.192 epochs of the 4,000 training digits), a
    minival of 200 digits held out of training for architecture selection, BN
    calibration on 4 batches, evaluation on 8 batches of the "test" split. The
    children are far from converged; tests use it for plumbing, not accuracy.
    """
    from tf_bignas.train.loop import train

    workdir = str(tmp_path_factory.mktemp("trained") / "workdir")
    config = quickstart_config(
        train__batch_size=16,
        train__epochs=48 * 16 / 3800,
        train__log_every=24,
        train__checkpoint_every=24,
        train__calibration_batches=4,
        train__eval_batches=8,
        data__minival=200,
        runtime__threads=1,
    )
    result = train(config, workdir, log=lambda line: None)
    assert result.finished and result.step == 48
    return workdir
