"""`ditlab serve`: a local web page (Gradio) to sample checkpoints by clicking.

    ditlab serve runs/digits                       # http://127.0.0.1:7860
    ditlab serve --models runs --port 8000         # every checkpoint in runs/, with a picker

Gradio is an optional dependency (`pip install 'ditlab[serve]'`); it is imported only when the server starts.
"""

from __future__ import annotations

import argparse
import os
import sys

from ditlab.autoencoders import load_vae
from ditlab.cli_args import (
    VAE_HELP,
    UsageError,
    add_device_argument,
    add_threads_argument,
    positive_int,
    vae_folder,
)
from ditlab.runtime import configure_threads, resolve_device
from ditlab.serve.catalog import Catalog
from ditlab.serve.requests import Limits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        nargs="?",
        metavar="RUN_OR_CHECKPOINT",
        help="a run folder, native .safetensors, official DiT .pt, training .pt or diffusers folder",
    )
    parser.add_argument(
        "--models",
        metavar="DIR",
        help="also serve every checkpoint and run folder in DIR (not recursive), with a picker on the page",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (0.0.0.0 opens the page to the network: anyone reaching it can sample)",
    )
    parser.add_argument("--port", type=positive_int, default=7860, help="TCP port of the page")
    parser.add_argument(
        "--max-images", type=positive_int, default=16, metavar="N", help="most images one click may ask for"
    )
    parser.add_argument(
        "--max-steps",
        type=positive_int,
        default=100,
        metavar="N",
        help="most sampler steps one click may ask for",
    )
    parser.add_argument("--vae", type=vae_folder, metavar="ema|mse|DIR", help=VAE_HELP)
    add_device_argument(parser)
    add_threads_argument(parser, "CPU threads for sampling")


def run(args) -> int:
    if not (args.checkpoint or args.models):
        raise UsageError("what to serve? pass RUN_OR_CHECKPOINT and/or --models DIR")
    configure_threads(args.threads)
    # bad input raises (ValueError family): `ditlab.cli` prints it as one error line, exit code 2
    device = resolve_device(args.device)
    catalog = Catalog.from_args(args.checkpoint, args.models, device=device)
    limits = Limits(max_images=args.max_images, max_steps=args.max_steps)
    vae = load_vae(args.vae, device=device) if args.vae else None
    # Before Gradio is imported: no telemetry, no version check against the internet.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        from ditlab.serve.app import build_app, launch
    except ImportError as err:
        print(
            f"ditlab serve: error: {err}; install the web app's extra: pip install 'ditlab[serve]'",
            file=sys.stderr,
        )
        return 2
    try:
        app = build_app(catalog, limits, vae=vae)
    except (FileNotFoundError, ValueError) as err:  # the first model does not load
        print(f"ditlab serve: error: {err}", file=sys.stderr)
        return 2
    print(f"ditlab serve: {', '.join(catalog.names)}", flush=True)  # Gradio prints the page's address
    try:
        launch(app, host=args.host, port=args.port)
    except OSError as err:  # the port is taken, or the address is not this machine's
        print(f"ditlab serve: error: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 2
    return 0
