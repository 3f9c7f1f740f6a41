"""The training loop: data → objective loss → AdamW → EMA → checkpoints, logs, plots, samples.

    from ditlab.train import TrainConfig, train
    summary = train(TrainConfig(data="digits", model="DiT-Ti/2", steps=2000, batch_size=128, out="runs/digits"))

Exact resume: every random draw of step s (which images, flips, timesteps, noise, label dropout) comes from
a generator seeded by (seed, s), and a checkpoint holds model, EMA and optimizer state, so a run killed at
any point and resumed from its last checkpoint repeats the same losses as a run never interrupted.
The same design makes torchrun runs equal to one process with the same global batch: every rank draws the
global batch's randomness and keeps its own slice.

Text-to-image runs (`text_encoder` set): the data set's captions are encoded once (ditlab.text.embed_captions,
cached on disk), and `conditioning(step, ...)` turns each step's batch into the model's kwargs: its images'
embeddings looked up by index, `caption_dropout` of them replaced by the null caption (drawn from a generator
of (seed, step) of its own, so a class-conditional run's draws are unchanged and resume stays exact). The
model records the encoder's spec (`text_spec`), which `ditlab sample RUN --prompt ...` loads again.
"""

from __future__ import annotations

import gc
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from ditlab import distributed as D
from ditlab.atomic import atomic_write_text, remove_orphan_temp_files
from ditlab.autoencoders.inputs import CachedLatents, folder_inputs, latent_inputs
from ditlab.autoencoders.latent_cache import is_latent_folder
from ditlab.data import ImageDataset, save_grid
from ditlab.data.layouts import NUM_LAYOUT_CLASSES, shapes_layouts
from ditlab.data.loader import batch_source, rank_part, step_indices
from ditlab.data.streaming import open_dataset
from ditlab.diffusion.objective import ObjectiveSpec
from ditlab.eval.evaluate import evaluate, evaluate_model, fd_record, parse_features
from ditlab.eval.shapes import evaluate_shapes
from ditlab.models.checkpoint import load_state_dict_checked, save_model
from ditlab.models.flops import flops
from ditlab.models.text_inputs import takes_text, text_model_kwargs
from ditlab.models.zoo import create_model, text_widths
from ditlab.runtime import (
    autocast,
    bf16_speedup,
    configure_backends,
    configure_threads,
    matmul_peak_gflops,
    native_bf16,
    precision_decision,
    resolve_device,
    step_timing_decides,
)
from ditlab.sampling import generate
from ditlab.text import CaptionEmbeddings, drop_embeddings, embed_captions, load_text_encoder
from ditlab.train.config import TrainConfig, posthoc_sigmas
from ditlab.train.dcp import load_states
from ditlab.train.ema import EMA
from ditlab.train.guard import NonFiniteGuard, TrainingDivergedError, skip_if_not_finite
from ditlab.train.lock import RunLock
from ditlab.train.metrics import MetricsLog, plot_curves
from ditlab.train.parallel import Parallel, full_value
from ditlab.train.posthoc_ema import PostHocEMA, list_snapshots, snapshot_dir
from ditlab.train.preempt import Preempted, StopFlag
from ditlab.train.repa import build_repa
from ditlab.train.schedule import lr_at
from ditlab.train.state import (
    CorruptCheckpointError,
    check_run_folder,
    checkpoint_dir,
    list_checkpoints,
    load_training_state,
    move_aside,
    move_previous_run_aside,
    resume_checkpoint,
    resume_step_guess,
    save_distributed_state,
    save_training_state,
    started_precision,
)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of one training step: a pure function of (seed, step), so resume is exact."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63 - 1))


def caption_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one step's caption dropout: a stream apart from `step_generator`'s (whose draws
    class-conditional runs keep), also a pure function of (seed, step)."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 2 + 1) % (2**63 - 1))


SAMPLE_PROMPTS = 8  # rows of a text run's sample grids: this many of the data's captions, spread evenly


