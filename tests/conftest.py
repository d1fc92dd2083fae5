"""Shared pytest fixtures.

Every test runs on a fresh clone with nothing beside it: image files are built
from the embedded MNIST digits (`tf_bignas.data.sources.embedded`, bundled in
an installed package). When the CIFAR-10 JPEG tarball is present beside the
repository (``../shared/data/cifar10-jpeg.tar.gz``, or the path in
$TF_BIGNAS_CIFAR_TARBALL), the `sample_jpegs` fixture adds a second
parametrisation with real photos: more realism, never more coverage, and
nothing is skipped without it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tarfile

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cifar_tarball() -> pathlib.Path:
    """The CIFAR-10 tarball: $TF_BIGNAS_CIFAR_TARBALL, else ../shared/data beside the repo."""
    override = os.environ.get("TF_BIGNAS_CIFAR_TARBALL")
    if override is not None:
        return pathlib.Path(override)
    return REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


CIFAR_TARBALL = _cifar_tarball()
# Image sets of `sample_jpegs`: the digits always, CIFAR-10 photos when present.
IMAGE_SETS = ("digits",) + (("cifar",) if CIFAR_TARBALL.is_file() else ())
# The CIFAR-10 members `sample_jpegs` uses (two training, two test photos).
CIFAR_SAMPLES = (
    "train/cat/0003.jpg",
    "train/ship/0001.jpg",
    "test/cat/0000.jpg",
    "test/ship/0000.jpg",
)

# The test image folder: three digit classes (label ids follow the sorted names).
DIGIT_CLASSES = (("four", 4), ("seven", 7), ("two", 2))
DIGIT_HUES = {"four": (70, 225, 240), "seven": (245, 205, 60), "two": (250, 90, 170)}
TRAIN_PER_CLASS = 4  # 0000-0002.jpg and 0003.png; plus one odd file per class.
TEST_PER_CLASS = 2  # 0000-0001.jpg.
DIGIT_SIDE = 28


@pytest.fixture
def isolated_index_cache(tmp_path, monkeypatch) -> pathlib.Path:
    """Points the folder sources' decode-check cache ($XDG_CACHE_HOME) at a temp dir."""
    cache = tmp_path / "xdg_cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


@pytest.fixture(scope="session")
def cifar_jpegs() -> dict[str, bytes]:
    """The `CIFAR_SAMPLES` JPEG files from the CIFAR-10 tarball, as {member name: bytes}.

    Only requested through the "cifar" parametrisation of `sample_jpegs`, which
    exists only when the tarball does.
    """
    if not CIFAR_TARBALL.is_file():
        pytest.fail(f"CIFAR-10 tarball not found at {CIFAR_TARBALL}; no test may require it")
    wanted = set(CIFAR_SAMPLES)
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


