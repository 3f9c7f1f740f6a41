"""ditlab.data: real image sets in memory (digits, Fashion-MNIST, ImageFolder) and sample exchange formats.

from ditlab.data import load_dataset, to_uint8, save_npz
ds = load_dataset("digits", image_size=16)          # ImageDataset: uint8 (N, C, H, W) in memory
x, y = ds.batch(torch.arange(64))                    # floats in [-1, 1], labels
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
from ditlab.data.dataset import ImageDataset, uint8_to_unit
from ditlab.data.image_folder import IMAGE_EXTENSIONS, load_image_folder_arrays, scan_image_folder
from ditlab.data.images import check_images, load_npz, make_grid, save_grid, save_npz, to_uint8
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
from ditlab.data.transforms import RESIZE_FILTER, convert_channels, resize_images, size_pair

__all__ = [
    "DIGITS_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IMAGE_EXTENSIONS",
    "NAMED_DATASETS",
    "RESIZE_FILTER",
    "SPLITS",
    "DatasetSpec",
    "ImageDataset",
    "check_images",
    "convert_channels",
    "dataset_shape",
    "describe_shape",
    "format_classes",
    "load_dataset",
    "load_digits_arrays",
    "load_fashion_mnist_arrays",
    "load_image_folder_arrays",
    "load_npz",
    "make_grid",
    "parse_classes",
    "parse_spec",
    "read_idx",
    "resize_images",
    "save_grid",
    "save_npz",
    "scan_image_folder",
    "size_pair",
    "to_uint8",
    "uint8_to_unit",
]