class Trainer:
    """One training run into `cfg.out`. `resume`: None (a new run), "auto" (the newest loadable checkpoint
    in `cfg.out`, else a new run) or a checkpoint path. A new run refuses a folder that holds another run
    unless `overwrite`, which moves that run's files into `previous-runs/<time>/` when `run()` starts. While
    `run()` runs it holds the folder's lock (ditlab.train.lock); `force` takes over a lock this machine
    cannot check (one from another host)."""

    # the attributes that hold the process group (wrappers, the parallel layout): dropped before it is
    # destroyed (`leave_process_group`); a subclass with more wrapped networks names them too
    process_group_holders: tuple[str, ...] = ("net", "parallel")

    def __init__(
        self, cfg: TrainConfig, resume: str | Path | None = None, overwrite: bool = False, force: bool = False
    ):
        # data: the named sets in memory, image folders streamed, latents (--vae, or a latent cache as
        # --data) as (latents, labels) batches: see `open_data`
        self.open_run(
            cfg, resume, overwrite, force, loader=cfg.data_loader, unconditional=cfg.unconditional or None
        )
        self.size_run()
        # layout runs: each image's mask, uint8 (N, H, W) labels (ditlab.data.layouts), else None
        self.layouts = (
            torch.from_numpy(shapes_layouts(self.data.name, len(self.data), self.data.image_size))
            if cfg.condition == "layout"
            else None
        )
        self.text: CaptionEmbeddings | None = None  # text runs: the data's encoded captions
        self.text_spec: dict | None = None
        self.text_widths: dict = {}
        if cfg.text_encoder:
            self.load_captions()
        self.part = rank_part(cfg.batch_size, self.dist.rank, self.dist.world_size)  # this rank's slice
        self.batches = batch_source(
            self.data, cfg.batch_size, cfg.seed, self.total_steps, self.part, num_workers=cfg.num_workers
        )
        # streamed data: workers forked before the model exists share none of its pages (see `start`)
        self.batches_from = resume_step_guess(self.out, resume)
        self.batches.start(self.batches_from)

        # model, objective, optimizer, EMA
        self.spec = ObjectiveSpec(
            kind=cfg.objective,
            schedule=cfg.schedule,
            steps=cfg.diffusion_steps,
            learn_sigma=cfg.learn_sigma,
            timestep_sampling=cfg.timestep_sampling,
            timestep_shift=cfg.timestep_shift,
            loss_weighting=cfg.loss_weighting,
            prediction=cfg.prediction,
        )
        self.objective = self.spec.build()
        self.model = self.build_model().to(self.device)
        self.model.objective_spec = self.spec.to_dict()
        self.model.data_spec = dict(  # saved with the model (ditlab.models.checkpoint.model_metadata)
            name=self.data.name,
            class_names=self.data.class_names,
            image_size=list(self.data.image_size),
            channels=self.data.channels,
        )
        self.model.text_spec = self.text_spec  # before the EMA copy: both models record the encoder
        self.model.sampling_spec = dict(  # the sampling this run's grids use: `ditlab sample RUN`'s defaults
            sampler=cfg.sampler, sample_steps=cfg.sample_steps, guidance_scale=cfg.guidance_scale
        )
        if self.autoencoder is not None:  # `ditlab sample RUN` decodes through it with no --vae
            self.model.data_spec["autoencoder"] = self.data.autoencoder_record()
        if self.text is None and self.data.num_classes and self.model.num_classes != self.data.num_classes:
            raise ValueError(
                f"the data has {self.data.num_classes} classes but the model was given num_classes="
                f"{self.model.num_classes}; drop the override or use matching data"
            )
        self.model.gradient_checkpointing = cfg.gradient_checkpointing
        self.model.checkpoint_policy = cfg.checkpoint_policy
        self.ema = EMA(self.model, cfg.ema_decay, warmup=cfg.ema_warmup)
        if cfg.repa_weight and type(self).compute_loss is not Trainer.compute_loss:
            raise ValueError(
                f"repa_weight: REPA adds its term in Trainer.compute_loss, which {type(self).__name__} replaces "
                "(a fine-tuning method computes its own loss); run without --repa-weight"
            )
        # after the EMA copies: its hook and projector belong to the trained model only, never the EMA's
        self.repa = build_repa(cfg, self.model, self.device, cache=isinstance(self.data, ImageDataset))
        # --precision auto on a CPU with native bf16: time this model's step both ways (before sharding)
        self.settle_precision(self._timed_step, min(self.batches_from, self.total_steps - 1))
        self.step = 0
        # DDP / FSDP2 / HSDP (ditlab.train.parallel); sharded modes shard model and EMA in place, so the
        # optimizer is built after, on the sharded parameters, and checkpoints load after that
        self.parallel = Parallel.create(
            cfg.parallel,
            self.dist,
            self.device,
            self.precision,
            cfg.fsdp_cpu_offload,
            cfg.hsdp_shard_size,
            bucket_view=cfg.ddp_bucket_view,
        )
        if self.parallel.sharded and self.repa is not None:
            raise ValueError(
                f"--parallel {cfg.parallel} shards the model, but REPA's projector is not sharded yet (its "
                "parameters would join the sharded optimizer and checkpoint as strangers): run REPA with "
                "--parallel ddp, or drop --repa-weight"
            )
        compile_model = (
            (lambda m: compile_or_eager(m, self._example_inputs(), train=True)) if cfg.compile else None
        )
        self.net = self.parallel.wrap(self.model, ema=self.ema.model, compile_model=compile_model)
        # after sharding: the profiles are copies of the parameters as this rank holds them (shards or whole)
        self.posthoc = PostHocEMA(self.model, posthoc_sigmas(cfg.posthoc_ema)) if cfg.posthoc_ema else None
        self.opt = self.build_optimizer()
        self.guard = NonFiniteGuard(
            cfg.nonfinite_patience,
            cfg.nonfinite_action,
            cfg.nonfinite_lr_factor,
            cfg.nonfinite_max_rollbacks,
            self.device,
        )
        self.resumed_from: Path | None = None
        found = resume_checkpoint(self.out, resume)
        if found is not None:
            self._load(*found)
        self.gflops_per_image = flops(self.model)
        self.peak = matmul_peak_gflops(self.device.type) if self.dist.is_main else float("nan")

    def open_run(self, cfg, resume, overwrite: bool, force: bool, **data_options) -> None:
        """The opening every trainer shares: the run's options, the runtime (`_setup_runtime`) and its data
        (`open_data`; `data_options`: `open_dataset`'s loader and unconditional)."""
        if overwrite and resume:
            raise ValueError("--overwrite starts a new run and --resume continues one: pass only one of them")
        self.cfg = cfg
        self.resume, self.overwrite, self.force = resume, overwrite, force
        self.lock: RunLock | None = None  # the run folder's lock, taken by run()
        self._setup_runtime()
        self.data, self.autoencoder = self.open_data(**data_options)

    def training_images(self, **data_options):
        """The training split of `cfg.data` (`data_options`: `open_dataset`'s loader and unconditional)."""
        cfg = self.cfg
        return open_dataset(
            cfg.data, split="train", bad_images=cfg.bad_images, **self.image_options(), **data_options
        )

    def image_options(self) -> dict:
        """How the training images are read: size, channels and horizontal flips."""
        cfg = self.cfg
        return {"image_size": cfg.image_size, "channels": cfg.channels, "flip": cfg.flip}

    def size_run(self) -> None:
        """The run's length once the data is final: batches per epoch (drop_last, as the official loader) and
        total steps; refuses a batch larger than the data."""
        cfg = self.cfg
        if len(self.data) < cfg.batch_size:
            raise ValueError(
                f"batch_size {cfg.batch_size} is larger than the dataset ({len(self.data)} images)"
            )
        self.batches_per_epoch = len(self.data) // cfg.batch_size
        self.total_steps = cfg.steps or cfg.epochs * self.batches_per_epoch

    def _setup_runtime(self) -> None:
        """Processes, device, precision, threads and the per-rank seed (shared by every trainer)."""
        cfg = self.cfg
        device = resolve_device(cfg.device)
        self.dist = D.init_distributed(device)
        self.device = D.local_device(device, self.dist)
        self.precision, self.precision_reason = precision_decision(cfg.precision, self.device)
        configure_backends(self.device)
        self.threads = configure_threads(cfg.threads, self.dist.world_size)
        if cfg.batch_size % self.dist.world_size:
            raise ValueError(
                f"batch_size {cfg.batch_size} (global) must be divisible by the {self.dist.world_size} processes"
            )
        torch.manual_seed(cfg.seed * self.dist.world_size + self.dist.rank)  # per-rank seed, as the official
        self.out = Path(cfg.out)

    def settle_precision(self, step: Callable[[str, int], None], at: int) -> None:
        """--precision auto on a CPU with native bf16 (`step_timing_decides`): bf16 if `step(precision, at)`,
        one forward and backward of the run's model on step `at`'s batch, runs BF16_MIN_SPEEDUP times faster
        in it (`bf16_speedup`), else fp32 (and fp32 in multi-process CPU runs, which time nothing); a resumed run
        keeps the precision it started with (its runtime.json), so it continues exactly as it would have. The
        timing leaves no trace: random state and the model's state are as they were."""
        cfg = self.cfg
        self.bf16_speedup: float | None = None
        if not step_timing_decides(cfg.precision, self.device):
            return
        started = started_precision(self.out) if self.resume else None
        if started is not None:
            self.precision = started
            self.precision_reason = f"auto: {started}, as this run started ({self.out}/runtime.json)"
            return
        if self.dist.enabled:  # ranks timing apart could disagree, and agreeing would take a collective here
            self.precision, self.precision_reason = (
                "fp32",
                ("auto: fp32; a multi-process CPU run does not time bf16 (pass --precision bf16 to use it)"),
            )
            return
        kept = {k: v.clone() for k, v in self.model.state_dict().items()}  # buffers a forward may update
        with torch.random.fork_rng(devices=[]):  # the timing takes none of the random numbers the run draws
            self.bf16_speedup = bf16_speedup(lambda precision: step(precision, at))
        self.model.load_state_dict(kept)
        self.precision, self.precision_reason = precision_decision(
            cfg.precision, self.device, speedup=self.bf16_speedup
        )

    def _timed_step(self, precision: str, step: int) -> None:
        """One forward and backward of the model on step `step`'s batch under `precision`, gradients dropped
        (what `bf16_speedup` times: the objective's loss, as every trainer's loss holds it)."""
        x0, y, t, noise, drop = self.batch_for_step(step)
        kwargs = self.conditioning(step, y, drop)
        kwargs.update(self.layout_kwargs(step), **self.reference_kwargs(step, x0))
        with autocast(self.device, precision):
            terms = self.objective.loss(self.model, x0, model_kwargs=kwargs, t=t, noise=noise)
        terms["loss"].float().mean().backward()
        self.model.zero_grad(set_to_none=True)

    def final_model(self):
        """The model a run exports: the EMA, gathered whole on rank 0 whatever the sharding."""
        return self.parallel.gather(self.ema.model)

    def open_data(self, **data_options):
        """(data, autoencoder or None). The named sets sit in memory (a batch is an index lookup); image
        folders stream through DataLoader workers (ditlab.data.loader), so a folder of any size trains in
        bounded memory. With --vae the model learns on latents and the data yields (latents, labels) batches;
        a `ditlab latents` folder as --data is such latents already, with the autoencoder its manifest names."""
        cfg = self.cfg
        if is_latent_folder(cfg.data):
            if cfg.latents:
                raise ValueError(
                    f"--data {cfg.data} is a latent cache already: drop --latents (it names a cache to use "
                    "instead of encoding --data's images)"
                )
            if cfg.data_loader == "stream":
                raise ValueError(
                    "a latent cache is read into memory, not streamed: drop --data-loader stream"
                )
            return folder_inputs(
                cfg.data, self.device, vae=cfg.vae, unconditional=cfg.unconditional, **self.image_options()
            )
        data = self.training_images(**data_options)
        if cfg.vae:
            return latent_inputs(data, cfg.vae, self.device, cfg.latents)
        return data, None

    def eval_reference(self) -> str:
        """--eval-ref, else the test split of the training images: of --data, or of the images a latent
        cache given as --data encoded (its manifest names them)."""
        if self.cfg.eval_ref:
            return self.cfg.eval_ref
        if isinstance(self.data, CachedLatents) and is_latent_folder(self.cfg.data):
            return f"{self.data.record.images_spec}:test"
        return f"{self.cfg.data}:test"

    def build_model(self):
        """The model to train, sized for the data. Fine-tuning subclasses override this (start from a
        checkpoint, freeze parameters): the optimizer takes exactly the parameters left trainable."""
        cfg = self.cfg
        model_args = dict(
            input_size=self.data.image_size,
            in_channels=self.data.channels,
            num_classes=0 if self.text is not None else self.data.num_classes,  # captions replace labels
            learn_sigma=cfg.learn_sigma,
            **self.text_widths,
        )
        if self.layouts is not None:  # SPADE unless model_args say otherwise (spatial_condition=concat)
            model_args.update(spatial_condition="spade", layout_channels=NUM_LAYOUT_CLASSES)
        if cfg.condition == "reference":
            model_args.update(reference_condition="adain")
        model_args.update(cfg.model_args)
        model = create_model(cfg.model, variant=cfg.variant, **model_args)
        if self.text is not None and not takes_text(model.config):
            raise ValueError(
                f"--text-encoder needs a text-conditioned model; {cfg.model} takes no text: use a text preset "
                "such as MMDiT-S/2, PixArt-S/2, Flux-S/2, ZImage-S/2 or Pooled-S/2"
            )
        return model

    # ------------------------------------------------------------------ text conditioning
    def load_captions(self) -> None:
        """Encode the data's captions once (cached) and size the text inputs of a preset to the encoder."""
        cfg = self.cfg
        captions = getattr(self.data, "captions", None)
        if not captions:
            raise ValueError(
                f"--text-encoder trains on captions, and {cfg.data} has none: use a captioned set (shapes, "
                "fashion-mnist, a set whose dataset object has `captions`) or drop --text-encoder"
            )
        encoder = load_text_encoder(cfg.text_encoder, max_length=cfg.text_max_length)
        self.text = embed_captions(encoder, captions)
        self.text_spec = encoder.spec
        self.text_widths.update(text_widths(cfg.model, encoder))

    def conditioning(self, step: int, y: torch.Tensor, drop: torch.Tensor) -> dict:
        """The model kwargs of step `step`'s batch on this rank: labels with their dropout, or (text runs) the
        images' caption embeddings with caption dropout to the null caption."""
        if self.text is None:
            return {"y": y, "force_drop_ids": drop} if self.model.num_classes else {}
        emb, _ = drop_embeddings(
            self.text.batch(self.batch_index(step)),
            self.text.null,
            rate=self.cfg.caption_dropout,
            generator=caption_generator(self.cfg.seed, step),
        )
        emb = emb.select(list(range(self.part.start, self.part.stop))).to(self.device)  # this rank's part
        return text_model_kwargs(self.model.config, emb)

    def generate_settings(self) -> dict:
        """The run's sampler, steps and guidance, as `ditlab.generate` takes them (grids and evaluations)."""
        cfg = self.cfg
        return {"sampler": cfg.sampler, "steps": cfg.sample_steps, "guidance_scale": cfg.guidance_scale}

    def sample_prompts(self) -> list[str]:
        """A text run's fixed grid prompts: SAMPLE_PROMPTS distinct captions of the data, evenly spread."""
        used = set(self.data.captions)
        distinct = [c for c in self.text.captions if c in used]  # the null caption left out
        stride = max(1, len(distinct) // SAMPLE_PROMPTS)
        return distinct[::stride][:SAMPLE_PROMPTS]

    def eval_prompts(self, n: int) -> list[str]:
        """A text run's evaluation prompts: the captions of n images in a fixed seeded order (the data's
        distribution of prompts, the same at every evaluation)."""
        order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(self.cfg.seed + 4242))
        return [self.data.captions[int(i)] for i in order[:n]]

    def build_optimizer(self) -> torch.optim.AdamW:
        """AdamW over the model's trainable parameters and REPA's projector (when on)."""
        cfg = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.repa is not None:
            params += list(self.repa.projector.parameters())
        opt = adamw(
            params,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            fused=cfg.fused_optimizer,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
        )
        if self.repa is not None and self.dist.enabled:  # the projector is outside DDP: the same start and
            self.repa.share_first_process_weights(self.dist)  # averaged gradients on every process
            opt.register_step_pre_hook(lambda *_: self.repa.average_gradients(self.dist))
        return opt

    # ------------------------------------------------------------------ resume
    def _load(self, path: Path, state: dict) -> None:
        if state["config"] != self.model.config.to_dict():
            diff = {
                k: (v, self.model.config.to_dict().get(k))
                for k, v in state["config"].items()
                if self.model.config.to_dict().get(k) != v
            }
            raise ValueError(
                f"{path} holds a different model than this run's config: {diff} (checkpoint, run)"
            )
        fused = [group.get("fused") for group in self.opt.param_groups]
        if "dcp" in state or self.parallel.sharded:  # a distributed set, or any checkpoint into shards
            load_states(state, self.model, self.ema.model, self.opt)
        else:
            # a file's content is checked like any input: a wrong entry is named, never a torch traceback
            load_state_dict_checked(self.model, state["model"], source=str(path))
            load_state_dict_checked(self.ema.model, state["ema"], source=f"{path} (its EMA)")
            try:
                self.opt.load_state_dict(state["opt"])
            except (ValueError, KeyError, TypeError, AttributeError, IndexError, RuntimeError) as err:
                raise CorruptCheckpointError(
                    f"{path} holds a training state this run cannot load ({err.__class__.__name__}: {err}); "
                    "the file is corrupt or was edited: resume from an earlier checkpoint"
                ) from err
        for name, part in (("repa", self.repa), ("posthoc_ema", self.posthoc)):
            if part is not None:
                if name not in state:
                    raise ValueError(
                        f"{path} was written without {name}; resume it with the options it ran with"
                    )
                part.load_trainable_state(state[name])
        for group, flag in zip(self.opt.param_groups, fused):  # this run's kernel choice, not the saved one
            group["fused"] = flag
        self.step = int(state["step"])
        if self.step > self.total_steps:  # never "continue" a run that is already past this one's end
            raise ValueError(
                f"{path} is at step {self.step}, past this run's {self.total_steps} steps: ask for more "
                "steps (--steps), or start a new run with --overwrite or another --out"
            )
        if "rng" in state:
            torch.set_rng_state(state["rng"])
        self.guard.load_state_dict(state.get("guard"))
        if self.guard.read().streak == 0:  # the step before it was finite: a state to roll back to
            self.guard.good_checkpoint = Path(path)
        self.resumed_from = Path(path)

    def prepare_folder(self) -> None:
        """Before the first write. A new run: refuse a folder holding another run, or (overwrite) move that
        run's files aside. A continued run: move aside its checkpoints past the resumed step, a history this
        run replaces (else retention or a later `--resume auto` could take them for this run's). First of all:
        take the folder's lock, then delete the temporary files a killed writer left there."""
        if self.dist.is_main:
            self.lock = RunLock.acquire(self.out, force=self.force)
            for folder in (self.out, checkpoint_dir(self.out)):
                for orphan in remove_orphan_temp_files(folder):
                    self._note(f"removed {orphan}, the unfinished write of an earlier process")
        here = checkpoint_dir(self.out).resolve()
        if self.resumed_from is not None and self.resumed_from.resolve().parent == here:
            newer = [path for step, path in list_checkpoints(self.out) if step > self.step]
            # and post-hoc EMA snapshots past it: `ditlab ema` must not mix in the replaced history
            newer += [path for path, step, _ in list_snapshots(snapshot_dir(self.out)) if step > self.step]
            if self.dist.is_main and newer:
                dest = move_aside(self.out, newer)
                self._note(f"moved {len(newer)} checkpoint(s) past the resumed step {self.step} to {dest}/")
        else:
            # "auto" with nothing to resume: the config.json and metrics.jsonl of a run killed before its
            # first checkpoint are that run's own, which the caller asked to continue
            ignore = ("config.json", "metrics.jsonl") if self.resume == "auto" else ()
            check_run_folder(self.out, self.overwrite, ignore)  # every rank: all of them raise, none hangs
            if self.dist.is_main and self.overwrite:
                dest = move_previous_run_aside(self.out)
                if dest is not None:
                    self._note(f"{self.out} held an earlier run: moved its files to {dest}/, starting clean")
        D.barrier(self.dist)

    def runtime_record(self) -> dict:
        """Where this run ran: device, threads, processes, the precision chosen and why, native bf16."""
        return {
            "device": str(self.device),
            "threads": self.threads,
            "world_size": self.dist.world_size,
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "bf16_speedup": self.bf16_speedup,  # measured at start-up when it decided the precision, else None
            "native_bf16": native_bf16() if self.device.type == "cpu" else None,
            "torch": torch.__version__,
        }

    def _note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)  # stderr: stdout stays the summary JSON

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "args": self.cfg.to_dict(),
            "config": self.model.config.to_dict(),
            "objective": self.spec.to_dict(),
            "step": self.step,
            "rng": torch.get_rng_state(),
            **({"repa": self.repa.trainable_state()} if self.repa is not None else {}),
            **({"posthoc_ema": self.posthoc.trainable_state()} if self.posthoc is not None else {}),
            "guard": self.guard.state_dict(self.guard.read()),
        }

    def save_checkpoint(self, periodic: bool = False) -> Path | None:
        """Write the training state. A `periodic` checkpoint is skipped while a run of non-finite steps
        lasts: the weights are still those of its start, and the rollback target stays the last good one."""
        reading = self.guard.read()  # the state_dict copies below synchronise anyway
        if periodic and reading.streak > 0:
            return None
        if self.parallel.sharded:  # every rank writes its shards (ditlab.train.dcp)
            meta = {k: v for k, v in self.state().items() if k not in ("model", "ema", "opt")}
            path = save_distributed_state(
                self.out, meta, self.model, self.ema.model, self.opt, self.dist, self.cfg.keep_last
            )
            if reading.streak == 0:
                self.guard.good_checkpoint = path
            return path
        path = None
        if self.dist.is_main:
            path = save_training_state(self.out, self.state(), keep_last=self.cfg.keep_last)
        D.barrier(self.dist)
        if reading.streak == 0:
            self.guard.good_checkpoint = checkpoint_dir(self.out) / f"{self.step:07d}.pt"
        return path

    def check_nonfinite(self, log: MetricsLog | None) -> bool:
        """Act on a run of `nonfinite_patience` non-finite steps: roll back (True: the step went back) or stop
        (TrainingDivergedError). Called where the loop synchronises anyway (logging, checkpoints)."""
        reading = self.guard.read()
        if not self.guard.tripped(reading):
            return False
        guard, at = self.guard, self.step
        if guard.action == "stop":
            raise TrainingDivergedError(guard.stop_message(reading, at, "and --nonfinite-action is stop"))
        if guard.rollbacks >= guard.max_rollbacks:
            why = f"after {guard.rollbacks} rollback(s) (--nonfinite-max-rollbacks)"
            raise TrainingDivergedError(guard.stop_message(reading, at, why))
        target = guard.good_checkpoint
        if target is None or not target.is_file():
            raise TrainingDivergedError(
                guard.stop_message(reading, at, "and no good checkpoint to roll back to")
            )
        lr_scale, rollbacks = guard.lr_scale * guard.lr_factor, guard.rollbacks + 1
        self._load(target, load_training_state(target))
        guard.lr_scale, guard.rollbacks = lr_scale, rollbacks
        guard.reset_streak()
        newer = [path for step, path in list_checkpoints(self.out) if step > self.step]
        if self.dist.is_main:
            move_aside(self.out, newer)  # written during the streak: not this run's history any more
            event = {
                "step": self.step,
                "event": "rollback",
                "from_step": at,
                "nonfinite_streak": reading.streak,
            }
            event.update(lr=self.cfg.lr * lr_scale, lr_scale=lr_scale, rollbacks=rollbacks)
            self._note(
                f"non-finite loss/gradient for {reading.streak} steps: rolled back from step {at} to "
                f"{target} with the learning rate times {lr_scale:g}"
            )
            if log is not None:
                log.truncate(self.step)
                log.log(event)
        D.barrier(self.dist)
        return True

    def _example_inputs(self):
        x0, y, t, _, drop = self.batch_for_step(self.step)
        kwargs = self.conditioning(self.step, y, drop)
        kwargs.update(self.layout_kwargs(self.step), **self.reference_kwargs(self.step, x0))
        return x0, self.objective.model_time(t) if hasattr(self.objective, "model_time") else t, kwargs

    # ------------------------------------------------------------------ one step
    def batch_index(self, step: int) -> torch.Tensor:
        """The (B,) data indices of the global batch of `step` (a shuffle per epoch, seeded)."""
        return step_indices(len(self.data), self.cfg.batch_size, self.cfg.seed, step)  # the loader's own

    def layout_kwargs(self, step: int) -> dict:
        """Layout runs: {"layout": this rank's (B, H, W) labels of `step`}, the dropped ones all-zero one-hot
        maps (the empty layout); a float map then. {} for other runs."""
        if self.layouts is None:
            return {}
        B = self.cfg.batch_size
        labels = self.layouts[self.batch_index(step)].long()
        layout = torch.nn.functional.one_hot(labels, NUM_LAYOUT_CLASSES).permute(0, 3, 1, 2).float()
        g = step_generator(self.cfg.seed + 1, step)  # its own stream: the other draws stay as they were
        keep = torch.rand(B, generator=g) >= self.cfg.layout_dropout
        layout = layout * keep[:, None, None, None]
        r, W = self.dist.rank, self.dist.world_size
        return {"layout": layout[r * B // W : (r + 1) * B // W].to(self.device)}

    def reference_kwargs(self, step: int, x0: torch.Tensor) -> dict:
        """Reference runs: {"reference": this rank's images x0 of `step` (their AdaIN statistics are the
        condition a reference image gives at sampling time), "reference_keep": (B,) bools, False for the
        `reference_dropout` share trained on the null reference (for guidance)}; {} for other runs."""
        if self.cfg.condition != "reference":
            return {}
        B = self.cfg.batch_size
        g = step_generator(self.cfg.seed + 2, step)  # its own stream, as the layout dropout's
        keep = torch.rand(B, generator=g) >= self.cfg.reference_dropout
        return {"reference": x0, "reference_keep": keep[self.part].to(self.device)}

    def batch_for_step(self, step: int):
        """(x0, y, t, noise, drop) of this rank for `step`, all derived from (seed, step): the images from the
        step's slice of the epoch's permutation (`ditlab.data.loader`), flips, timesteps, noise and label
        drops from `step_generator`, drawn for the whole global batch so every rank keeps its part of one
        draw."""
        cfg, B = self.cfg, self.cfg.batch_size
        g = step_generator(cfg.seed, step)
        x0, y = self.batches.get(step, g)  # this rank's part (B / world, C, H, W) in [-1, 1]; flips from g
        t = self.objective.sample_timesteps(B, "cpu", g)
        noise = torch.randn((B, *x0.shape[1:]), generator=g)
        drop = (torch.rand(B, generator=g) < self.model.config.class_dropout_prob).long()
        return [v.to(self.device) for v in (x0, y, t[self.part], noise[self.part], drop[self.part])]

    def compute_loss(self, x0, model_kwargs, t, noise) -> dict:
        """Per-sample loss terms ("loss" (N,), plus e.g. "mse", "vb") of one batch; subclasses may add terms
        (DyDiT adds the complete-model loss and the FLOPs constraint; REPA, when on, adds "repa")."""

        def objective_loss():
            return self.objective.loss(self.net, x0, model_kwargs=model_kwargs, t=t, noise=noise)

        return objective_loss() if self.repa is None else self.repa.loss(x0, objective_loss)

    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        return lr_at(step, self.total_steps, cfg.lr, cfg.lr_schedule, cfg.warmup_steps, cfg.lr_min)

    def update_posthoc_ema(self) -> None:
        """After the EMA update of step `self.step` (0-based): the power-EMA profiles, and every
        `posthoc_ema_every` steps their snapshot into ema-snapshots/ (ditlab.train.posthoc_ema)."""
        if self.posthoc is None:
            return
        done = self.step + 1
        self.posthoc.update(self.model, done)
        if done % self.cfg.posthoc_ema_every == 0 and (self.parallel.sharded or self.dist.is_main):
            # sharded profiles are gathered by every rank; rank 0 writes
            self.posthoc.save_snapshot(snapshot_dir(self.out), done, write=self.dist.is_main)

    def train_step(self) -> dict:
        cfg = self.cfg
        lr = self.lr_at(self.step) * self.guard.lr_scale
        for group in self.opt.param_groups:
            group["lr"] = lr
        x0, y, t, noise, drop = self.batch_for_step(self.step)
        kwargs = self.conditioning(self.step, y, drop)
        kwargs.update(self.layout_kwargs(self.step), **self.reference_kwargs(self.step, x0))
        with autocast(self.device, self.precision):
            terms = self.compute_loss(x0, kwargs, t, noise)
        loss = terms["loss"].float().mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float("inf"))  # norm only
        grad_norm = full_value(grad_norm)  # sharded gradients give a DTensor norm
        # a NaN/Inf loss or gradient changes nothing: the update and the EMA step are skipped on the device
        ok = self.guard.finite(loss, grad_norm, self.dist)
        if skip_if_not_finite(self.opt, ok):
            self.opt.step()
        self.ema.update(self.model, self.step, apply=ok)
        self.update_posthoc_ema()  # a skipped step left the weights as they were: nothing non-finite enters
        self.guard.observe(ok, self.step)
        self.step += 1
        out = {"loss": loss.detach(), "grad_norm": grad_norm.detach(), "lr": lr, "nonfinite_steps": ~ok}
        for key, value in terms.items():
            if key != "loss" and torch.is_tensor(value):
                out[key] = value.float().mean().detach()
        return out

    # ------------------------------------------------------------------ outputs
    def write_samples(self, name: str | None = None, model=None) -> Path | None:
        """A grid from the EMA model (or `model`): one row per class (up to 10) or per fixed prompt (text
        runs), 8 samples each. Every rank calls it (a sharded EMA is gathered first); rank 0 writes."""
        model = model if model is not None else self.parallel.gather(self.ema.model)
        if not self.dist.is_main:
            return None
        classes = list(range(min(model.num_classes, 10))) or None
        per_class = 8 if classes or self.text is not None else 32
        layouts = None if self.layouts is None else self.layouts[:per_class].long()  # the first masks
        # reference runs: the first step's images (this rank's) as the references of the grid's columns
        references = self.batch_for_step(0)[0][:per_class] if self.cfg.condition == "reference" else None
        text = {"prompts": self.sample_prompts(), "text_encoder": self.text} if self.text is not None else {}
        images, _ = generate(
            model,
            layouts=layouts,
            references=references,
            **text,
            classes=classes,
            per_class=per_class,
            **self.generate_settings(),
            seed=self.cfg.seed,
            vae=self.autoencoder,
            device=self.device,
        )
        return save_grid(images, self.out / (name or f"samples_{self.step:07d}.png"), nrow=per_class)

    def run(self) -> dict:
        """Train to `total_steps` (see the module docstring); the folder's lock is held throughout."""
        try:
            return self._run()
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def _run(self) -> dict:
        cfg, main = self.cfg, self.dist.is_main
        self.prepare_folder()
        if main:
            if self.resumed_from is not None:
                self._note(f"resuming from {self.resumed_from} (step {self.step})")
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
            atomic_write_text(self.out / "runtime.json", json.dumps(self.runtime_record(), indent=2) + "\n")
            self._note(f"precision {self.precision}: {self.precision_reason}")
        log = (
            MetricsLog(self.out / "metrics.jsonl", resume_step=self.step if self.resumed_from else None)
            if main
            else None
        )
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not (main and cfg.progress),
            desc=f"train {cfg.model}",
            dynamic_ncols=True,
        )
        start_step, t_start = self.step, time.perf_counter()
        t_log, window, last = time.perf_counter(), [], {}
        self.stop = StopFlag(self.dist, cfg.max_time, self.device).install()  # SIGTERM, SIGUSR1, --max-time
        try:
            while self.step < self.total_steps:
                window.append(self.train_step())
                bar.update(1)
                done = self.step
                at_log = done % cfg.log_every == 0 or done == self.total_steps
                if (at_log or done % cfg.ckpt_every == 0) and self.check_nonfinite(log):
                    bar.n, window, t_log = self.step, [], time.perf_counter()  # rolled back
                    continue
                if at_log:
                    last = self._log(window, time.perf_counter() - t_log, log, bar)
                    window, t_log = [], time.perf_counter()
                t_aside = time.perf_counter()
                if cfg.eval_every and done % cfg.eval_every == 0:
                    self._evaluate(log)
                if cfg.sample_every and done % cfg.sample_every == 0:
                    self.write_samples()
                if done % cfg.ckpt_every == 0 and done != self.total_steps:
                    self.save_checkpoint(periodic=True)
                t_log += time.perf_counter() - t_aside  # step rates count training steps only
                if (reason := self.stop.should_stop()) and self.step < self.total_steps:  # all ranks agree
                    raise Preempted(self.step, reason, self.save_checkpoint())
        except KeyboardInterrupt:  # keep the work done so far: `--resume auto` continues from here
            if main:
                bar.write(f"interrupted at step {self.step}; writing a checkpoint to resume from")
            self.save_checkpoint()
            raise
        finally:
            bar.close()
            self.stop.uninstall()
        ckpt = self.save_checkpoint()
        summary = {
            "step": self.step,
            "seconds": time.perf_counter() - t_start,
            "steps_run": self.step - start_step,
        }
        summary.update({k: v for k, v in last.items() if k in ("loss", "mse", "vb")})
        final = self.final_model()
        if main:
            summary.update(checkpoint=str(ckpt), **self.write_outputs(final))
            log.close()
        self.leave_process_group()
        return summary

    def leave_process_group(self) -> None:
        """The end of a multi-process run: drop what holds the process group (the DDP wrapper's Reducer, the
        parallel layout's mesh) while the group is still registered, then destroy it. Left to the garbage
        collector, the Reducer would free the last reference of gloo's process group while holding the GIL,
        and its destructor joins worker threads that may need the GIL to free a finished collective's tensors:
        a hang, or a SIGABRT at exit (pytorch/pytorch#56297). Destroyed through its own binding it releases
        the GIL first."""
        if not self.dist.enabled:
            return
        for name in self.process_group_holders:
            if hasattr(self, name):
                setattr(self, name, None)
        gc.collect()  # the wrappers' reference cycles go now, not at some later collection
        D.shutdown(self.dist)

    def write_outputs(self, final) -> dict:
        """The end of a run (main process): the final EMA model `final` (gathered whole), loss curves and
        samples; their paths."""
        cfg = self.cfg
        save_model(final, self.out / "model.safetensors", objective=self.spec.to_dict())
        plot_curves(self.out / "metrics.jsonl", self.out / "loss.png", title=f"{cfg.model} on {cfg.data}")
        grid = self.write_samples("samples.png", model=final)
        return {"model": str(self.out / "model.safetensors"), "samples": str(grid)}

    def _log(self, window: list[dict], seconds: float, log: MetricsLog | None, bar) -> dict:
        record = {"step": self.step}
        for key in window[0]:
            values = torch.stack([torch.as_tensor(w[key], dtype=torch.float32) for w in window])
            if key == "nonfinite_steps":  # a count: the skipped steps of this window (the same on every rank)
                record[key] = int(values.sum())
                continue
            finite = values[torch.isfinite(values)]  # the skipped steps' NaN leave the averages alone
            mean = finite.mean() if len(finite) else values.mean()
            record[key] = float(D.mean_across_ranks(mean, self.dist))
        steps_per_s = len(window) / max(seconds, 1e-9)
        record["step_seconds"] = seconds  # this window's training time (evaluations and checkpoints excluded)
        record["steps_per_s"] = steps_per_s
        record["img_per_s"] = steps_per_s * self.cfg.batch_size
        # forward + backward ≈ 3 forwards, 2 FLOPs per multiply-add, over all ranks' devices
        achieved = 6 * self.gflops_per_image * record["img_per_s"]
        record["gflop_per_s"] = achieved
        per_device = achieved / self.dist.world_size
        if per_device > self.peak:  # the start-up measurement caught a busy machine (or bf16 beats fp32)
            # what this run just achieved is itself a lower bound on the peak: MFU stays <= 1 and the
            # re-measurement is not repeated every window while throughput sits at the new value
            self.peak = max(self.peak, matmul_peak_gflops(self.device.type), per_device)
        record["mfu"] = achieved / (self.peak * self.dist.world_size)
        if log is not None:
            log.log(record)
            bar.set_postfix(
                loss=f"{record['loss']:.4f}", img_s=f"{record['img_per_s']:.0f}", mfu=f"{record['mfu']:.0%}"
            )
        return record

    def _evaluate(self, log: MetricsLog | None) -> None:
        """`--eval-every`: FD of EMA samples against `eval_ref` (default: the data's test split); text runs
        sample the fixed `eval_prompts`, and on shapes also grade them with the shapes evaluator."""
        model = self.parallel.gather(self.ema.model)
        if self.dist.is_main and self.text is not None:
            start = time.perf_counter()
            record = self._evaluate_text(model)
            if log is not None:
                log.log({"step": self.step, **record, "eval_seconds": time.perf_counter() - start})
        elif self.dist.is_main:
            cfg, start = self.cfg, time.perf_counter()
            result = evaluate_model(
                model,
                cfg.eval_samples,
                ref=self.eval_reference(),
                features=parse_features(cfg.eval_features),
                **self.generate_settings(),
                seed=cfg.seed + 12345,  # fixed noise across evaluations: the curve shows the model
                device=self.device,
                floor=False,
                resize_ref=True,  # a run at --image-size is compared with its test split resized alike
                vae=self.autoencoder,  # latent runs: FD on decoded images
            )
            if log is not None:
                log.log({"step": self.step, **fd_record(result), "eval_seconds": time.perf_counter() - start})
        D.barrier(self.dist)

    def _evaluate_text(self, model) -> dict:
        """A text run's evaluation of `model` (the gathered EMA): FD of samples of the data's prompts, plus
        shapes accuracies on shapes."""
        cfg = self.cfg
        prompts = self.eval_prompts(cfg.eval_samples)
        images, _ = generate(
            model,
            prompts=prompts,
            text_encoder=self.text,
            **self.generate_settings(),
            seed=cfg.seed + 12345,  # fixed noise across evaluations: the curve shows the model
            batch_size=250,
            device=self.device,
        )
        ref = self.eval_reference()
        result = evaluate(
            images, ref=ref, features=parse_features(cfg.eval_features), floor=False, resize_ref=True
        )
        record = fd_record(result)
        if self.data.name.startswith("shapes"):
            report = evaluate_shapes(images, prompts)
            record["shapes_accuracy"] = report["accuracy"]
            record["shapes_single_seen"] = report["single"]["seen"]["accuracy"]
            record["shapes_two_seen"] = report["two"]["seen"]["accuracy"]
        return record


