"""`ditlab ablate`: the DiT paper's conditioning study (Table 4, Figure 5) in miniature, on real data.

Each chosen conditioning variant (`ditlab.models.VARIANTS`: the paper's in-context, cross-attention, adaLN and
adaLN-Zero blocks, adaLN-Zero without the zero init, with RMSNorm, the shift-free tanh-gated RMS block and
PixArt's adaLN-single) trains with the same data, steps, batch, learning-rate schedule and seed(s). FD is
logged during training (`eval_every`); at the end the EMA model of each run is sampled and scored against the
held-out split, and OUT receives:

    ablation.json   settings, command, and one object per (variant, seed): variant, seed, params, gflops,
                    train_gflops, fd (FD-EffNetLite0), fd_classifier, accuracy, seconds, curve, ...
    ablation.md     the table (mean ± std over seeds) and the per-run numbers
    ablation.png    FD against training steps and against training compute, mean over seeds, min-max band
    runs/VARIANT/seedS/   each run's own folder (checkpoints, metrics.jsonl, samples.png, model.safetensors)

The package, one module per part of the experiment:

    variants.py   what the study trains: the variants, shared settings, AblationConfig -> one TrainConfig per run
    runner.py     resumable runs: train or resume or skip each run, score it, collect the study
    estimate.py   --estimate: the projected wall time from a few timed steps
    report.py     ablation.json / ablation.md: the table beside the paper's Table 4
    plot.py       ablation.png: the FD curves
    cli.py        the flags and the command

Usage (`ditlab ablate --estimate` prints how long a study takes on this machine):

    ditlab ablate --quick                                   # digits, DiT-Nano/2: checks the pipeline
    ditlab ablate --estimate                                # time a few steps: the study's projected time
    ditlab ablate --out runs/ablation                       # the Fashion-MNIST study
    ditlab ablate --out runs/ablation --report-only         # the table of the runs finished so far
    ditlab ablate --variants adaln-zero adaln-zero-normal-init --train-steps 3000 --seeds 0 1 2
    ditlab ablate --config my-ablation.json --out runs/mine # a JSON object of AblationConfig fields
"""

from ditlab.ablate.cli import add_arguments, config_from_args, run
from ditlab.ablate.estimate import estimate, estimate_table
from ditlab.ablate.plot import plot
from ditlab.ablate.report import markdown, summarize, write_report
from ditlab.ablate.runner import run_ablation, run_one
from ditlab.ablate.variants import PAPER_TABLE4, PAPER_VARIANTS, QUICK, TRAIN_DEFAULTS, AblationConfig

__all__ = [
    "PAPER_TABLE4",
    "PAPER_VARIANTS",
    "QUICK",
    "TRAIN_DEFAULTS",
    "AblationConfig",
    "add_arguments",
    "config_from_args",
    "estimate",
    "estimate_table",
    "markdown",
    "plot",
    "run",
    "run_ablation",
    "run_one",
    "summarize",
    "write_report",
]
