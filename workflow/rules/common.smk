import glob

EXPERIMENT = config["experiment"]
RUN = config["run"]
CODE = sorted(glob.glob("src/pae/**/*.py", recursive=True))  # code is an input: editing it reruns what uses it
ENV = "../envs/pae.yaml"
NO_PROMPTS = {"linear", "full"}


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
    return " ".join(f"--{k} {v}" for k, v in (("kind", t["kind"]), ("root", t.get("root")), ("name", task)) if v)


def pae_args(variant):
    parts = config["pae_variants"][variant]
    return flags({**config["pae"], **parts}, "pae-") if parts else ""


def applicable(method, variant):
    """PAE needs prompts; its Koopman chain needs more than one prompt layer (shallow methods: init only)."""
    parts = config["pae_variants"][variant]
    if method in NO_PROMPTS:
        return not parts
    if method.endswith("shallow"):
        return not (parts.get("koopman") or parts.get("lyapunov"))
    return True


def run_dir(task, method, pae, seed):
    return f"results/{EXPERIMENT}/runs/{task}/{method}/{pae}/seed{seed}"


def run_metrics(tasks=None, methods=None, variants=None, seeds=None):
    """metrics.json of every applicable (task, method, pae, seed) of the run selection."""
    return [f"{run_dir(t, m, v, s)}/metrics.json"
            for t in tasks or RUN["tasks"] for m in methods or RUN["methods"]
            for v in variants or RUN["pae"] for s in seeds or RUN["seeds"] if applicable(m, v)]
