"""Encode and decode speed of ditlab's KL-VAE against diffusers' AutoencoderKL holding the same weights.

    python benchmarks/vae_speed.py                       # SD-VAE geometry (f8, widths 128-512), 64x64, batch 2
    python benchmarks/vae_speed.py --image-size 256      # the DiT ImageNet resolution (slow on a CPU)
    python benchmarks/vae_speed.py --quick               # smoke test: tiny widths (seconds)

Our autoencoder is exported to a diffusers folder and loaded back with `AutoencoderKL.from_pretrained`, so both
hold the same weights; the outputs are checked equal (max |diff| printed) before anything is timed. Encode =
image -> posterior mean, decode = latents -> image, both under no_grad in fp32. The two are timed round-robin
in one process, in both orders (min over 2 x --repeats, see _timing.py); the ratio diffusers / ditlab (> 1: ditlab is faster) is
the number to read. Prints one JSON line per phase, then a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402

from ditlab.autoencoders import AutoencoderConfig, build_autoencoder, export_diffusers  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="128,256,512,512", help="block widths (default: the SD VAE's)")
    p.add_argument("--layers-per-block", type=int, default=2, help="ResNet blocks per level (SD VAE: 2)")
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--batch", type=int, default=2, help="images per call (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--quick", action="store_true", help="tiny widths, one round: checks the script runs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.widths, args.layers_per_block, args.repeats, args.image_size = "32,32,64", 1, 1, 32
    threads = _timing.setup(args.threads)
    import diffusers

    widths = [int(w) for w in args.widths.split(",")]
    torch.manual_seed(0)
    cfg = AutoencoderConfig(
        kind="kl",
        downsample=2 ** (len(widths) - 1),
        block_out_channels=widths,
        layers_per_block=args.layers_per_block,
    )
    ours = build_autoencoder(cfg).eval().requires_grad_(False)
    with tempfile.TemporaryDirectory() as folder:
        export_diffusers(ours, folder)
        theirs = (
            diffusers.AutoencoderKL.from_pretrained(folder, low_cpu_mem_usage=False)
            .eval()
            .requires_grad_(False)
        )
    x = torch.rand(
        args.batch, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0)
    )
    x = x * 2 - 1
    with torch.no_grad():
        z = theirs.encode(x).latent_dist.mean
        enc_diff = (ours.raw_latents(x) - z).abs().max().item()
        dec_diff = (ours.decode_raw(z) - theirs.decode(z).sample).abs().max().item()
    _timing.emit("vae_speed_parity", encode_max_abs_diff=enc_diff, decode_max_abs_diff=dec_diff)

    phases = {
        "encode": {
            "ditlab": lambda: ours.raw_latents(x),
            "diffusers": lambda: theirs.encode(x).latent_dist.mean,
        },
        "decode": {"ditlab": lambda: ours.decode_raw(z), "diffusers": lambda: theirs.decode(z).sample},
    }
    rows = []
    with torch.no_grad():
        for phase, fns in phases.items():
            # both orders (A B ... then B A ...): on a busy machine the first of a pair was seen to be slower
            forward = _timing.interleaved(fns, repeats=args.repeats, warmup=1)
            backward = _timing.interleaved(dict(reversed(fns.items())), repeats=args.repeats, warmup=0)
            best = {name: min(forward[name], backward[name]) for name in fns}
            ratio = best["diffusers"] / best["ditlab"]
            rows.append(
                _timing.emit(
                    "vae_speed",
                    phase=phase,
                    image_size=args.image_size,
                    batch=args.batch,
                    widths=widths,
                    ditlab_s=best["ditlab"],
                    diffusers_s=best["diffusers"],
                    ratio=ratio,
                    machine=_timing.machine(threads),
                )
            )
    print()
    print("| phase | image | batch | ditlab (s) | diffusers (s) | diffusers / ditlab |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        size = f"{r['image_size']}x{r['image_size']}"
        print(
            f"| {r['phase']} | {size} | {r['batch']} | {r['ditlab_s']:.3f} | {r['diffusers_s']:.3f} | {r['ratio']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
