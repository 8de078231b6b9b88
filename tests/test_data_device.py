"""The dataset on the device: the torch unpack gives exactly the host path's images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.data.device import DeviceDSprites, unpack_on_device
from trainer.data.dsprites import open_dsprites


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return open_dsprites(num_scales=2, num_orientations=4, num_positions=4, cache_dir=cache)


def test_unpack_puts_the_most_significant_bit_first():
    # Byte 0 = 0b10100001: pixels 0, 2 and 7 of row 0; byte 511 = 0b00000001: the last pixel.
    packed_BY = torch.zeros(1, 512, dtype=torch.uint8)
    packed_BY[0, 0], packed_BY[0, 511] = 0b10100001, 0b00000001
    x_B1HW = unpack_on_device(packed_BY)
    assert x_B1HW.shape == (1, 1, 64, 64) and x_B1HW.dtype == torch.float32
    assert torch.nonzero(x_B1HW[0, 0]).tolist() == [[0, 0], [0, 2], [0, 7], [63, 63]]


def test_unpack_of_random_bytes_equals_numpy_unpackbits():
    packed_BY = np.random.default_rng(0).integers(0, 256, size=(5, 512), dtype=np.uint8)
    expected = np.unpackbits(packed_BY, axis=1).reshape(5, 1, 64, 64).astype(np.float32)
    assert np.array_equal(unpack_on_device(torch.from_numpy(packed_BY)).numpy(), expected)


def test_device_batches_equal_the_host_images_for_random_indices_and_the_last_image(dataset):
    on_device = DeviceDSprites(dataset, torch.device("cpu"))
    assert len(on_device) == len(dataset) == 384
    rng = np.random.default_rng(1)
    indices = np.concatenate([rng.integers(0, len(dataset), 64), [len(dataset) - 1, 0, 7, 7]])
    images = on_device.images(torch.from_numpy(indices))
    expected = torch.from_numpy(dataset.images(indices)).to(torch.float32).unsqueeze(1)
    assert torch.equal(images, expected)
    assert images[64].sum() > 0  # the last image is a real shape, not padding
    for factor in range(6):
        classes = on_device.classes(torch.from_numpy(indices), factor)
        assert classes.tolist() == dataset.latent_classes[indices, factor].tolist()


def test_packed_images_are_every_row_in_index_order(dataset):
    packed_NY = dataset.packed_images()
    assert packed_NY.shape == (384, 512) and packed_NY.dtype == np.uint8
    unpacked = np.unpackbits(packed_NY, axis=1).reshape(384, 64, 64)
    assert np.array_equal(unpacked, dataset.images(np.arange(384)))


def test_the_byte_table_holds_each_bytes_bits_most_significant_first():
    from trainer.data.device import byte_bits_table

    table = byte_bits_table(torch.device("cpu"))
    assert table.shape == (256, 8) and table.dtype == torch.float32
    assert table[0b10100001].tolist() == [1, 0, 1, 0, 0, 0, 0, 1]
    expected = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)
    assert np.array_equal(table.numpy(), expected.astype(np.float32))
