"""Fashion-MNIST idx reader: strict header/size checks, clear errors, the real data's shape."""
import gzip
import struct

import numpy as np
import pytest
import torch

from patchbench.data.fashion_mnist import (FASHION_MNIST_CLASSES, fashion_mnist_available,
                                           load_fashion_mnist, read_idx)

needs_data = pytest.mark.skipif(not fashion_mnist_available(),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def _idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    return struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_split(root, n_img=10000, n_lab=10000, img_bytes=None, gz=True):
    """A fake test split in ``root`` (uint8 images 28×28, labels 0..9)."""
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n_img, 28, 28), dtype=np.uint8)
    labs = (np.arange(n_lab) % 10).astype(np.uint8)
    opener, sfx = (gzip.open, ".gz") if gz else (open, "")
    with opener(root / f"t10k-images-idx3-ubyte{sfx}", "wb") as f:
        f.write(img_bytes if img_bytes is not None else _idx_bytes(imgs))
    with opener(root / f"t10k-labels-idx1-ubyte{sfx}", "wb") as f:
        f.write(_idx_bytes(labs))
    return imgs, labs


def test_read_idx_round_trips_every_type_code(tmp_path):
    for code, dtype in ((0x08, np.uint8), (0x0C, ">i4"), (0x0D, ">f4")):
        arr = np.arange(24).reshape(2, 3, 4).astype(dtype)
        (tmp_path / "a.idx").write_bytes(_idx_bytes(arr, code))
        np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), arr)


def test_a_bad_magic_number_is_a_value_error_naming_the_file(tmp_path):
    p = tmp_path / "bad-magic.idx"
    p.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(ValueError, match="bad-magic.idx"):
        read_idx(p)


def test_a_truncated_payload_is_a_value_error_naming_the_file(tmp_path):
    p = tmp_path / "short.idx.gz"
    with gzip.open(p, "wb") as f:
        f.write(_idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-10])
    with pytest.raises(ValueError, match=r"short\.idx\.gz.*bytes"):
        read_idx(p)


def test_a_corrupt_gzip_stream_is_a_value_error_naming_the_file(tmp_path):
    p = tmp_path / "broken.gz"
    p.write_bytes(b"\x1f\x8b\x08\x00garbage-not-deflate")
    with pytest.raises(ValueError, match="broken.gz"):
        read_idx(p)


def test_a_split_with_the_wrong_image_count_is_rejected(tmp_path):
    _write_split(tmp_path, n_img=9999, n_lab=10000)
    with pytest.raises(ValueError, match="10000"):
        load_fashion_mnist("test", root=tmp_path)


def test_a_fake_split_loads_as_floats_in_unit_range(tmp_path):
    imgs, labs = _write_split(tmp_path, gz=False)
    x, y = load_fashion_mnist("test", root=tmp_path, limit=50)
    assert x.shape == (50, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    assert torch.equal((x[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(imgs[:50]))
    assert y.tolist() == labs[:50].tolist()


def test_missing_dataset_says_how_to_install_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation")
    with pytest.raises(ValueError, match="limit"):
        load_fashion_mnist("test", limit=0)


@needs_data
def test_the_real_test_split_has_1000_images_per_class():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and len(FASHION_MNIST_CLASSES) == 10
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.bincount(y).tolist() == [1000] * 10
