"""ditlab.data: real image sets (digits, Fashion-MNIST, emoji, image folders), streamed folders for training,
and sample exchange formats.

from ditlab.data import load_dataset, open_dataset, to_uint8, save_npz
ds = load_dataset("digits", image_size=16)          # ImageDataset: uint8 (N, C, H, W) in memory
x, y = ds.batch(torch.arange(64))                    # floats in [-1, 1], labels
emoji = load_dataset("emoji[64]")                    # 64x64 RGB, unconditional, emoji.captions = Unicode names
big = open_dataset("path/to/folder", image_size=64)  # ImageFolderStream: paths in memory, pixels on demand
save_npz("samples.npz", to_uint8(model_output), y)   # ADM-style arr_0 uint8 (N, H, W, C) + labels
"""

from ditlab.data.builtin import (
    DIGITS_CLASSES,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    SPLITS,
    load_digits_arrays,
    load_fashion_mnist_arrays,
    read_idx,
)
from ditlab.data.dataset import ImageDataset, flip_draws, to_model_batch, uint8_to_unit
from ditlab.data.emoji import EMOJI_FONT, emoji_fingerprint, load_emoji_arrays, render_emoji
from ditlab.data.image_folder import IMAGE_EXTENSIONS, load_image_folder_arrays, scan_image_folder
from ditlab.data.images import check_images, load_npz, make_grid, save_grid, save_npz, to_uint8
from ditlab.data.loader import (
    MemoryBatches,
    StepBatchSampler,
    StreamBatches,
    batch_source,
    epoch_order,
    rank_part,
    step_indices,
)
from ditlab.data.specs import (
    NAMED_DATASETS,
    DatasetSpec,
    dataset_shape,
    describe_shape,
    format_classes,
    load_dataset,
    parse_classes,
    parse_spec,
)
from ditlab.data.streaming import DATA_LOADERS, ImageFolderStream, open_dataset, open_image_folder
from ditlab.data.transforms import RESIZE_FILTER, convert_channels, resize_images, size_pair

__all__ = [
    "DATA_LOADERS",
    "DIGITS_CLASSES",
    "EMOJI_FONT",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IMAGE_EXTENSIONS",
    "NAMED_DATASETS",
    "RESIZE_FILTER",
    "SPLITS",
    "DatasetSpec",
    "ImageDataset",
    "ImageFolderStream",
    "MemoryBatches",
    "StepBatchSampler",
    "StreamBatches",
    "batch_source",
    "check_images",
    "convert_channels",
    "dataset_shape",
    "describe_shape",
    "emoji_fingerprint",
    "epoch_order",
    "flip_draws",
    "format_classes",
    "load_dataset",
    "load_digits_arrays",
    "load_emoji_arrays",
    "load_fashion_mnist_arrays",
    "load_image_folder_arrays",
    "load_npz",
    "make_grid",
    "open_dataset",
    "open_image_folder",
    "parse_classes",
    "parse_spec",
    "rank_part",
    "read_idx",
    "render_emoji",
    "resize_images",
    "save_grid",
    "save_npz",
    "scan_image_folder",
    "size_pair",
    "step_indices",
    "to_model_batch",
    "to_uint8",
    "uint8_to_unit",
]
