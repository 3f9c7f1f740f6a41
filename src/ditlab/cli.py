"""The `ditlab` command: one sub-command per job, each defined next to the code it drives.

Every entry of COMMANDS names a module that provides `add_arguments(parser)` and `run(args) -> int`;
modules are imported only when their command runs, so `ditlab --help` stays fast.

    ditlab demo --out ditlab-demo
    ditlab flops DiT-XL/2
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("ditlab.demo", "train a DiT on the bundled digits, sample every class, report accuracy"),
    "train": ("ditlab.train.cli", "train (or resume) a DiT on digits, Fashion-MNIST or an image folder"),
    "sample": ("ditlab.sampling_cli", "sample images from a checkpoint into a PNG grid and an ADM .npz"),
    "eval": (
        "ditlab.eval.cli",
        "score samples (.npz) against a reference: FD, FID, precision/recall, accuracy",
    ),
    "flops": ("ditlab.models.flops_cli", "parameter counts and analytic Gflops of zoo models"),
    "convert": (
        "ditlab.models.convert_cli",
        "convert checkpoints: official .pt, native .safetensors, diffusers",
    ),
    "finetune": ("ditlab.finetune.cli", "fine-tune a trained DiT: DiffFit, adaLN-only, LoRA or full"),
    "vae": ("ditlab.autoencoders.cli", "train a KL-VAE or VQ-VAE; export to or import from diffusers"),
    "latents": ("ditlab.autoencoders.latents_cli", "encode a data set once into a sharded latent cache"),
    "ablate": ("ditlab.ablate", "the DiT paper's conditioning study: FD table and plot of variants"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ditlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse once to find the command, then let its module add its own arguments.
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help") and not argv[0].startswith("-"):
            parser.error(f"unknown command {argv[0]!r}; choose one of: {', '.join(COMMANDS)}")
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    sub = argparse.ArgumentParser(prog=f"ditlab {name}", description=COMMANDS[name][1])
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
