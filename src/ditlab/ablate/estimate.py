"""`ditlab ablate --estimate`: the study's projected wall time on this machine, from a few timed training
steps and one timed sampling batch per variant, before committing hours to it."""

from __future__ import annotations

import time

from ditlab.ablate.variants import AblationConfig
from ditlab.runtime import configure_threads
from ditlab.sampling import generate
from ditlab.train.trainer import Trainer


def estimate(abl: AblationConfig, probe_steps: int = 3, probe_samples: int = 64) -> dict:
    """Projected wall time of the study from scratch, from a few timed training steps and one timed sampling
        batch per variant on this machine now: steps × s/step + every image sampled (FD curve, final scores,
        the trainer's sample grid) × s/image. Features and FD are left out (a run's metrics.jsonl logs each
    evaluation's `eval_seconds`)."""
    configure_threads(abl.threads)
    rows = []
    for variant in abl.variants:
        seeds = abl.seeds_of(variant)
        cfg = abl.train_config(variant, seeds[0])
        trainer = Trainer(cfg)  # writes nothing until run()
        trainer.train_step()  # warm-up: allocations, lazy initialisation
        start = time.perf_counter()
        for _ in range(probe_steps):
            trainer.train_step()
        step_s = (time.perf_counter() - start) / probe_steps
        model = trainer.ema.model
        # a text model samples the data's own prompts (what its evaluations do), a class model its classes
        conditions = (
            dict(prompts=trainer.eval_prompts(probe_samples), text_encoder=trainer.text)
            if trainer.text is not None
            else dict(num_samples=probe_samples)
        )
        start = time.perf_counter()
        generate(model, **conditions, **trainer.generate_settings(), batch_size=250)
        image_s = (time.perf_counter() - start) / probe_samples
        evals = cfg.steps // cfg.eval_every if cfg.eval_every else 0
        grid = 8 * min(model.num_classes, 10) if model.num_classes else 32
        images = evals * cfg.eval_samples + abl.final_samples + grid
        rows.append(
            dict(
                variant=variant,
                runs=len(seeds),
                step_seconds=step_s,
                image_seconds=image_s,
                train_seconds=cfg.steps * step_s,
                sample_seconds=images * image_s,
                run_seconds=cfg.steps * step_s + images * image_s,
            )
        )
    return {"rows": rows, "total_seconds": sum(r["run_seconds"] * r["runs"] for r in rows)}


def estimate_table(est: dict) -> str:
    lines = [
        "| variant | runs | s/step | ms/image sampled | training (s) | sampling (s) | per run (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in est["rows"]:
        lines.append(
            f"| {r['variant']} | {r['runs']} | {r['step_seconds']:.3f} | {1000 * r['image_seconds']:.1f} | "
            f"{r['train_seconds']:.0f} | {r['sample_seconds']:.0f} | {r['run_seconds']:.0f} |"
        )
    runs = sum(r["runs"] for r in est["rows"])
    lines += ["", f"projected total: {est['total_seconds'] / 60:.0f} min for {runs} runs"]
    return "\n".join(lines)
