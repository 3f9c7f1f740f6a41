"""`ditlab ema`: rebuild a run's EMA of any length from its post-hoc EMA snapshots (EDM2; see
ditlab.train.posthoc_ema) into a model file every ditlab tool reads.

    ditlab train --data digits --model DiT-Ti/2 --train-steps 2000 --posthoc-ema 0.05 0.1 --out runs/digits
    ditlab ema runs/digits --length 0.1 --out runs/digits/ema-0.1.safetensors
    ditlab sample runs/digits/ema-0.1.safetensors --per-class 16 --out samples/ema-0.1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ditlab.cli_args import non_negative_int, positive_float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", help="run folder trained with --posthoc-ema (holds ema-snapshots/ and model.safetensors)"
    )
    parser.add_argument(
        "--length",
        type=positive_float,
        required=True,
        metavar="SIGMA_REL",
        help="EMA length as sigma_rel, the relative std of the averaging window (EDM2: 0.05-0.2)",
    )
    parser.add_argument(
        "--step",
        type=non_negative_int,
        metavar="N",
        help="rebuild the EMA as it was after optimizer step N (default: the last snapshot's step)",
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="the model file to write (default: RUN/ema-<length>.safetensors)",
    )


def run(args: argparse.Namespace) -> int:
    from ditlab.models.checkpoint import load_model, save_model
    from ditlab.train.posthoc_ema import reconstruct, snapshot_dir

    # bad input raises (ValueError family): `ditlab.cli` prints it as one error line, exit code 2
    params, report = reconstruct(snapshot_dir(args.run), args.length, args.step)
    model = load_model(args.run)  # the run's model file: config, metadata and the frozen tensors
    own = dict(model.named_parameters())
    unknown = sorted(set(params) - set(own))
    if unknown:
        raise ValueError(f"the snapshots hold parameters the run's model lacks: {unknown[:5]}")
    for name, value in params.items():
        own[name].data.copy_(value)
    out = Path(args.out or Path(args.run) / f"ema-{args.length:g}.safetensors")
    save_model(model, out)
    print(json.dumps({**report, "model": str(out)}))
    return 0
