"""The `ditlab` command line: sub-commands, --version, every --help, and the shared flag vocabulary.

Parse-level tests: nothing here trains or samples, so the whole file runs in a few seconds.
"""

import argparse
import re
import shlex
from pathlib import Path

import pytest
import torch

import ditlab
from ditlab import cli
from ditlab.cli import COMMANDS, build_parser, main
from ditlab.cli_args import VAE_DIR_ENV, ListAction, vae_folder
from ditlab.models.zoo import VARIANT_GROUPS, VARIANTS, expand_variants
from ditlab.sampling_cli import checkpoint_of
from ditlab.train.cli import config_from_args


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def parse(*argv: str) -> argparse.Namespace:
    """`ditlab ARGV...` parsed (not run) by the real parser."""
    return build_parser([argv[0]]).parse_args(list(argv))


def _action_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser.formatter_class(prog=parser.prog, width=100_000)  # one line: no wrap inside names
    formatter.add_arguments([action])
    return " ".join(formatter.format_help().split())


ALL = build_parser(COMMANDS)  # every command's flags
FLAG_ACTIONS = [
    pytest.param(sub, action, id=f"{name} {action.option_strings[0]}")
    for name, sub in _subparsers(ALL).items()
    for action in sub._actions
    if action.option_strings
    and action.help is not argparse.SUPPRESS
    and not isinstance(action, argparse._HelpAction)
]


# ---------------------------------------------------------------------------------------------- top level
def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"ditlab {ditlab.__version__}"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_help_exits_0_with_its_example(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: ditlab {name}" in out
    assert f"example:\n  {COMMANDS[name].example}" in out
    assert COMMANDS[name].example.startswith(f"ditlab {name}")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_example_parses_with_the_current_flags(name):
    argv = shlex.split(COMMANDS[name].example)[1:]
    args = parse(*argv)
    assert args.command == name and callable(args._run)


def test_top_level_help_lists_commands_without_importing_them(monkeypatch, capsys):
    imported = []
    real = cli.importlib.import_module
    monkeypatch.setattr(cli.importlib, "import_module", lambda m: imported.append(m) or real(m))
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and imported == []
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS) and "--version" in out
    with pytest.raises(SystemExit):
        main(["flops", "--help"])
    assert imported == ["ditlab.models.flops_cli"]  # only the chosen command's module


def test_no_command_and_unknown_command(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["trian", "--data", "digits"])
    assert exit_.value.code == 2
    assert "invalid choice: 'trian'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- help text
@pytest.mark.parametrize("sub,action", FLAG_ACTIONS)
def test_flag_help_says_more_than_the_flag_name_and_shows_its_default_once(sub, action):
    assert action.help, f"{action.option_strings[0]} has no help"
    text = _action_help(sub, action)
    described = re.sub(r"\(default:[^)]*\)", "", text.split(None, 1)[1] if " " in text else "")
    help_words = set(re.findall(r"[a-z0-9]+", action.help.lower()))
    name_words = set(re.findall(r"[a-z0-9]+", " ".join([action.dest, *action.option_strings]).lower()))
    assert help_words - name_words - {"default", "no"}, f"{action.option_strings[0]}: help {action.help!r}"
    assert described.strip()
    assert text.count("default") <= 1, text
    assert "default: None" not in text and "(default: )" not in text, text


@pytest.mark.parametrize("sub,action", [p for p in FLAG_ACTIONS if p.values[1].choices is not None])
def test_choice_flags_show_their_choices(sub, action):
    text = _action_help(sub, action)
    assert all(str(choice) in text for choice in action.choices), text


def test_train_lists_choices_for_its_registry_flags():
    train = _subparsers(build_parser(["train"]))["train"]
    with_choices = {a.dest for a in train._actions if a.choices is not None}
    wanted = {"sampler", "schedule", "objective", "timestep_sampling", "precision", "variant"}
    assert wanted <= with_choices
    variant = next(a for a in train._actions if a.dest == "variant")
    assert set(variant.choices) == set(VARIANTS)


