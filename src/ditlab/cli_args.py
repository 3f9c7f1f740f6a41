"""The flag vocabulary every `ditlab` command shares: spellings, list style, validators and the help layout.

One place decides how a flag is spelled and parsed, so `--classes 1 2 3`, `--seeds 0,1` and `--variants paper`
read the same in every command:

- list flags take values space-separated after the flag, may be repeated to extend the list, and accept
  commas: `--classes 1 2 3` == `--classes 1,2 --classes 3` (`ListAction`);
- `--resume [auto|PATH]`: bare `--resume` means auto (`add_resume_argument`);
- the official DiT scripts' spellings work as aliases where they mean the same thing (`OFFICIAL_ALIASES`,
  `names`), and `--vae ema|mse` names a local copy of the SD VAE (`vae_folder`);
- numbers are checked when parsed (`positive_int`, `non_negative_float`, ...), so a bad value is refused
  with the flag's name before any work starts;
- `HelpFormatter` prints each default once and the choices of a flag whose metavar hides them.

A command raises `UsageError` from its `run` for a problem with how its flags were combined; `ditlab.cli`
prints it with the command's usage line and exits 2, as argparse does for its own errors.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

# canonical flag -> the official DiT scripts' spelling of the same option (train.py, sample.py).
OFFICIAL_ALIASES: dict[str, str] = {
    "--out": "--results-dir",
    "--batch-size": "--global-batch-size",
    "--seed": "--global-seed",
    "--guidance-scale": "--cfg-scale",
    "--sample-steps": "--num-sampling-steps",
}

# `--vae ema|mse`: the two SD VAEs the DiT checkpoints were trained with, looked up as local folders.
VAE_DIR_ENV = "DITLAB_VAE_DIR"
VAE_NAMES = {"ema": "sd-vae-ft-ema", "mse": "sd-vae-ft-mse"}


class UsageError(ValueError):
    """Flags that parse one by one but not together; `ditlab.cli` reports it like an argparse error."""


def names(flag: str, *extra: str) -> tuple[str, ...]:
    """`flag`, its official DiT alias if it has one, then `extra` aliases: the option strings of one flag."""
    official = OFFICIAL_ALIASES.get(flag)
    return (flag, *((official,) if official else ()), *extra)


# ---------------------------------------------------------------------------------------------- validators
def _number(kind, test, wanted: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    parse.__name__ = wanted.replace(" ", "_")  # argparse names the type in its messages
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "a number > 0")
non_negative_float = _number(float, lambda v: v >= 0, "a number >= 0")


def sample_steps(text: str) -> int | str:
    """A sampler step count ("50"), or a DDPM respacing string ("ddim25", "10,20,30") checked for shape.

    Checked at parse time, so `--steps -3` is refused by name instead of failing inside the respacing code.
    """
    text = str(text).strip()
    body = text[len("ddim") :] if text.startswith("ddim") else text
    parts = body.split(",") if body else []
    ddim_list = body != text and len(parts) != 1  # ddimN takes one count
    if ddim_list or not parts or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of sampling steps: expected a positive step count (50) or a respacing "
            "such as ddim25 or 10,20,30 (steps per section of the chain), every count at least 1"
        )
    return int(text) if text.isdigit() else text


def parse_kv(text: str) -> tuple[str, object]:
    """KEY=VALUE -> (key, value), the value read as JSON when it is JSON (4, 0.5, true) else kept as text."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


# ---------------------------------------------------------------------------------------------- flags
class ListAction(argparse.Action):
    """A list flag: `--x 1 2 3`, `--x 1,2 --x 3` and `--x 1,2,3` all give [1, 2, 3].

    `item` converts (and validates) each value. With `bare=(...)` the flag may also be given without values
    and then means that list (`ditlab flops --variants` = all variants).
    """

    def __init__(self, option_strings, dest, item=str, bare=None, **kwargs):
        kwargs.setdefault("nargs", "*" if bare is not None else "+")
        super().__init__(option_strings, dest, **kwargs)
        self.item = item
        self.bare = list(bare) if bare is not None else None

    def __call__(self, parser, namespace, values, option_string=None):
        texts = [part.strip() for value in values for part in str(value).split(",") if part.strip()]
        if not texts and self.bare is not None:
            texts = list(self.bare)
        if not texts:
            raise argparse.ArgumentError(self, "expected at least one value")
        try:
            items = [self.item(text) for text in texts]
        except (argparse.ArgumentTypeError, ValueError) as err:
            raise argparse.ArgumentError(self, str(err)) from err
        current = getattr(namespace, self.dest, None)
        # the first use replaces the default; later uses of the flag extend what was given
        start = [] if current is None or current is self.default else list(current)
        setattr(namespace, self.dest, start + items)


def add_list_argument(parser, *flags: str, item=str, **kwargs) -> None:
    """A list flag (`ListAction`, the one style every command's list flags share); `item` converts each value."""
    parser.add_argument(*flags, action=ListAction, item=item, **kwargs)


