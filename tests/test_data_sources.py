"""Tests of tf_bignas.data.sources on real images (the embedded MNIST digits, as files)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_bignas.data import sources, transforms
from tf_bignas.data.sources import folder as folder_source

pytestmark = pytest.mark.usefixtures("isolated_index_cache")


def _read_all(examples: sources.Examples) -> list[tuple[np.ndarray, int]]:
    out = []
    for image, label in examples.dataset.as_numpy_iterator():
        if examples.kind == "path":
            image = transforms.decode_rgb(tf.io.read_file(image)).numpy()
        elif examples.kind == "bytes":
            image = transforms.decode_rgb(image).numpy()
        out.append((image, int(label)))
    return out


def _digest(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


# Folder source.


def test_folder_counts_skips_corrupt_file_and_warns(image_folder, caplog):
    with caplog.at_level(logging.WARNING):
        src = sources.FolderSource(str(image_folder.root))
        info = src.info("train")
    # Hidden folders (train/.ipynb_checkpoints, .cache) are neither classes nor splits.
    assert info.class_names == image_folder.class_names == ("four", "seven", "two")
    assert src.splits() == ("test", "train")
    assert info.num_examples == sum(image_folder.train_counts.values())
    assert src.class_counts("train") == image_folder.train_counts
    assert [s.path for s in info.skipped] == [str(image_folder.corrupt)]
    assert info.skipped[0].reason
    assert str(image_folder.corrupt) in caplog.text
    # The skipped file is not in the examples; the text file and hidden files are ignored.
    paths = [p.decode() for p, _ in src.examples("train").dataset.as_numpy_iterator()]
    assert str(image_folder.corrupt) not in paths
    assert not any(p.endswith(".txt") for p in paths)
    assert not any("/." in p for p in paths)
    assert any(p.endswith(".png") for p in paths) and any(p.endswith(".jpg") for p in paths)
    assert len(paths) == info.num_examples


def test_folder_test_split_shares_label_map(image_folder):
    src = sources.FolderSource(str(image_folder.root))
    assert src.splits() == ("test", "train")
    assert src.class_counts("test") == image_folder.test_counts
    labels = sorted(y for _, y in _read_all(src.examples("test")))
    assert labels == [0, 0, 1, 1, 2, 2]


def test_folder_grey_rgba_cmyk_come_out_rgb(image_folder):
    src = sources.FolderSource(str(image_folder.root))
    decoded = {}
    for path, _ in src.examples("train").dataset.as_numpy_iterator():
        decoded[path.decode()] = transforms.decode_rgb(tf.io.read_file(path)).numpy()
    for path, expected in image_folder.source_rgb.items():
        image = decoded[path]
        assert image.shape == (image_folder.side,) * 2 + (3,) and image.dtype == np.uint8, path
        tolerance = 4.0 if path.endswith("cmyk.jpg") else 0.0  # JPEG re-encoding
        assert np.abs(image.astype(int) - expected).mean() <= tolerance, path
    grey = decoded[str(image_folder.grey_png)]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_folder_strict_names_corrupt_file(image_folder):
    src = sources.FolderSource(str(image_folder.root), strict=True)
    with pytest.raises(sources.CorruptImageError, match=r"seven/truncated\.jpg"):
        src.info("train")


def test_folder_missing_directory_and_split(image_folder, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        sources.open_source(f"folder:{missing}")
    src = sources.FolderSource(str(image_folder.root))
    with pytest.raises(FileNotFoundError, match=r"validation.*available splits"):
        src.info("validation")


def test_folder_empty_class_folder(image_folder, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(image_folder.root / "test", root / "train")
    (root / "train" / "dog").mkdir()
    with pytest.raises(sources.DataSourceError, match=r"class folder .*dog.* holds no images"):
        sources.FolderSource(str(root)).info("train")


def test_folder_split_without_images(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(sources.DataSourceError, match=r"no class folders"):
        sources.FolderSource(str(tmp_path)).info("train")
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(sources.DataSourceError, match=r"no readable images"):
        sources.FolderSource(str(tmp_path)).info("train")


def test_folder_minival_is_held_out_and_stratified(image_folder):
    src = sources.FolderSource(str(image_folder.root), minival=6)
    assert "minival" in src.splits()
    train = {p.decode() for p, _ in src.examples("train").dataset.as_numpy_iterator()}
    minival = {p.decode() for p, _ in src.examples("minival").dataset.as_numpy_iterator()}
    whole = {
        p.decode()
        for p, _ in sources.FolderSource(str(image_folder.root))
        .examples("train")
        .dataset.as_numpy_iterator()
    }
    assert len(minival) == 6 and not train & minival and train | minival == whole
    assert src.class_counts("minival") == {"four": 2, "seven": 2, "two": 2}
    again = sources.FolderSource(str(image_folder.root), minival=6)
    assert {p.decode() for p, _ in again.examples("minival").dataset.as_numpy_iterator()} == (
        minival
    )
    with pytest.raises(sources.DataSourceError, match="minival=15 takes 15 images"):
        sources.FolderSource(str(image_folder.root), minival=15).info("minival")


def test_bad_specs_and_options():
    with pytest.raises(sources.DataSourceError, match="unknown data source 'imagenet'"):
        sources.open_source("imagenet")
    with pytest.raises(sources.DataSourceError, match="minival as a fraction"):
        sources.open_source("embedded", minival=1.5)
    with pytest.raises(sources.DataSourceError, match="needs a minival size"):
        sources.open_source("embedded").info("minival")


# Embedded source.


def test_embedded_splits():
    src = sources.open_source("embedded")
    assert src.info("train").num_examples == 4000
    assert src.info("test").num_examples == 1000
    assert src.class_counts("test") == {str(d): 100 for d in range(10)}
    test = _read_all(src.examples("test"))
    image, _ = test[0]
    assert image.shape == (28, 28, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 2]).all() and image.max() > 200
    train = {_digest(x) for x, _ in _read_all(src.examples("train"))}
    assert not train & {_digest(x) for x, _ in test}


def test_embedded_minival_disjoint_and_covering():
    whole = [_digest(x) for x, _ in _read_all(sources.open_source("embedded").examples("train"))]
    src = sources.open_source("embedded", minival=0.1)
    train = [_digest(x) for x, _ in _read_all(src.examples("train"))]
    minival = [_digest(x) for x, _ in _read_all(src.examples("minival"))]
    assert len(minival) == 400 and len(train) == 3600
    assert sorted(train + minival) == sorted(whole)
    assert src.class_counts("minival") == {str(d): 40 for d in range(10)}


def test_embedded_shards_disjoint_and_cover():
    src = sources.open_source("embedded")
    shards = [
        [_digest(x) for x, _ in _read_all(src.examples("test", num_shards=2, shard_index=i))]
        for i in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 500
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(
        _digest(x) for x, _ in _read_all(src.examples("test"))
    )


# TFDS source, on a tiny dataset prepared locally from the test image folder.


@pytest.fixture(scope="module")
def tfds_dir(image_folder, tmp_path_factory):
    # The regular files (JPEG and PNG), not the odd ones.
    root, classes = image_folder.root, image_folder.class_names
    files = sorted(str(p) for c in classes for p in (root / "train" / c).glob("0*"))
    test_files = sorted(str(p) for c in classes for p in (root / "test" / c).glob("0*"))
    assert len(files) == 12 and len(test_files) == 6
    side = image_folder.side

    class DigitFolderForTest(tfds.core.GeneratorBasedBuilder):
        """Digit JPEGs and PNGs from the test image folder."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(side, side, 3)),
                        "label": tfds.features.ClassLabel(names=image_folder.class_names),
                    }
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {
                "train": self._generate_examples(files),
                "test": self._generate_examples(test_files),
            }

        def _generate_examples(self, paths):
            for p in paths:
                yield p, {"image": p, "label": p.split("/")[-2]}

    data_dir = tmp_path_factory.mktemp("tfds")
    DigitFolderForTest(data_dir=str(data_dir)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return str(data_dir)


def test_tfds_source_reads_and_shards(tfds_dir, image_folder):
    src = sources.open_source("tfds:digit_folder_for_test", data_dir=tfds_dir, minival=3)
    assert src.splits() == ("test", "train", "minival")
    info = src.info("train")
    assert info.class_names == image_folder.class_names and info.num_examples == 9
    assert src.class_counts("test") == image_folder.test_counts
    whole = [_digest(x) for x, _ in _read_all(src.examples("test"))]
    shards = [
        [_digest(x) for x, _ in _read_all(src.examples("test", num_shards=2, shard_index=i))]
        for i in range(2)
    ]
    assert not set(shards[0]) & set(shards[1]) and sorted(sum(shards, [])) == sorted(whole)
    train = {_digest(x) for x, _ in _read_all(src.examples("train"))}
    minival = {_digest(x) for x, _ in _read_all(src.examples("minival"))}
    assert len(minival) == 3 and not train & minival


def test_tfds_unknown_and_unprepared(tmp_path):
    with pytest.raises(sources.DataSourceError, match="unknown TFDS dataset 'no_such_dataset_x'"):
        sources.open_source("tfds:no_such_dataset_x", data_dir=str(tmp_path))
    with pytest.raises(sources.DataSourceError, match=r"'mnist' is not prepared in .*"):
        sources.open_source("tfds:mnist", data_dir=str(tmp_path))


def test_folder_decode_checks_are_cached(image_folder, tmp_path, monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(image_folder.root, root)
    cache = str(tmp_path / "checks")
    first = sources.FolderSource(str(root), index_cache_dir=cache).info("train")
    calls = []
    real = folder_source._decode_status

    def spy(paths):
        calls.append(list(paths))
        return real(paths)

    monkeypatch.setattr(folder_source, "_decode_status", spy)
    second = sources.FolderSource(str(root), index_cache_dir=cache).info("train")
    assert calls == [[]]  # Nothing decoded again.
    assert second.skipped == first.skipped and second.num_examples == first.num_examples
    assert second.decoded_bytes == first.decoded_bytes
    damaged = root / "train" / "two" / "0002.jpg"
    damaged.write_bytes(damaged.read_bytes()[:100])
    third = sources.FolderSource(str(root), index_cache_dir=cache).info("train")
    assert calls[-1] == [str(damaged)]  # Only the changed file.
    assert sorted(s.path for s in third.skipped) == sorted(
        [str(root / "train" / "seven" / "truncated.jpg"), str(damaged)]
    )


def test_a_folder_name_that_is_not_utf8_is_named_in_the_error(tmp_path):
    image = tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8)).numpy()
    root = bytes(tmp_path / "data") + b"/train/"
    for name in (b"ok", b"\xffbad"):
        os.makedirs(root + name, exist_ok=True)
        with open(root + name + b"/a.png", "wb") as f:
            f.write(image)
    src = sources.open_source(f"folder:{tmp_path / 'data'}")
    with pytest.raises(sources.DataSourceError) as e:
        src.class_names()
    message = str(e.value)
    assert f"folder '{tmp_path / 'data' / 'train'}'" in message
    assert "b'\\xffbad'" in message and "must be UTF-8" in message
