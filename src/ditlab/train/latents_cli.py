"""`ditlab latents`: encode a data set once into a sharded latent cache (as fast-DiT does), for `ditlab train`.

    ditlab latents --vae runs/vae --data digits --out latents/digits --flip
    ditlab train --data latents/digits --flip --train-steps 2000 --out runs/ldm    # the cache alone: no images
    ditlab train --data digits --vae runs/vae --latents latents/digits --flip --train-steps 2000 --out runs/ldm
    torchrun --standalone --nproc_per_node 4 -m ditlab latents --vae sd-vae-ft-ema/ --data imagenet/ --out L

Run it again after an interruption: finished shards are kept and only the missing ones are encoded.
"""

from __future__ import annotations

import argparse
import json
import sys

from ditlab.cli_args import add_device_argument
from ditlab.data.image_folder import BAD_IMAGE_POLICIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vae", required=True, help="the autoencoder: a ditlab one or a diffusers folder")
    parser.add_argument("--data", required=True, help='images: "digits", "fashion-mnist[:DIR]" or a folder')
    parser.add_argument("--out", required=True, help="the cache folder (shards and latents.json)")
    parser.add_argument("--split", default="train", help="the split to encode (default: train)")
    parser.add_argument("--image-size", type=int, help="resize images to this side (default: the data's)")
    parser.add_argument("--channels", type=int, choices=(1, 3), help="1 or 3 (default: the data's)")
    parser.add_argument(
        "--flip",
        action="store_true",
        help="also store the latents of the mirrored images (for --flip training)",
    )
    parser.add_argument("--shard-size", type=int, default=4096, help="images per shard (default 4096)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per encoder call (default 64)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    parser.add_argument("--bad-images", choices=BAD_IMAGE_POLICIES, default="raise", help="unreadable files")
    add_device_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    return _run(args)  # bad input raises: `ditlab.cli` prints it as one error line, exit code 2


def _run(args) -> int:
    from ditlab import distributed as D
    from ditlab.autoencoders.checkpoint import load_autoencoder
    from ditlab.autoencoders.latent_cache import build_latent_shards
    from ditlab.data import load_dataset
    from ditlab.runtime import resolve_device

    dist = D.init_distributed(resolve_device(args.device))
    device = D.local_device(resolve_device(args.device), dist)
    autoencoder = load_autoencoder(args.vae, device=device)
    data = load_dataset(
        args.data,
        split=args.split,
        image_size=args.image_size,
        channels=args.channels,
        bad_images=args.bad_images,
    )
    record = {
        "name": data.name,
        "split": args.split,
        "class_names": list(data.class_names),
        "image_size": list(data.image_size),
        "channels": data.channels,
    }

    def report(done: int, total: int) -> None:
        if not args.no_progress:
            print(f"rank {dist.rank}: {done}/{total} shards", file=sys.stderr, flush=True)

    manifest = build_latent_shards(
        autoencoder,
        data,
        args.out,
        flip=args.flip,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        workers=args.workers,
        rank=dist.rank,
        world_size=dist.world_size,
        barrier=lambda: D.barrier(dist),
        data_record=record,
        progress=report,
    )
    if manifest is not None:
        print(json.dumps({"manifest": str(manifest), "images": len(data), "flip": args.flip}))
    D.shutdown(dist)
    return 0
