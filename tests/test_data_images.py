"""ditlab.data sample formats (uint8 quantisation, ADM .npz, PNG grids) and the shared image transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.data import (
    check_images,
    convert_channels,
    load_npz,
    make_grid,
    resize_images,
    save_grid,
    save_npz,
    to_uint8,
)


def test_to_uint8_inverts_the_dataset_scaling_and_follows_dit():
    u = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = u.float() / 127.5 - 1
    assert torch.equal(to_uint8(x)[..., 0], u[:, 0])
    y = torch.randn(2, 3, 5, 4) * 1.5  # includes values outside [-1, 1]
    official = torch.clamp(127.5 * y + 128.0, 0, 255).permute(0, 2, 3, 1).to(torch.uint8)
    out = to_uint8(y)
    assert out.shape == (2, 5, 4, 3) and torch.equal(out, official)
    with pytest.raises(TypeError, match="float tensor"):
        to_uint8(u)


def test_npz_round_trip_and_layout(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    path = save_npz(tmp_path / "s.npz", torch.from_numpy(images), torch.tensor([3, 1, 4, 1]))
    with np.load(path) as raw:  # what ADM's evaluator reads
        assert sorted(raw.files) == ["arr_0", "labels"] and raw["arr_0"].dtype == np.uint8
    back, labels = load_npz(path)
    np.testing.assert_array_equal(back, images)
    assert labels.tolist() == [3, 1, 4, 1]
    save_npz(tmp_path / "nolabels.npz", images[..., :1])
    assert load_npz(tmp_path / "nolabels.npz")[1] is None


def test_npz_memory_map_reads_the_same_arrays_and_falls_back_for_compressed_files(tmp_path):
    """`load_npz(mmap=True)` (torchrun eval): arr_0 of an uncompressed file is mapped, not read, and equal
    to what a read gives; a compressed file (np.savez_compressed) is read as before."""
    images = np.random.default_rng(0).integers(0, 256, size=(7, 5, 6, 3), dtype=np.uint8)
    labels = np.arange(7)
    save_npz(tmp_path / "s.npz", images, labels)
    mapped, mapped_labels = load_npz(tmp_path / "s.npz", mmap=True)
    assert isinstance(mapped, np.memmap) and mapped.shape == (7, 5, 6, 3)
    np.testing.assert_array_equal(mapped, images)
    np.testing.assert_array_equal(mapped[3:5], images[3:5])
    np.testing.assert_array_equal(mapped_labels, labels)
    np.savez_compressed(tmp_path / "c.npz", arr_0=images[..., 0])  # grey (N, H, W), compressed
    read, none = load_npz(tmp_path / "c.npz", mmap=True)
    assert not isinstance(read, np.memmap) and read.shape == (7, 5, 6, 1) and none is None
    np.testing.assert_array_equal(read[..., 0], images[..., 0])


def test_npz_bad_input_messages(tmp_path):
    np.savez(tmp_path / "noarr.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"no 'arr_0' array \(it has: images\)"):
        load_npz(tmp_path / "noarr.npz")
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(TypeError, match=r"to_uint8"):
        load_npz(tmp_path / "float.npz")
    np.savez(tmp_path / "nchw.npz", arr_0=np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="channels-first"):
        load_npz(tmp_path / "nchw.npz")
    with pytest.raises(FileNotFoundError, match="samples file not found"):
        load_npz(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read"):
        load_npz(tmp_path / "junk.npz")


def test_grid_places_tiles_row_major(tmp_path):
    images = np.stack([np.full((3, 2, 1), 10 * (i + 1), np.uint8) for i in range(5)])
    grid = make_grid(images, nrow=3, padding=1)
    assert grid.shape == (2 * 3 + 3, 3 * 2 + 4, 1)
    assert grid[1, 1, 0] == 10 and grid[1, 4, 0] == 20 and grid[5, 1, 0] == 40 and grid[5, 4, 0] == 50
    assert grid[0, 0, 0] == 0 and grid[5, 7, 0] == 0  # padding and the empty sixth cell
    path = save_grid(torch.zeros(2, 3, 4, 4), tmp_path / "g.png", nrow=2, min_side=1)
    with Image.open(path) as im:
        assert im.size == (2 * 4 + 3 * 2, 4 + 2 * 2) and im.mode == "RGB"
        assert im.getpixel((2, 2)) == (128, 128, 128)  # model output 0 -> 128
    small = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8, 1)  # 8×8 digits: enlarged ×4 to view
    with Image.open(save_grid(small, tmp_path / "d.png", nrow=2, padding=0)) as im:
        assert im.size == (64, 32)
        assert np.array_equal(np.asarray(im)[:32, :32][::4, ::4], small[0, ..., 0])


def test_check_images_accepts_grey_hw_and_rejects_empty():
    assert check_images(np.zeros((2, 4, 4), np.uint8)).shape == (2, 4, 4, 1)
    with pytest.raises(ValueError, match="empty"):
        check_images(np.zeros((0, 4, 4, 3), np.uint8))


def test_resize_is_pillow_bicubic_and_antialiased():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 20, 30, 1), dtype=np.uint8)
    out = resize_images(images, (10, 15))
    pil = np.asarray(Image.fromarray(images[0, :, :, 0]).resize((15, 10), Image.Resampling.BICUBIC))
    assert np.abs(out[0, :, :, 0].astype(int) - pil).max() <= 1  # Pillow's own 8-bit path, to rounding
    checker = (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)[None, :, :, None]
    small = resize_images(checker, 4, output="float32")
    assert np.abs(small - 127.5).max() < 3  # antialiased: no aliasing pattern survives
    assert np.array_equal(resize_images(images, (20, 30)), images)  # native size passes untouched
    flat = np.full((1, 7, 7, 3), 77, np.uint8)
    assert np.all(resize_images(flat, 13) == 77)


def test_convert_channels_matches_pillow_luma():
    rgb = np.random.default_rng(2).integers(0, 256, (1, 6, 6, 3), dtype=np.uint8)
    grey = convert_channels(rgb, 1)
    pil = np.asarray(Image.fromarray(rgb[0]).convert("L"))
    assert np.abs(grey[0, :, :, 0].astype(int) - pil).max() <= 1
    assert np.array_equal(convert_channels(grey, 3)[..., 2], grey[..., 0])
