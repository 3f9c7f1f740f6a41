"""`ditlab vae`: train ditlab's KL-VAE / VQ-VAE, and move autoencoders to and from diffusers folders.

ditlab vae train --data digits --kind kl --downsample 4 --latent-channels 4 --train-steps 2000 --out runs/vae
ditlab vae train --out runs/vae --resume                     # after a crash: same run, same losses
torchrun --standalone --nproc_per_node 2 -m ditlab vae train --data D --train-steps 2000 --out runs/vae
ditlab vae export runs/vae --out my-vae/                     # diffusers.AutoencoderKL.from_pretrained loads it
ditlab vae import sd-vae-ft-ema/ --out sd-vae.safetensors    # a diffusers folder as a ditlab autoencoder
"""

from __future__ import annotations

import argparse
import json

from ditlab.train.cli import add_arguments as add_config_arguments
from ditlab.train.cli import config_from_args
from ditlab.train.vae import VAETrainConfig

HELP = {
    "data": 'images: "digits", "fashion-mnist[:DIR]" or an ImageFolder path',
    "kind": "kl (Gaussian posterior, LDM's KL-VAE) or vq (codebook, VQ-VAE)",
    "downsample": "spatial downsampling factor f of the latents (a power of 2, e.g. 4 or 8)",
    "latent_channels": "channels of the latents",
    "width": "channels of the first resolution level (later levels 2x, then 4x)",
    "layers_per_block": "ResNet blocks per resolution level (the decoder has one more)",
    "norm_groups": "GroupNorm groups (must divide every width)",
    "mid_attention": "an attention block at the lowest resolution (--no-mid-attention: none)",
    "codebook_size": "vq: number of codebook vectors",
    "codebook_ema": "vq: update the codebook by EMA (--no-codebook-ema: by the codebook loss)",
    "commitment": "vq: weight beta of the commitment loss",
    "rec_loss": "reconstruction loss: l1 or l2",
    "kl_weight": "kl: weight of the KL term, per image element (LDM: 1e-6)",
    "perceptual_weight": "weight of the EfficientNet-Lite0 perceptual distance (0 = off)",
    "disc_weight": "weight of the PatchGAN adversarial loss (0 = no discriminator; LDM: 0.5)",
    "disc_start": "step at which the adversarial loss starts",
    "steps": "total optimizer steps (or use --epochs)",
    "batch_size": "global batch size (split across torchrun processes)",
    "out": "run directory: config.json, checkpoints/, metrics.jsonl, samples.png, autoencoder.safetensors",
    "sample_every": "write a reconstruction grid every N steps (0 = only at the end)",
    "eval_every": "PSNR / SSIM of held-out reconstructions every N steps (0 = off)",
    "scale_images": "training images the latent scale (1 / std of the latents) is estimated from",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="vae_action", metavar="ACTION", required=True)
    train = actions.add_parser("train", help="train a KL-VAE or VQ-VAE", description=__doc__.splitlines()[0])
    add_config_arguments(train, VAETrainConfig, HELP)
    export = actions.add_parser("export", help="write a ditlab autoencoder as a diffusers folder")
    export.add_argument("vae", help="a `ditlab vae train` run folder or autoencoder.safetensors")
    export.add_argument("--out", required=True, help="the diffusers folder to write (config.json + weights)")
    imp = actions.add_parser(
        "import", help="read a diffusers AutoencoderKL / VQModel folder into ditlab's file"
    )
    imp.add_argument("folder", help="a diffusers AutoencoderKL or VQModel folder (save_pretrained layout)")
    imp.add_argument("--out", required=True, help="the ditlab autoencoder file to write (.safetensors)")
    imp.add_argument(
        "--data", help="images to estimate the latent scale from when the folder states no scaling_factor"
    )
    imp.add_argument("--scale-images", type=int, default=512, help="images for that estimate (default 512)")


def run(args: argparse.Namespace) -> int:
    # bad input raises (ValueError family): `ditlab.cli` prints it as one error line, exit code 2
    return {"train": _train, "export": _export, "import": _import}[args.vae_action](args)


def _train(args) -> int:
    from ditlab.train.vae import train_autoencoder

    cfg, resume = config_from_args(args, VAETrainConfig)
    summary = train_autoencoder(
        cfg, resume=resume, overwrite=getattr(args, "overwrite", False), force=getattr(args, "force", False)
    )
    if summary.get("model"):
        print(json.dumps(summary))
    return 0


def _export(args) -> int:
    from ditlab.autoencoders.checkpoint import load_autoencoder
    from ditlab.autoencoders.interop import export_diffusers

    folder = export_diffusers(load_autoencoder(args.vae), args.out)
    print(json.dumps({"diffusers": str(folder), "from": args.vae}))
    return 0


def _import(args) -> int:
    from ditlab.autoencoders.checkpoint import save_autoencoder
    from ditlab.autoencoders.interop import import_diffusers
    from ditlab.data import load_dataset

    images = None
    if args.data:
        data = load_dataset(args.data, split="train")
        images = data.batch(range(min(args.scale_images, len(data))))[0]
    ae = import_diffusers(args.folder, images=images)
    path = save_autoencoder(ae, args.out)
    print(json.dumps({"autoencoder": str(path), "scale": ae.scale, "from": args.folder}))
    return 0