def test_image_size_prints_one_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    line = out[out.index("--image-size PX") :].split("--channels")[0]
    assert line.count("default") == 1 and "data's own size" in line


# ---------------------------------------------------------------------------------------------- aliases
ALIASES = [
    # command, canonical flag, alias, value, dest, parsed value
    ("train", "--train-steps", "--steps", "5", "steps", 5),
    ("train", "--out", "--results-dir", "runs/x", "out", "runs/x"),
    ("train", "--batch-size", "--global-batch-size", "8", "batch_size", 8),
    ("train", "--seed", "--global-seed", "3", "seed", 3),
    ("train", "--guidance-scale", "--cfg-scale", "4.0", "guidance_scale", 4.0),
    ("train", "--sample-steps", "--num-sampling-steps", "7", "sample_steps", 7),
    ("finetune", "--train-steps", "--steps", "5", "steps", 5),
    ("finetune", "--out", "--results-dir", "runs/x", "out", "runs/x"),
    ("finetune", "--batch-size", "--global-batch-size", "8", "batch_size", 8),
    ("sample", "--sample-steps", "--steps", "7", "sample_steps", 7),
    ("sample", "--sample-steps", "--num-sampling-steps", "250", "sample_steps", 250),
    ("sample", "--guidance-scale", "--cfg-scale", "4.0", "guidance_scale", 4.0),
    ("sample", "--seed", "--global-seed", "3", "seed", 3),
    ("demo", "--train-steps", "--steps", "20", "train_steps", 20),
    ("demo", "--out", "--results-dir", "d", "out", "d"),
    ("demo", "--sample-steps", "--num-sampling-steps", "4", "sample_steps", 4),
    ("demo", "--guidance-scale", "--cfg-scale", "2", "guidance_scale", 2.0),
]


@pytest.mark.parametrize("command,flag,alias,value,dest,parsed", ALIASES)
def test_alias_means_the_same_as_its_flag(command, flag, alias, value, dest, parsed):
    assert getattr(parse(command, flag, value), dest) == parsed
    assert getattr(parse(command, alias, value), dest) == parsed


