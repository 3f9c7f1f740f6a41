"""Sampling images/s of the text study's four architectures at equal Gflops (issue 17): pooled (SD3's pooled
text into adaLN-Zero), cross-attention (PixArt-α), MMDiT (SD3) and single-stream (Flux), each at the depth
`ditlab ablate --study text` gives it (Gflops matched to MMDiT-Ti/4 at 32 px with 16 text tokens).

    PYTHONPATH=src python benchmarks/text_sampling.py --threads 1                 # the study's sizes
    PYTHONPATH=src python benchmarks/text_sampling.py --threads 1 --quick         # a smoke run

Each model is built as `ditlab train --data shapes --text-encoder minilm --model <its preset>` builds it (32 px
RGB, MiniLM's widths), with random weights (adaLN-Zero's zero gates would make every block a cheap no-op),
and samples with `ditlab.generate`: `--batch` prompts of the shapes grammar, Euler `--steps`, guidance 2 on
the null caption (two model calls per step), the prompts encoded by MiniLM inside each call, as `ditlab
sample RUN --prompt ...` does. The four are timed round-robin in one process (benchmarks/_timing.py's
`interleaved`, min over rounds). One JSON line per architecture, then a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import emit, interleaved, machine, markdown_table, setup  # noqa: E402
from text_speed import randomized  # noqa: E402

from ditlab.ablate.variants import TEXT_VARIANTS, AblationConfig, _gflops, study_defaults
from ditlab.models.zoo import create_model, text_widths
from ditlab.sampling import ObjectiveSpec, generate
from ditlab.text import load_text_encoder

PROMPTS = ["a red circle", "a green square left of a blue triangle", "a yellow square above a red triangle"]
SIDE, TEXT_LEN = 32, 16  # the study's shapes images and caption tokens


def study_models(encoder) -> dict[str, tuple[str, torch.nn.Module, float]]:
    """variant -> (zoo name, model with random weights, Gflops), at the text study's matched depths."""
    study = AblationConfig.from_dict(study_defaults("text", quick=False))
    out = {}
    for variant in TEXT_VARIANTS:
        name, args = study.architecture(variant)
        torch.manual_seed(0)
        model = create_model(  # sized to the encoder as the trainer sizes it
            name, input_size=SIDE, in_channels=3, num_classes=0, learn_sigma=False,
            **text_widths(name, encoder), **args,
        )  # fmt: skip
        model.objective_spec = ObjectiveSpec(kind="flow")  # the study's rectified flow
        out[variant] = (
            f"{name} depth {args['depth']}",
            randomized(model),
            _gflops(name, args, SIDE, TEXT_LEN),
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="intra-op CPU threads (0 = all cores)")
    parser.add_argument("--batch", type=int, default=32, help="images per generate call (default 32)")
    parser.add_argument("--steps", type=int, default=16, help="Euler steps (default 16)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (min over rounds is kept)")
    parser.add_argument("--quick", action="store_true", help="4 images, 2 steps, 2 rounds: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.steps, args.repeats = 4, 2, 2
    threads = setup(args.threads)
    emit("text_sampling_machine", **machine(threads))
    encoder = load_text_encoder("minilm", max_length=TEXT_LEN)
    models = study_models(encoder)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]

    def runner(model):
        return lambda: generate(
            model, prompts=prompts, text_encoder=encoder, sampler="euler", steps=args.steps,
            guidance_scale=2.0, batch_size=args.batch, return_tensors=True,
        )  # fmt: skip

    with torch.no_grad():
        best = interleaved({v: runner(m) for v, (_, m, _) in models.items()}, repeats=args.repeats, warmup=1)
    rows = []
    for variant, (name, model, gflops) in models.items():
        row = dict(
            architecture=variant,
            model=name,
            gflops=round(gflops, 4),
            params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            seconds=round(best[variant], 3),
            images_per_s=round(args.batch / best[variant], 2),
        )
        emit("text_sampling", **row, batch=args.batch, steps=args.steps, threads=threads)
        rows.append(row)
    columns = [
        ("architecture", "architecture", ""), ("model", "model", ""), ("Gflops", "gflops", ".4f"),
        ("params (M)", "params_m", ".2f"), ("s per call", "seconds", ".3f"), ("images/s", "images_per_s", ".2f"),
    ]  # fmt: skip
    print(f"\n{args.batch} images, Euler {args.steps} steps, guidance 2, {threads} thread(s)\n")
    print(markdown_table(rows, columns))


if __name__ == "__main__":
    main()
