# Shared definitions: the validated config, the job lists of the two grids, and the command-line pieces. Every
# rule logs to logs/<experiment>/ and records its wall time and memory (Snakemake benchmark:) in
# logs/<experiment>/benchmarks/*.tsv.
import os
import sys

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # the pae package, also before `pip install -e .`
from pae.config.pae import SETTINGS_OF
from pae.methods.registry import PLUGINS_ENV
from pae.params import job_settings, validate_params, variant_parts
from pae.pipeline.code_inputs import code_inputs
from pae.pipeline.plan import Plan

config = validate_params(config, base_dir=".")  # also loads the params' method plugins
if config["plugins"]:  # every job's `pae.cli` loads them too
    os.environ[PLUGINS_ENV] = ":".join(str(Path(p).resolve()) if p.endswith(".py") else p for p in config["plugins"])
PLAN = Plan(config)  # the jobs, their folders, the tables they feed (the generated dvc.yaml reads the same plan)
EXPERIMENT = PLAN.experiment
RUN = config["run"]
ABLATION = config["ablation"]
SEARCH = config["search"]
RESULTS = PLAN.results
REPORTS = PLAN.reports
ENV = "../envs/pae.yaml"
# Code is an input where it shapes the output, so an edit reruns exactly what it can change (pae.pipeline.code_inputs):
# a method's modules for its jobs, the shared code for every job, the report code for tables and figures.
CODE = code_inputs()
REPORT_CODE = CODE.report


def job_code(w):
    """The code inputs of a job: the shared code, and its method's modules when it has a method wildcard."""
    return CODE.job(getattr(w, "method", None))


parts = PLAN.parts
mpa_key = PLAN.mpa_key
run_dir = PLAN.run_dir
mpa_dir = PLAN.mpa_dir
MAIN_JOBS, ABLATION_JOBS, ALL_JOBS = PLAN.main_jobs, PLAN.ablation_jobs, PLAN.all_jobs


def run_files(job_list):
    return [f"{run_dir(*job)}/metrics.json" for job in job_list]


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
    """The task's data flags; its decoded tensors live in the experiment's results (a DVC-tracked folder per task)."""
    t = config["tasks"][task]
    pairs = (("kind", t["kind"]), ("root", t.get("root")), ("name", t.get("name") or task), ("task-group", t["group"]),
             ("cache-dir", PLAN.prepared_dir(task)))
    return " ".join(f"--{k} {v}" for k, v in pairs if v)


def train_flags(task, method, variant):
    """The job's train flags (``pae.params.job_settings``: train, then the method's, the task's and the variant's
    overrides; of the method settings only those the method reads, so another method's setting never reruns it)."""
    return flags(job_settings(config, task, method, variant))


def pae_args(variant):
    """The variant's parts and only the settings they read (SETTINGS_OF): a changed setting reruns just its users."""
    on = parts(variant)
    settings = {k: v for k, v in config["pae"].items() if any(k in SETTINGS_OF[p] for p in on)}
    return flags({**settings, **variant_parts(config, variant)}, "pae-") if on else ""


def init_args():
    """The shortcut search's and prompt init's settings."""
    return flags({k: v for k, v in config["pae"].items() if k in SETTINGS_OF["init"]}, "pae-")


def number(value):
    """A search value as it appears in paths: repr of the float, e.g. 0.005, 1e-05."""
    return repr(float(value))