def compile_or_eager(model, example=None, train: bool = False):
    """torch.compile the model if it compiles and runs here, otherwise the eager model, with a warning: a
    missing or broken compiler never fails a run, but a broken model does.

    With `example` = (x, t, kwargs), the eager model runs it first, the way the model will be used
    (`train=True`: a forward and backward in training mode, the graphs a training step needs; else a no-grad
    forward): an error there is the model's (or the inputs'), and is raised as it is. Then the compiled model
    runs it: an error only there is the compiler's or its backend's, and falls back to eager. The gradients
    the checks leave are dropped.
    """
    try:
        if example is not None:
            _run_example(model, example, train)  # a model bug raises here, before any compiler is involved
        try:
            compiled = torch.compile(model)
            if example is not None:
                _run_example(compiled, example, train)
        except Exception as err:  # noqa: BLE001 - the eager model ran: any failure left is the backend's
            warnings.warn(
                f"torch.compile failed ({err.__class__.__name__}: {err}); running eagerly", stacklevel=2
            )
            return model
        return compiled
    finally:
        for p in model.parameters():
            p.grad = None


def _run_example(net, example, train: bool) -> None:
    x, t, kwargs = example
    if train:
        net(x, t, **kwargs).float().square().mean().backward()
    else:
        with torch.no_grad():
            net(x, t, **kwargs)


def adamw(
    params,
    lr: float,
    weight_decay: float = 0.0,
    fused: bool = True,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.AdamW:
    """AdamW, by default with DiT's betas (0.9, 0.999) (LightningDiT: β2 = 0.95). `fused` picks torch's
    single-kernel implementation where the device has one (CPU and CUDA do): on a CPU torch's default is a Python loop over the parameters, slower
    for DiT-S/2's 33M parameters; results agree to rounding (tests/test_speed_paths.py checks it)."""
    params = list(params)
    if fused:
        try:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, fused=True)
        except RuntimeError:  # a device or dtype without the fused kernel
            pass
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)


def train(
    cfg: TrainConfig, resume: str | Path | None = None, overwrite: bool = False, force: bool = False
) -> dict:
    """Run (or resume) a training run; returns a summary (final step, loss, paths, seconds). See Trainer
    for `resume`, `overwrite` and `force`."""
    return Trainer(cfg, resume=resume, overwrite=overwrite, force=force).run()


__all__ = ["Trainer", "train", "step_generator", "compile_or_eager", "adamw"]
