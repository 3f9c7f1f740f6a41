"""DyDiT: timestep-wise dynamic width and spatial-wise dynamic tokens for a trained DiT, with deployment that
really runs a smaller network (sliced weights per timestep, MLP on gathered tokens).

    model = DyDiT.from_dit(ditlab.load_model("dit.safetensors"))      # or: ditlab finetune --method dydit
    export_dydit(model, "deploy.safetensors", timesteps=range(999, -1, -20))
    model = load_dydit("deploy.safetensors")                          # sample with ditlab.sample as usual
"""

from ditlab.dydit.checkpoint import export_dydit, is_dydit_file, load_dydit, save_dydit
from ditlab.dydit.flops import dynamic_flop_breakdown
from ditlab.dydit.importance import reorder_by_importance
from ditlab.dydit.model import DyDiT, DyDiTOptions, calibrate_token_routers

__all__ = [
    "DyDiT",
    "DyDiTOptions",
    "calibrate_token_routers",
    "dynamic_flop_breakdown",
    "export_dydit",
    "is_dydit_file",
    "load_dydit",
    "reorder_by_importance",
    "save_dydit",
]
