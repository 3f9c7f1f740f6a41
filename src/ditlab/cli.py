"""The `ditlab` command: one argparse sub-command per job, each defined next to the code it drives.

Every entry of COMMANDS names a module that provides `add_arguments(parser)` and `run(args) -> int`. Only the
chosen command's module is imported and asked for its flags, so `ditlab --help` lists every command without
importing them all; `build_parser(COMMANDS)` builds every sub-parser (the tests walk them). The flag
vocabulary the commands share lives in `ditlab.cli_args`.

Errors: `main` is the one place that turns a user's mistake into one line, `ditlab <command>: error: <what is
wrong and what to do>` on stderr with exit code 2 (INPUT_ERRORS: bad values, missing or unreadable files,
a missing optional package); an I/O failure such as a full disk gets the same one line with exit code 1.
Commands raise, they never print their own errors. `--debug` (or DITLAB_DEBUG=1) lets the exception through
with its traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from ditlab import __version__
from ditlab.cli_args import HelpFormatter, UsageError


@dataclass(frozen=True)
class Command:
    module: str  # provides add_arguments(parser) and run(args) -> int
    help: str  # one line, in `ditlab --help` and atop `ditlab <cmd> --help`
    example: str  # one runnable command line, shown by `ditlab <cmd> --help`


# The examples chain: train makes runs/digits, sample reads it, eval scores the samples, and so on.
COMMANDS: dict[str, Command] = {
    "demo": Command(
        "ditlab.demo",
        "train a DiT on the bundled digits, sample every class, report accuracy",
        "ditlab demo --out ditlab-demo",
    ),
    "train": Command(
        "ditlab.train.cli",
        "train (or resume) a DiT on digits, Fashion-MNIST or an image folder",
        "ditlab train --data digits --model DiT-Ti/2 --train-steps 2000 --batch-size 64 --lr 1e-3 "
        "--out runs/digits",
    ),
    "sample": Command(
        "ditlab.sampling_cli",
        "sample images from a checkpoint into a PNG grid and an ADM .npz",
        "ditlab sample runs/digits/model.safetensors --classes 0 1 2 --per-class 8 --sample-steps 50 "
        "--out samples/digits",
    ),
    "eval": Command(
        "ditlab.eval.cli",
        "score samples (.npz) against a reference: FD, FID, precision/recall, accuracy",
        "ditlab eval --samples samples/digits.npz --ref digits:test",
    ),
    "flops": Command(
        "ditlab.models.flops_cli",
        "parameter counts and analytic Gflops of zoo models",
        "ditlab flops DiT-XL/2 --variants paper",
    ),
    "convert": Command(
        "ditlab.models.convert_cli",
        "convert checkpoints: official .pt, native .safetensors, diffusers",
        "ditlab convert runs/digits/model.safetensors runs/digits-diffusers --format diffusers",
    ),
    "finetune": Command(
        "ditlab.finetune.cli",
        "fine-tune a trained DiT: DiffFit, adaLN-only, LoRA or full",
        "ditlab finetune --base runs/digits --data digits --method difffit --train-steps 500 "
        "--out runs/digits-difffit",
    ),
    "serve": Command(
        "ditlab.serve.cli",
        "a local web page to sample checkpoints by clicking (Gradio; needs ditlab[serve])",
        "ditlab serve runs/digits --port 7860",
    ),
    "ema": Command(
        "ditlab.train.ema_cli",
        "rebuild a run's EMA of any length from its post-hoc EMA snapshots (EDM2)",
        "ditlab ema runs/digits --length 0.1 --out runs/digits/ema-0.1.safetensors",
    ),
    "ablate": Command(
        "ditlab.ablate",
        "the DiT paper's conditioning study: FD table and plot of variants",
        "ditlab ablate --quick",
    ),
    "vae": Command(
        "ditlab.train.vae_cli",
        "train a KL-VAE or VQ-VAE; export to or import from diffusers",
        "ditlab vae train --data fashion-mnist --image-size 32 --kind kl --downsample 4 --latent-channels 4 "
        "--train-steps 2000 --out runs/vae",
    ),
    "latents": Command(
        "ditlab.train.latents_cli",
        "encode a data set once into a sharded latent cache",
        "ditlab latents --vae runs/vae --data fashion-mnist --image-size 32 --flip --out latents/fm",
    ),
}


DEBUG_ENV = "DITLAB_DEBUG"
DEBUG_HELP = f"on an error show the full Python traceback instead of one line (also: {DEBUG_ENV}=1)"
# A mistake in what the user gave (a value, a file, a folder, a missing optional package): exit code 2.
INPUT_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ImportError,
)


_FULL = (
    "the disk (or quota) is full: free space or write elsewhere; a training run continues with --resume auto"
)
# What to do about the operating system's errors, by errno (its own message says only what went wrong).
OS_HINTS = {
    errno.ENOSPC: _FULL,
    errno.EDQUOT: _FULL,
    errno.EFBIG: "the file exceeds the size this file system or a ulimit allows: write elsewhere",
    errno.EEXIST: "a file stands where a folder is needed: move it away or pick another path",
    errno.ENOTDIR: "a file stands where a folder is needed: move it away or pick another path",
    errno.EACCES: "no permission: pick another path or change its permissions",
    errno.EROFS: "the file system is read-only: write elsewhere",
}


def error_line(err: BaseException) -> str:
    """An exception as one line: a multi-line message (e.g. a state-dict mismatch) joined with "; ", an
    operating-system error with what to do about it."""
    text = str(err) or err.__class__.__name__
    if isinstance(err, OSError):
        if err.filename is not None and str(err.filename) not in text:
            text = f"{text}: {err.filename}"
        if err.errno in OS_HINTS:
            text = f"{text} ({OS_HINTS[err.errno]})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # "header:" + its items read as "header: item; item"
    return "".join(f"{line}{' ' if line.endswith(':') else '; '}" for line in lines[:-1]) + (
        lines[-1] if lines else ""
    )


def _debug(args: argparse.Namespace | None) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def build_parser(with_flags: Iterable[str] = ()) -> argparse.ArgumentParser:
    """The `ditlab` parser; the commands named in `with_flags` get their flags (their modules are imported)."""
    parser = argparse.ArgumentParser(
        prog="ditlab",
        description="Diffusion Transformers (DiT): train, sample, evaluate, convert and fine-tune, on CPU or GPU.",
        epilog="start with `ditlab demo --out ditlab-demo`; `ditlab COMMAND --help` shows a command's flags "
        "and an example",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ditlab {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = set(with_flags)
    for name, command in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=command.help,
            description=command.help,
            epilog=f"example:\n  {command.example}",
            formatter_class=HelpFormatter,
        )
        # also after the command (`ditlab train ... --debug`); SUPPRESS keeps a top-level --debug set
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        if name in chosen:
            module = importlib.import_module(command.module)
            module.add_arguments(p)
            p.set_defaults(_run=module.run, _parser=p)
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The sub-command: the first word that is not an option (the top level has only --help/--version)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = _command_in(argv)
    parser = build_parser([name] if name in COMMANDS else [])
    if not argv:
        parser.print_help()
        return 2
    args = parser.parse_args(argv)  # exits 2 with the usage line for an unknown command or a bad flag
    try:
        return int(args._run(args) or 0)
    except UsageError as err:
        if _debug(args):
            raise
        args._parser.error(error_line(err))  # exits 2, like argparse's own errors
    except (*INPUT_ERRORS, OSError, KeyboardInterrupt) as err:
        if _debug(args):
            raise
        return _report(args.command, err)


def _report(command: str, err: BaseException) -> int:
    """Print `err` as the command's one error line; the exit code: 2 bad input, 1 I/O failure, 130 Ctrl-C."""
    if isinstance(err, KeyboardInterrupt):
        print(f"ditlab {command}: interrupted", file=sys.stderr)
        return 130
    where = "" if isinstance(err, INPUT_ERRORS) else "I/O failure: "  # e.g. a full disk mid-write
    print(f"ditlab {command}: error: {where}{error_line(err)}", file=sys.stderr)
    return 2 if isinstance(err, INPUT_ERRORS) else 1


if __name__ == "__main__":
    sys.exit(main())