def colour_digit(digit: np.ndarray, index: int, hue: tuple[int, int, int]) -> np.ndarray:
    """A colour picture of an embedded digit: the stroke in `hue` over a colour gradient.

    The digits themselves are grey (R = G = B); colour makes the conversions
    and colour operations that the tests check (greyscale, CMYK, saturation)
    do something.

    Args:
        digit: RGB uint8 [28, 28, 3] digit, white on black.
        index: Varies the background between pictures.
        hue: RGB colour of the stroke.

    Returns:
        RGB uint8 [28, 28, 3].
    """
    alpha = digit[..., 0].astype(np.float64)[..., None] / 255.0
    yy, xx = np.mgrid[0:DIGIT_SIDE, 0:DIGIT_SIDE] / (DIGIT_SIDE - 1)
    background = np.stack(
        [50 + 110 * xx + 9 * index, 35 + 120 * yy, 190 - 90 * xx * yy - 11 * index], axis=-1
    )
    out = background * (1.0 - alpha) + np.asarray(hue, np.float64) * alpha
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """A temporary image folder of coloured embedded digits, with odd and corrupt files.

    Attributes:
        root: The folder (holding train/ and test/).
        class_names: The class folders, sorted (label id = position).
        side: Height and width of every image.
        train_counts: Readable training images per class.
        test_counts: Test images per class.
        corrupt: Path of the truncated JPEG (train/seven).
        grey_png: Path of the greyscale PNG (train/seven).
        rgba_png: Path of the RGBA PNG (train/two).
        cmyk_jpeg: Path of the CMYK JPEG (train/four).
        source_rgb: {path of each odd file and of each regular PNG: the RGB
            pixels it was made from}.
    """

    root: pathlib.Path
    class_names: tuple[str, ...]
    side: int
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


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> ImageFolder:
    """A folder of coloured embedded digits laid out as <split>/<class>/ (read-only for tests).

    train/{four,seven,two}: 0000-0002.jpg and 0003.png each, plus a CMYK JPEG
    (four), a greyscale PNG and a truncated JPEG (seven), an RGBA PNG and a
    text file (two), a hidden .DS_Store in every class folder and a hidden
    AppleDouble "._0000.jpg" (four);
    test/{four,seven,two}: 0000-0001.jpg each (4:4:4 JPEGs). Hidden entries that a folder
    source must ignore: a class-like folder train/.ipynb_checkpoints/ and a
    split-like folder .cache/, both holding a JPEG.
    """
    from PIL import Image

    from tf_bignas.data import open_source

    examples = open_source("embedded").examples("train")
    root = tmp_path_factory.mktemp("image_folder")
    rgb: dict[str, np.ndarray] = {}
    for cls, digit in DIGIT_CLASSES:
        which = np.flatnonzero(examples.labels == digit)
        for split, count, offset in (("train", TRAIN_PER_CLASS, 0), ("test", TEST_PER_CLASS, 10)):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for k in range(count):
                pixels = colour_digit(examples.items[which[offset + k]], k, DIGIT_HUES[cls])
                suffix = "png" if split == "train" and k == TRAIN_PER_CLASS - 1 else "jpg"
                path = folder / f"{k:04d}.{suffix}"
                # Training JPEGs use PIL's default 4:2:0 chroma subsampling (as
                # most photos do); test JPEGs keep full chroma (4:4:4), so that
                # decoding only a crop window (decode_and_crop_jpeg) gives the
                # very pixels of a full decode and eval crops can be checked
                # exactly. (With 4:2:0 the chroma upsampling at a crop window's
                # edge differs: up to ~8 levels on these digits, ~20 on CIFAR-10.)
                subsampling = 0 if split == "test" else -1
                Image.fromarray(pixels).save(path, quality=90, subsampling=subsampling)
                rgb[f"{split}/{cls}/{k:04d}"] = pixels
            (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1 not an image")

    train = root / "train"
    cmyk = train / "four/cmyk.jpg"
    Image.fromarray(rgb["train/four/0000"]).convert("CMYK").save(cmyk, format="JPEG", quality=95)

    grey = train / "seven/grey.png"
    grey_pixels = np.asarray(Image.fromarray(rgb["train/seven/0000"]).convert("L"))
    Image.fromarray(grey_pixels, mode="L").save(grey, format="PNG")

    corrupt = train / "seven/truncated.jpg"
    whole = (train / "seven/0001.jpg").read_bytes()
    corrupt.write_bytes(whole[: len(whole) // 2])

    rgba = train / "two/rgba.png"
    two = rgb["train/two/0000"]
    alpha = np.full(two.shape[:2] + (1,), 200, np.uint8)
    Image.fromarray(np.concatenate([two, alpha], axis=-1), mode="RGBA").save(rgba, format="PNG")
    (train / "two/notes.txt").write_text("not an image\n")

    # What macOS leaves beside a copied file (an AppleDouble header, not a JPEG).
    (train / "four/._0000.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    for hidden in (train / ".ipynb_checkpoints", root / ".cache" / "four"):
        hidden.mkdir(parents=True)
        (hidden / "0000.jpg").write_bytes((train / "four/0000.jpg").read_bytes())

    return ImageFolder(
        root=root,
        class_names=tuple(cls for cls, _ in DIGIT_CLASSES),
        side=DIGIT_SIDE,
        train_counts={cls: TRAIN_PER_CLASS + 1 for cls, _ in DIGIT_CLASSES},
        test_counts={cls: TEST_PER_CLASS for cls, _ in DIGIT_CLASSES},
        corrupt=corrupt,
        grey_png=grey,
        rgba_png=rgba,
        cmyk_jpeg=cmyk,
        source_rgb={
            str(cmyk): rgb["train/four/0000"],
            str(grey): np.repeat(grey_pixels[..., None], 3, axis=-1),
            str(rgba): two,
            **{str(train / cls / "0003.png"): rgb[f"train/{cls}/0003"] for cls, _ in DIGIT_CLASSES},
        },
    )


@pytest.fixture(scope="session", params=IMAGE_SETS)
def sample_jpegs(request, image_folder: ImageFolder) -> list[bytes]:
    """Four JPEG files of one image set, all of one size: two training, two test images.

    "digits": files of `image_folder` (28x28); "cifar" (only when the tarball
    is present): real CIFAR-10 photos (32x32).
    """
    if request.param == "cifar":
        found = request.getfixturevalue("cifar_jpegs")
        return [found[name] for name in CIFAR_SAMPLES]
    names = (
        "train/seven/0002.jpg",
        "train/two/0001.jpg",
        "test/four/0000.jpg",
        "test/two/0000.jpg",
    )
    return [(image_folder.root / name).read_bytes() for name in names]


def digit_batches(resolutions, batch_size: int, count: int, seed: int) -> list:
    """`count` training batches of embedded digits at every resolution (no augmentation).

    The same batches whatever ran before in the process: tf.data's shuffle
    combines its seed with TensorFlow's global seed, which a training run
    sets, so the global seed is set here first.
    """
    import tensorflow as tf

    from tf_bignas.data import build_train_dataset

    tf.random.set_seed(seed)
    ds = build_train_dataset(
        "embedded", "train", resolutions, batch_size, augment="none", seed=seed
    )
    return [b for b, _ in zip(ds, range(count))]


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
        if name not in getattr(config, section):  # a stale key would be silently added
            raise KeyError(f"quickstart config has no {section}.{name}")
        setattr(getattr(config, section), name, value)
    return config


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory) -> str:
    """A finished, tiny quickstart run on the embedded digits (trained once per worker).

    48 sandwich steps of batch 16 (0.192 epochs of the 4,000 training digits), a
    minival of 200 digits held out of training for architecture selection, BN
    calibration on 64 random training digits (4 batches of 16), evaluation on 8
    batches of the "test" split. The
    children are far from converged; tests use it for plumbing, not accuracy.
    """
    from tf_bignas.train.loop import train

    workdir = str(tmp_path_factory.mktemp("trained") / "workdir")
    config = quickstart_config(
        train__batch_size=16,
        train__epochs=48 * 16 / 3800,
        train__log_every=24,
        train__checkpoint_every=24,
        train__calibration_images=64,
        train__calibration_batch_size=16,
        train__eval_batches=8,
        data__minival=200,
    )
    result = train(config, workdir, log=lambda line: None)
    assert result.finished and result.step == 48
    return workdir


def write_quickstart_variant(path: pathlib.Path, line: str) -> pathlib.Path:
    """A config file whose get_config() is the quickstart's plus one line (e.g. a typo).

    Args:
        path: The file to write.
        line: One statement on `c`, the quickstart config, e.g. "c.model.spce = 1".

    Returns:
        `path`.
    """
    quickstart = str(REPO_ROOT / "configs" / "quickstart.py")
    path.write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('q', {quickstart!r})\n"
        "quickstart = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(quickstart)\n\n\n"
        "def get_config():\n"
        "    c = quickstart.get_config()\n"
        f"    {line}\n"
        "    return c\n"
    )
    return path
