"""The `ditlab serve` page: a Gradio Blocks app over a `Catalog` of checkpoints.

The page holds no sampling logic: a click builds a `SampleRequest` from the page's values and hands it to
`ditlab.serve.requests.sample_request` (which checks it and calls `ditlab.generate`); a ValueError from there
becomes a message box on the page (`gr.Error`), never a stack trace. The sampler's per-step callback drives
the page's progress bar. One conditioning component per field of `requests.CONDITION_FIELDS`, shown only for
the models that take it. `launch` queues every event with concurrency 1: two clicks never sample at once.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import gradio as gr

from ditlab.serve.catalog import Catalog
from ditlab.serve.requests import (
    CONDITION_FIELDS,
    MAX_GUIDANCE,
    MAX_SEED,
    Limits,
    SampleRequest,
    class_choices,
    sample_request,
    samplers_of,
)

# Small images (8x8 digits) are enlarged on the page without blurring; the files keep their pixels.
CSS = "#grid img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"
QUEUE_SIZE = 16  # clicks waiting beyond this are told the queue is full
KEEP_RESULTS = 4  # request folders kept on disk (Gradio serves its own copy of each result)


def describe(name: str, model) -> str:
    """One line about the model picked: data, size, conditioning."""
    spec = getattr(model, "data_spec", None) or {}
    h, w = model.config.image_hw
    data = f"trained on {spec['name']}, " if spec.get("name") else ""
    kind = f"{model.num_classes} classes" if model.num_classes else "unconditional"
    return f"**{name}**: {data}{h}x{w} images, {model.in_channels} channel(s), {kind}"


# --------------------------------------------------------------------------- one component per condition field
def _class_component(model) -> gr.Dropdown:
    choices = class_choices(model)
    return gr.Dropdown(
        choices,
        value=choices[0][1] if choices else None,
        label="Class",
        visible=bool(choices),
        elem_id="class",
    )


def _class_update(model) -> dict:
    choices = class_choices(model)
    return gr.update(choices=choices, value=choices[0][1] if choices else None, visible=bool(choices))


# name -> (build the component for a model, update it when another model is picked)
FIELD_COMPONENTS = {"class": (_class_component, _class_update)}


def _sampler_update(model) -> dict:
    samplers = samplers_of(model)
    return gr.update(choices=samplers, value=samplers[0])


# --------------------------------------------------------------------------- the app
def _whole_slider(maximum: int, default: int, label: str, elem_id: str) -> gr.Slider:
    """A slider of whole numbers 1..maximum starting at `default` (or at the maximum when that is lower)."""
    return gr.Slider(1, maximum, value=min(default, maximum), step=1, label=label, elem_id=elem_id)


def build_app(catalog: Catalog, limits: Limits, out_dir: str | Path | None = None, vae=None) -> gr.Blocks:
    """The Blocks app; results are written under `out_dir` (default: a new temporary folder); `vae` decodes
    the latent models' samples."""
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="ditlab-serve-"))
    first = catalog.names[0]
    model = catalog.model(first)  # a checkpoint that does not load fails here, before the page is up
    with gr.Blocks(title="ditlab serve", analytics_enabled=False, delete_cache=(600, 3600)) as app:
        gr.Markdown("## ditlab: sample a Diffusion Transformer")
        with gr.Row():
            with gr.Column():
                picked = gr.Dropdown(
                    catalog.names,
                    value=first,
                    label="Model",
                    interactive=len(catalog.names) > 1,
                    elem_id="model",
                )
                about = gr.Markdown(describe(first, model))
                conditions = {
                    field.name: FIELD_COMPONENTS[field.name][0](model) for field in CONDITION_FIELDS
                }
                samplers = samplers_of(model)
                sampler = gr.Dropdown(samplers, value=samplers[0], label="Sampler", elem_id="sampler")
                steps = _whole_slider(limits.max_steps, 50, "Steps", "steps")
                guidance = gr.Slider(
                    0, MAX_GUIDANCE, value=1.0, step=0.5, label="Guidance scale (1 = off)", elem_id="guidance"
                )
                seed = gr.Number(0, precision=0, label=f"Seed (0 to {MAX_SEED})", elem_id="seed")
                count = _whole_slider(limits.max_images, 8, "Images", "count")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                grid = gr.Image(
                    label="Samples", type="filepath", interactive=False, height=320, elem_id="grid"
                )
                files = gr.File(label="Download (PNG grid, ADM .npz)", interactive=False, elem_id="files")
                summary = gr.Markdown(elem_id="summary")

        def on_model(name):
            try:
                chosen = catalog.model(name)
            except (ValueError, OSError) as err:
                raise gr.Error(str(err)) from err
            updates = [FIELD_COMPONENTS[field.name][1](chosen) for field in CONDITION_FIELDS]
            return describe(name, chosen), _sampler_update(chosen), *updates

        picked.change(on_model, inputs=picked, outputs=[about, sampler, *conditions.values()])

        inputs = {picked, sampler, steps, guidance, seed, count, *conditions.values()}

        def on_generate(values: dict, progress=gr.Progress()):  # noqa: B008  Gradio finds its tracker here
            request = SampleRequest(
                sampler=values[sampler],
                steps=values[steps],
                guidance_scale=values[guidance],
                seed=values[seed],
                num_images=values[count],
                conditions={name: values[component] for name, component in conditions.items()},
            )
            progress(0, desc="loading the model")
            try:
                chosen = catalog.model(values[picked])
                result = sample_request(
                    chosen,
                    values[picked],
                    request,
                    limits,
                    _request_dir(out_dir),
                    on_step=lambda done, total: progress(
                        min(done / total, 1.0), desc=f"step {done} of {total}"
                    ),
                    vae=vae,
                )
            except (ValueError, TypeError, OSError) as err:  # bad input: a message on the page
                raise gr.Error(str(err)) from err
            text = f"{result.images} image(s), seed {request.seed}: `{result.grid.name}`, `{result.npz.name}`"
            return str(result.grid), [str(result.grid), str(result.npz)], text

        button.click(on_generate, inputs=inputs, outputs=[grid, files, summary])
    app.ditlab_out_dir = out_dir  # `launch` lets Gradio serve the results from here
    return app


def _request_dir(out_dir: Path) -> Path:
    """A fresh folder for one request's files; the oldest beyond KEEP_RESULTS are removed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    old = sorted(out_dir.glob("request-*"), key=lambda p: p.stat().st_mtime)
    for folder in old[: max(0, len(old) - KEEP_RESULTS + 1)]:
        shutil.rmtree(folder, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix="request-", dir=out_dir))


def launch(
    app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, quiet: bool = False, block: bool = True
):
    """Serve `app` (until interrupted, or in the background with block=False: stop it with `app.close()`):
    every event queued with concurrency 1, so two clicks never sample at once; no telemetry."""
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    app.launch(
        server_name=host,
        server_port=port,
        share=False,
        show_error=False,  # an unexpected failure shows "Error", its traceback stays in the server's log
        ssr_mode=False,
        mcp_server=False,
        quiet=quiet,
        prevent_thread_lock=not block,
        allowed_paths=[str(app.ditlab_out_dir)],
        footer_links=[],
        css=CSS,
    )
