"""Forward speed of ditlab's four text-to-image architectures against the diffusers classes holding the same
weights: SD3Transformer2DModel (MMDiT), PixArtTransformer2DModel, FluxTransformer2DModel and
ZImageTransformer2DModel, each read into ditlab with `from_text_diffusers`.

    PYTHONPATH=src python benchmarks/text_speed.py --threads 1            # small configs (width 192-256)
    PYTHONPATH=src python benchmarks/text_speed.py --threads 1 --quick    # tinier and fewer rounds
    PYTHONPATH=src python benchmarks/text_speed.py --threads 1 --classes PixArtTransformer2DModel,ZImageTransformer2DModel
    PYTHONPATH=src python benchmarks/text_speed.py --threads 1 --clock cpu   # a busy machine: CPU time

Every pair runs on the same inputs (batch 8, 16x16 latents with 4 channels, 16 text tokens; Z-Image 32, its
multiple) in one process, timed round-robin with benchmarks/_timing.py's `interleaved` (min over rounds), so a
loaded machine slows both sides alike: read the ratios. The outputs of each pair are compared (max |diff|) so
the timing is of two models computing the same function. One JSON line per architecture, then a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import emit, interleaved, machine, markdown_table, setup  # noqa: E402

from ditlab.cli_args import add_list_argument
from ditlab.models.interop_text import (
    FLUX,
    PIXART,
    SD3,
    ZIMAGE,
    from_text_diffusers,
    pack_latents,
    unpack_latents,
)

TEXT_DIM = 384  # all-MiniLM-L6-v2's width, the default text encoder's
BATCH, SIDE = 8, 16


def configs(quick: bool) -> dict[str, dict]:
    """diffusers constructor arguments of each class: width 192 (Z-Image 256), 4 blocks (2 in --quick)."""
    layers = 2 if quick else 4
    return {
        SD3: dict(
            sample_size=SIDE,
            patch_size=2,
            in_channels=4,
            num_layers=layers,
            attention_head_dim=32,
            num_attention_heads=6,
            joint_attention_dim=TEXT_DIM,
            caption_projection_dim=192,
            pooled_projection_dim=TEXT_DIM,
            out_channels=4,
            pos_embed_max_size=SIDE,
        ),
        PIXART: dict(
            num_attention_heads=6,
            attention_head_dim=32,
            in_channels=4,
            out_channels=8,
            num_layers=layers,
            cross_attention_dim=192,
            sample_size=SIDE,
            patch_size=2,
            caption_channels=TEXT_DIM,
        ),
        FLUX: dict(
            patch_size=1,
            in_channels=16,
            num_layers=layers // 2,
            num_single_layers=layers // 2,
            attention_head_dim=32,
            num_attention_heads=6,
            joint_attention_dim=TEXT_DIM,
            pooled_projection_dim=TEXT_DIM,
            axes_dims_rope=(8, 12, 12),
        ),
        ZIMAGE: dict(
            all_patch_size=(2,),
            all_f_patch_size=(1,),
            in_channels=4,
            dim=256,
            n_layers=layers,
            n_refiner_layers=1,
            n_heads=8,
            n_kv_heads=8,
            cap_feat_dim=TEXT_DIM,
            axes_dims=(8, 12, 12),
            axes_lens=(128, 64, 64),
        ),
    }


def randomized(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Every parameter random (zero-initialised gates would make both sides cheap no-ops to compare)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return module.eval()


def inputs(name: str, seed: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    length = 32 if name == ZIMAGE else 16  # Z-Image pads captions to multiples of 32
    return dict(
        x=torch.randn(BATCH, 4, SIDE, SIDE, generator=g),
        t=torch.rand(BATCH, generator=g),
        text=torch.randn(BATCH, length, TEXT_DIM, generator=g),
        pooled=torch.randn(BATCH, TEXT_DIM, generator=g),
    )


def diffusers_forward(name: str, transformer, x, t, text, pooled) -> torch.Tensor:
    """The diffusers call of each class on (N, C, H, W) latents, as its pipelines make it."""
    if name == SD3:
        return transformer(
            hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t * 1000
        ).sample
    if name == PIXART:
        return transformer(
            x,
            encoder_hidden_states=text,
            timestep=t * 1000,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        ).sample
    if name == ZIMAGE:
        return torch.stack(transformer([xi[:, None] for xi in x], t, list(text)).sample)[:, :, 0]
    tokens, ids = pack_latents(x)
    out = transformer(
        hidden_states=tokens,
        encoder_hidden_states=text,
        pooled_projections=pooled,
        timestep=t,
        img_ids=ids,
        txt_ids=torch.zeros(text.shape[1], 3),
    ).sample
    return unpack_latents(out, *x.shape[-2:])


def ditlab_forward(model, x, t, text, pooled) -> torch.Tensor:
    kw = {"pooled": pooled} if model.config.pooled_dim else {}
    return model(x, t * 1000, text=text, **kw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="intra-op CPU threads (0 = all cores)")
    parser.add_argument("--quick", action="store_true", help="2 blocks and 3 rounds: a smoke run")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (min over rounds is kept)")
    every = list(configs(False))
    add_list_argument(
        parser,
        "--classes",
        default=every,
        help=f"the diffusers classes to time (default: all of {every})",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall-clock time, or this thread's CPU time (leaves out waiting for a core on a busy machine; "
        "needs --threads 1)",
    )
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu times one thread: use it with --threads 1")
    unknown = sorted(set(args.classes) - set(every))
    if unknown:
        parser.error(f"unknown --classes {unknown}; choose from {every}")
    import diffusers

    threads = setup(args.threads)
    emit("text_speed_machine", clock=args.clock, **machine(threads))
    repeats = 3 if args.quick else args.repeats
    rows = []
    for name, kwargs in configs(args.quick).items():
        if name not in args.classes:
            continue
        torch.manual_seed(0)
        theirs = randomized(getattr(diffusers, name)(**kwargs))
        ours = from_text_diffusers(theirs).eval()
        data = inputs(name)
        with torch.no_grad():
            diff = float((ditlab_forward(ours, **data) - diffusers_forward(name, theirs, **data)).abs().max())

            def run_ours(ours=ours, data=data):
                ditlab_forward(ours, **data)

            def run_theirs(name=name, theirs=theirs, data=data):
                diffusers_forward(name, theirs, **data)

            best = interleaved(
                {"ditlab": run_ours, "diffusers": run_theirs}, repeats=repeats, warmup=1, clock=args.clock
            )
        row = dict(
            diffusers_class=name,
            ditlab_ms=1000 * best["ditlab"],
            diffusers_ms=1000 * best["diffusers"],
            speedup=best["diffusers"] / best["ditlab"],
            max_abs_diff=diff,
            params=sum(p.numel() for p in ours.parameters()),
        )
        rows.append(emit("text_speed", **row))
    print()
    print(
        markdown_table(
            rows,
            [
                ("diffusers class", "diffusers_class", ""),
                ("params", "params", ","),
                ("ditlab ms", "ditlab_ms", ".1f"),
                ("diffusers ms", "diffusers_ms", ".1f"),
                ("speed-up (diffusers / ditlab)", "speedup", ".2f"),
                ("max |diff|", "max_abs_diff", ".1e"),
            ],
        )
    )


if __name__ == "__main__":
    main()