def add_resume_argument(parser: argparse.ArgumentParser, where: str = "--out") -> None:
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        metavar="auto|PATH",
        help=f"continue a run: a checkpoint PATH, or auto (bare --resume) = the newest checkpoint in {where} "
        "(starts fresh when there is none)",
    )


DEVICE_CHOICES_HELP = "auto (cuda when available, else cpu), cpu, cuda or cuda:N"


def add_device_argument(parser: argparse.ArgumentParser, what: str = "") -> None:
    """`--device`, resolved by `ditlab.runtime.resolve_device` (`what`: whose device, as a help prefix)."""
    parser.add_argument("--device", default="auto", help=f"{what}{DEVICE_CHOICES_HELP}")


def add_threads_argument(parser: argparse.ArgumentParser, what: str = "CPU threads") -> None:
    parser.add_argument(
        "--threads", type=non_negative_int, default=0, metavar="N", help=f"{what} (0 = all cores)"
    )


def add_sampling_arguments(
    parser: argparse.ArgumentParser,
    samplers,
    helps: tuple[str, str, str],
    *,
    sampler: str | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    steps_type=sample_steps,
    steps_aliases: tuple[str, ...] = (),
) -> None:
    """`--sampler`, `--sample-steps` and `--guidance-scale` (with their official aliases): how a command
    samples. `helps`: the three flags' help texts; the defaults None mean "decided later" (a run's record)."""
    sampler_help, steps_help, guidance_help = helps
    parser.add_argument("--sampler", choices=list(samplers), default=sampler, help=sampler_help)
    numbers = (
        (names("--sample-steps", *steps_aliases), steps_type, steps, "N", steps_help),
        (names("--guidance-scale"), non_negative_float, guidance_scale, "SCALE", guidance_help),
    )
    for flags, kind, default, metavar, text in numbers:  # dest: from the first flag, sample_steps, ...
        parser.add_argument(*flags, type=kind, default=default, metavar=metavar, help=text)


def vae_folder(value: str) -> Path:
    """`--vae`: ema / mse -> $DITLAB_VAE_DIR (default ~/.cache/ditlab/vae)/sd-vae-ft-{ema,mse}; else a path.

    Nothing is downloaded: a missing folder is refused with what to put where.
    """
    if value in VAE_NAMES:
        root = Path(os.environ.get(VAE_DIR_ENV) or Path.home() / ".cache" / "ditlab" / "vae").expanduser()
        folder = root / VAE_NAMES[value]
        if not folder.is_dir():
            raise argparse.ArgumentTypeError(
                f"--vae {value} looks for the folder {folder}, which does not exist: save the diffusers "
                f"AutoencoderKL stabilityai/{VAE_NAMES[value]} there, set ${VAE_DIR_ENV} to the folder "
                "that holds it, or pass the VAE folder's path"
            )
        return folder
    folder = Path(value).expanduser()
    if not folder.exists():
        raise argparse.ArgumentTypeError(
            f"no VAE at {folder}: pass a diffusers AutoencoderKL folder, or ema / mse for "
            f"${VAE_DIR_ENV}/sd-vae-ft-ema or -mse"
        )
    return folder


VAE_HELP = (
    "autoencoder decoding the latents of latent models: a local diffusers AutoencoderKL / VQModel folder, a "
    f"ditlab autoencoder, or ema / mse = ${VAE_DIR_ENV}/sd-vae-ft-ema or -mse (default ${VAE_DIR_ENV}: "
    "~/.cache/ditlab/vae); a latent model ditlab trained decodes through the one it records without it"
)


# ---------------------------------------------------------------------------------------------- help layout
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description and example as written; adds `(default: X)` once, and the choices when a
    metavar hides them."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.choices is not None and action.metavar is not None:
            missing = [str(c) for c in action.choices if str(c) not in text]
            if missing:
                text += f" (choices: {', '.join(str(c) for c in action.choices)})"
        if "default" not in text and _shows_default(action):
            text += " (default: %(default)s)"
        return text


def _shows_default(action: argparse.Action) -> bool:
    if isinstance(action, (argparse._HelpAction, argparse._VersionAction)) or not action.option_strings:
        return False
    default = action.default
    # identity, not ==: a default of 0 is worth showing, False (a switch left off) is not
    return not (default is None or default is argparse.SUPPRESS or default is False or default in ([], ""))


__all__ = [
    "OFFICIAL_ALIASES",
    "VAE_DIR_ENV",
    "VAE_HELP",
    "VAE_NAMES",
    "HelpFormatter",
    "ListAction",
    "UsageError",
    "DEVICE_CHOICES_HELP",
    "add_device_argument",
    "add_list_argument",
    "add_resume_argument",
    "add_sampling_arguments",
    "add_threads_argument",
    "names",
    "non_negative_float",
    "non_negative_int",
    "parse_kv",
    "positive_float",
    "positive_int",
    "sample_steps",
    "vae_folder",
]
