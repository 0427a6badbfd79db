import glob

EXPERIMENT = config["experiment"]
CODE = sorted(glob.glob("src/pae/**/*.py", recursive=True))  # code is an input: editing it reruns what uses it
ENV = "../envs/pae.yaml"


def task_args(task):
    t = config["tasks"][task]
    return " ".join(f"--{k} {v}" for k, v in (("kind", t["kind"]), ("root", t.get("root")), ("name", task)) if v)


def run_dir(task, method, seed):
    return f"results/{EXPERIMENT}/runs/{task}/{method}/seed{seed}"