def test_sample_takes_the_checkpoint_as_positional_or_ckpt(capsys):
    assert checkpoint_of(parse("sample", "m.safetensors")) == "m.safetensors"
    assert checkpoint_of(parse("sample", "--ckpt", "m.safetensors")) == "m.safetensors"
    for argv, message in (
        (["sample"], "which checkpoint"),
        (["sample", "a.pt", "--ckpt", "b.pt"], "not both"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "usage: ditlab sample" in err and message in err


def test_num_classes_is_the_label_embedders_size():
    cfg, _ = config_from_args(parse("train", "--train-steps", "1", "--num-classes", "10"))
    assert cfg.model_args == {"num_classes": 10}
    cfg, _ = config_from_args(parse("train", "--steps", "1", "--model-args", "depth=2", "--num-classes", "4"))
    assert cfg.model_args == {"depth": 2, "num_classes": 4}


@pytest.mark.parametrize("command", ["train", "finetune", "demo"])
def test_resume_bare_means_auto(command):
    assert parse(command, "--resume").resume == "auto"
    assert parse(command, "--resume", "auto").resume == "auto"
    assert (
        parse(command, "--resume", "runs/x/checkpoints/0000010.pt").resume == "runs/x/checkpoints/0000010.pt"
    )
    assert getattr(parse(command), "resume", None) is None


# ---------------------------------------------------------------------------------------------- list flags
@pytest.mark.parametrize(
    "argv",
    [["--classes", "1", "2", "3"], ["--classes", "1,2", "--classes", "3"], ["--classes", "1,2,3"]],
)
def test_list_flag_styles_agree(argv):
    assert parse("sample", "m.safetensors", *argv).classes == [1, 2, 3]


def test_list_flags_in_every_command_that_takes_lists():
    assert parse("eval", "--ref", "digits:test", "--features", "a", "b:c").features == ["a", "b:c"]
    assert parse("eval", "--ref", "r", "--features", "a,b:c").features == ["a", "b:c"]
    assert parse("eval", "--ref", "r", "--image-size", "32", "--image-size", "48").image_size == [32, 48]
    assert parse("flops", "DiT-S/2", "--variants").variants == ["all"]  # bare: every variant
    assert parse("flops", "--variants", "paper", "adaln-single").variants == ["paper", "adaln-single"]
    assert parse("flops", "--variants", "paper,adaln-single").variants == ["paper", "adaln-single"]
    cfg, _ = config_from_args(
        parse("train", "--steps", "1", "--eval-features", "a", "b", "--eval-features", "c")
    )
    assert cfg.eval_features == "a,b,c"  # the config keeps its comma-separated string


def test_list_flag_replaces_its_default_then_extends():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", action=ListAction, item=int, default=[0, 1])
    assert parser.parse_args([]).seeds == [0, 1]
    assert parser.parse_args(["--seeds", "5"]).seeds == [5]
    assert parser.parse_args(["--seeds", "5", "--seeds", "6,7"]).seeds == [5, 6, 7]


def test_list_flag_refuses_a_bad_item(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse("sample", "m.safetensors", "--classes", "1", "x")
    assert exit_.value.code == 2
    assert "--classes" in capsys.readouterr().err


def test_variant_groups_expand():
    assert expand_variants(["paper"]) == ["in-context", "cross-attention", "adaln", "adaln-zero"]
    assert expand_variants(["all"]) == list(VARIANTS)
    assert expand_variants(["adaln", "paper"]) == ["adaln", "in-context", "cross-attention", "adaln-zero"]
    assert set(VARIANT_GROUPS["paper"]) <= set(VARIANTS)
    with pytest.raises(ValueError, match="unknown variant 'adaln-one'.*paper, all"):
        expand_variants(["adaln-one"])


def _json_rows(capsys) -> list[dict]:
    import json

    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_flops_variants_and_image_size(capsys):
    assert main(["flops", "DiT-S/2", "--variants", "--json"]) == 0
    assert [r["variant"] for r in _json_rows(capsys)] == list(VARIANTS)
    assert main(["flops", "DiT-S/2", "--variants", "paper", "--json", "--image-size", "512"]) == 0
    rows = _json_rows(capsys)
    assert [r["variant"] for r in rows] == list(VARIANT_GROUPS["paper"])
    assert {r["input_size"] for r in rows} == {64}  # 512 px through the SD VAE's factor 8
    assert main(["flops", "DiT-S/2", "--image-size", "8", "--pixel-space", "--json"]) == 0
    assert _json_rows(capsys)[0]["input_size"] == 8
    assert (
        main(["flops", "DiT-S/2", "--input-size", "8", "--json"]) == 0
    )  # the old spelling keeps its meaning
    assert _json_rows(capsys)[0]["input_size"] == 8
    assert main(["flops", "DiT-S/2", "--json"]) == 0
    assert _json_rows(capsys)[0]["input_size"] == 32  # default 256 px


def test_flops_text_len_counts_a_recipes_caption_tokens(capsys):
    argv = ["flops", "MMDiT-Ti/4", "DiT-S/4", "--image-size", "32", "--pixel-space", "--json"]
    assert main(argv) == 0
    preset = {r["model"]: r["gflops"] for r in _json_rows(capsys)}
    assert main(argv + ["--text-len", "16"]) == 0
    short = {r["model"]: r["gflops"] for r in _json_rows(capsys)}
    assert short["MMDiT-Ti/4"] < preset["MMDiT-Ti/4"]  # 16 caption tokens instead of the preset's 32
    assert short["DiT-S/4"] == preset["DiT-S/4"]  # a class model reads no captions


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--variants", "DiT-XL/2"], "model names go before --variants"),
        (["DiT-S/2", "--image-size", "100"], "not a multiple of the VAE's 8"),
    ],
)
def test_flops_refuses_unclear_sizes_and_names(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["flops", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- validators
@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--train-steps", "-1"], "expected an integer >= 0"),
        (["train", "--batch-size", "0"], "expected a positive integer"),
        (["train", "--lr", "0"], "expected a number > 0"),
        (["train", "--sampler", "plms"], "invalid choice: 'plms'"),
        (["sample", "m.pt", "--steps", "-3"], "expected a positive step count"),
        (["sample", "m.pt", "--steps", "ddim0"], "expected a positive step count"),
        (["sample", "m.pt", "--per-class", "0"], "expected a positive integer"),
        (["sample", "m.pt", "--cfg-scale", "-1"], "expected a number >= 0"),
        (["demo", "--steps", "0"], "expected a positive integer"),
        (["eval", "--ref", "r", "--k", "0"], "expected a positive integer"),
    ],
)
def test_bad_numbers_are_refused_with_the_flag_name(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(*argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and f"usage: ditlab {argv[0]}" in err


@pytest.mark.parametrize(
    "text,value", [("50", 50), ("250", 250), ("ddim25", "ddim25"), ("10,20,30", "10,20,30")]
)
def test_sample_steps_accept_counts_and_respacings(text, value):
    assert parse("sample", "m.pt", "--sample-steps", text).sample_steps == value


def test_train_without_a_run_length_names_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", "digits"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "set the run length" in err and "--train-steps N or --epochs N" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_eval_device_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "--ref", "digits:test", "--device", "cuda", "--cache-dir", str(tmp_path)]) == 2
    assert "torch sees no CUDA GPU" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- --vae
def test_vae_names_resolve_to_local_folders(tmp_path, monkeypatch):
    monkeypatch.setenv(VAE_DIR_ENV, str(tmp_path))
    (tmp_path / "sd-vae-ft-mse").mkdir()
    assert vae_folder("mse") == tmp_path / "sd-vae-ft-mse"
    assert parse("sample", "m.pt", "--vae", "mse").vae == tmp_path / "sd-vae-ft-mse"
    assert vae_folder(str(tmp_path)) == tmp_path  # a folder path is taken as given
    with pytest.raises(argparse.ArgumentTypeError, match=r"sd-vae-ft-ema.*does not exist.*DITLAB_VAE_DIR"):
        vae_folder("ema")
    with pytest.raises(argparse.ArgumentTypeError, match="no VAE at"):
        vae_folder(str(tmp_path / "nowhere"))


def test_vae_default_folder_is_under_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(VAE_DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".cache" / "ditlab" / "vae" / "sd-vae-ft-ema").mkdir(parents=True)
    assert vae_folder("ema") == tmp_path / ".cache" / "ditlab" / "vae" / "sd-vae-ft-ema"


def test_sample_with_a_missing_vae_fails_before_loading(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(VAE_DIR_ENV, str(tmp_path))
    with pytest.raises(SystemExit) as exit_:
        main(["sample", str(tmp_path / "not-loaded.pt"), "--vae", "ema"])
    assert exit_.value.code == 2
    assert f"{tmp_path / 'sd-vae-ft-ema'}" in capsys.readouterr().err


def _readme_commands() -> list[str]:
    """Every `ditlab ...` command line in README.md's code blocks (continuation lines joined)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code, inside = [], False
    for line in readme.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            code.append(line)
    lines = "\n".join(code).replace("\\\n", " ").splitlines()
    return [
        line[line.index("ditlab ") :] for line in lines if re.match(r"\s*(torchrun .* -m )?ditlab ", line)
    ]


@pytest.mark.parametrize("line", _readme_commands())
def test_readme_commands_parse(line, tmp_path, monkeypatch):
    monkeypatch.setenv(VAE_DIR_ENV, str(tmp_path))  # `--vae ema` needs its folder to exist
    (tmp_path / "sd-vae-ft-ema").mkdir()
    argv = shlex.split(line, comments=True)[1:]
    assert parse(*argv).command == argv[0]


def test_readme_has_commands_to_check():
    assert {shlex.split(line)[1] for line in _readme_commands()} >= {"train", "sample", "convert", "finetune"}
