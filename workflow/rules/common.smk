# Shared definitions: the validated config, the job lists of the two grids, and the command-line pieces. Every
# rule logs to logs/<experiment>/ and records its wall time and memory (Snakemake benchmark:) in
# logs/<experiment>/benchmarks/*.tsv.
import glob
import os
import sys

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # the pae package, also before `pip install -e .`
from pae.config.pae import SETTINGS_OF
from pae.methods import method_spec
from pae.methods.registry import PLUGINS_ENV
from pae.params import job_settings, validate_params, variant_parts

config = validate_params(config, base_dir=".")  # also loads the params' method plugins
if config["plugins"]:  # every job's `pae.cli` loads them too
    os.environ[PLUGINS_ENV] = ":".join(str(Path(p).resolve()) if p.endswith(".py") else p for p in config["plugins"])
EXPERIMENT = config["experiment"]
RUN = config["run"]
ABLATION = config["ablation"]
SEARCH = config["search"]
RESULTS = f"results/{EXPERIMENT}"
REPORTS = f"reports/{EXPERIMENT}"
ENV = "../envs/pae.yaml"
# Code is an input where it shapes the output, so editing it reruns exactly what it touches: everything but the
# report code for the jobs, the report code for tables and figures.
CODE = sorted(glob.glob("src/pae/**/*.py", recursive=True))
REPORT_CODE = [f for f in CODE if "/reports/" in f or f.endswith("cli.py")]
JOB_CODE = [f for f in CODE if "/reports/" not in f]
TRAIN_RESOURCES = config["resources"]["train"]

wildcard_constraints:
    seed=r"\d+",
    mpa=r"p\d+(-\w+)?",
    lr=r"[0-9.e+-]+",
    wd=r"[0-9.e+-]+",


def flags(settings, prefix=""):
    """{"warmup_epochs": 1, "ivpt_ar": False} -> '--warmup-epochs 1 --no-ivpt-ar' (prefix: 'pae-')."""
    out = []
    for key, value in settings.items():
        name = prefix + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(f"--{name}" if value else f"--no-{name}")
        else:
            out.append(f"--{name} {value}")
    return " ".join(out)


def task_args(task):
    t = config["tasks"][task]
    pairs = (("kind", t["kind"]), ("root", t.get("root")), ("name", t.get("name") or task), ("task-group", t["group"]))
    return " ".join(f"--{k} {v}" for k, v in pairs if v)


def train_flags(task, method, variant):
    """The job's train flags (``pae.params.job_settings``: train, then the method's, the task's and the variant's
    overrides; of the method settings only those the method reads, so another method's setting never reruns it)."""
    return flags(job_settings(config, task, method, variant))


def parts(variant):
    return {part for part, on in variant_parts(config, variant).items() if on}


def pae_args(variant):
    """The variant's parts and only the settings they read (SETTINGS_OF): a changed setting reruns just its users."""
    on = parts(variant)
    settings = {k: v for k, v in config["pae"].items() if any(k in SETTINGS_OF[p] for p in on)}
    return flags({**settings, **variant_parts(config, variant)}, "pae-") if on else ""


def init_args():
    """The shortcut search's and prompt init's settings."""
    return flags({k: v for k, v in config["pae"].items() if k in SETTINGS_OF["init"]}, "pae-")


def mpa_key(task, method, variant):
    """What MPA of a job depends on beyond task and seed: its prompt count (one band per token) and profile (the
    scorer's defaults), e.g. 'p5' or 'p5-ours'; jobs with the same key share one search."""
    settings = job_settings(config, task, method, variant)
    tokens = settings.get("num_tokens", method_spec(method).options().num_tokens)
    return f"p{tokens}" + ("" if settings.get("profile", "official") == "official" else f"-{settings['profile']}")


INIT_ONLY = next((v for v in config["pae_variants"] if parts(v) == {"init"}), None)


def variants_for(method, variants):
    """The variants a method can take (its registered ``prompts``). PAE needs prompts; a shallow method has one
    prompt layer, so no Koopman chain: for it a variant with init means PAE's init alone (the catalogue's init-only
    variant)."""
    prompts = method_spec(method).prompts
    out = []
    for v in variants:
        if prompts == "none":
            v = v if not parts(v) else None
        elif prompts == "shallow" and parts(v) - {"init"}:
            v = INIT_ONLY if "init" in parts(v) else None
        if v is not None and v not in out:
            out.append(v)
    return out


def jobs(grid):
    """(task, method, variant, seed) of a grid (run or ablation; the ablation's tasks/seeds default to run's)."""
    tasks, seeds = grid.get("tasks") or RUN["tasks"], grid.get("seeds") or RUN["seeds"]
    return [(t, m, v, s) for t in tasks for m in grid["methods"] for v in variants_for(m, grid["pae"]) for s in seeds]


MAIN_JOBS = jobs(RUN)
ABLATION_JOBS = jobs(ABLATION) if ABLATION["methods"] else MAIN_JOBS
ALL_JOBS = list(dict.fromkeys(MAIN_JOBS + ABLATION_JOBS))


def run_dir(task, method, pae, seed):
    return f"{RESULTS}/runs/{task}/{method}/{pae}/seed{seed}"


def run_files(job_list):
    return [f"{run_dir(*job)}/metrics.json" for job in job_list]


def mpa_dir(protocol, task, key, seed):
    return f"{RESULTS}/mpa/{protocol}/{task}/{key}/seed{seed}"


def number(value):
    """A search value as it appears in paths: repr of the float, e.g. 0.005, 1e-05."""
    return repr(float(value))
