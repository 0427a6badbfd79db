# Training: the VPT protocol's lr/wd search (tune: train800 -> val200) when `search` is set, its selection,
# the final runs (train800val200 -> test) and the evaluate stage that reloads each final checkpoint.


def train_inputs(protocol):
    def inputs(w):
        out = {"backbone": config["backbone"]["file"], "data": f"{RESULTS}/prepared/{w.task}.json"}
        seed = SEARCH["seed"] if protocol == "tune" else w.seed
        if "init" in parts(w.pae):
            out["init"] = f"{mpa_dir(protocol, w.task, mpa_key(w.task, w.method, w.pae), seed)}/prompts.safetensors"
        if protocol == "final" and SEARCH["lr"]:
            out["hparams"] = f"{RESULTS}/tune/{w.task}/{w.method}/{w.pae}/selected.json"
        return out
    return inputs


def train_args(w, protocol):
    """Everything but the seed and output folder: task, backbone, method, the params' train and PAE flags.

    A function of the wildcards alone, so Snakemake records it and a changed value reruns the job."""
    input = train_inputs(protocol)(w)
    extra = {"init": "--init-prompts", "hparams": "--hparams"}
    given = " ".join(f"{flag} {input[key]}" for key, flag in extra.items() if key in input)
    return (f"{task_args(w.task)} --protocol {protocol} --arch {config['backbone']['arch']} --weights {input['backbone']}"
            f" --img-size {config['img_size']} --method {w.method} {train_flags(w.task, w.method, w.pae)} {pae_args(w.pae)}"
            f" --threads {TRAIN_RESOURCES['threads']} --experiment {EXPERIMENT} {given}")


def grid_dirs(w):
    """The search's run folders of one (task, method, variant)."""
    return [f"{RESULTS}/tune/{w.task}/{w.method}/{w.pae}/lr{number(lr)}_wd{number(wd)}"
            for lr in SEARCH["lr"] for wd in SEARCH["weight_decay"]]


def tune_rule(name, lrs, wds):
    """A search job of one (task, method, variant): ``lrs`` x ``wds``, numbers or the wildcards "{lr}" / "{wd}" (one
    job per point). Several runs train as one group; the CLI fills each run's folder into --out-dir."""
    rule:
        name:
            name
        output:
            [f"{RESULTS}/tune/{{task}}/{{method}}/{{pae}}/lr{lr}_wd{wd}/metrics.json" for lr in lrs for wd in wds],
        input:
            job_code,
            unpack(train_inputs("tune")),
        params:
            args=lambda w: train_args(w, "tune"),
            seed=SEARCH["seed"],
            lrs=lambda w: " ".join(lr.format(**w) for lr in lrs),
            wds=lambda w: " ".join(wd.format(**w) for wd in wds),
            out=lambda w: f"{RESULTS}/tune/{w.task}/{w.method}/{w.pae}/lr{{lr}}_wd{{wd}}",  # the CLI fills these in
        log:
            f"logs/{EXPERIMENT}/{name}_{{task}}_{{method}}_{{pae}}_lr{'+'.join(lrs)}_wd{'+'.join(wds)}.log",
        benchmark:
            f"logs/{EXPERIMENT}/benchmarks/{name}_{{task}}_{{method}}_{{pae}}_lr{'+'.join(lrs)}_wd{'+'.join(wds)}.tsv",
        conda:
            ENV
        threads: TRAIN_RESOURCES["threads"]
        resources:
            mem_mb=TRAIN_RESOURCES["mem_mb"],
            gpu=TRAIN_RESOURCES["gpus"],
            runtime=TRAIN_RESOURCES["runtime"] * len(lrs) * len(wds),
        shell:
            "python -m pae.cli train {params.args} --seed {params.seed} --lr {params.lrs} --weight-decay {params.wds}"
            " --out-dir '{params.out}' > {log} 2>&1"


PER_JOB = SEARCH["lrs_per_job"]
if PER_JOB:  # one rule per chunk of learning rates: a rule's outputs cannot depend on a wildcard's value
    for index in range(0, len(SEARCH["lr"]), PER_JOB):
        tune_rule(f"tune_group{index // PER_JOB}", [number(lr) for lr in SEARCH["lr"][index:index + PER_JOB]],
                  [number(wd) for wd in SEARCH["weight_decay"]])
else:
    tune_rule("tune", ["{lr}"], ["{wd}"])


rule select_hparams:
    output:
        f"{RESULTS}/tune/{{task}}/{{method}}/{{pae}}/selected.json",
    input:
        job_code,
        runs=lambda w: [f"{d}/metrics.json" for d in grid_dirs(w)],
    log:
        f"logs/{EXPERIMENT}/select_{{task}}_{{method}}_{{pae}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/select_{{task}}_{{method}}_{{pae}}.tsv",
    conda:
        ENV
    shell:
        "python -m pae.cli select {input.runs} --out {output} > {log} 2>&1"


rule train:
    output:
        f"{RESULTS}/runs/{{task}}/{{method}}/{{pae}}/seed{{seed}}/metrics.json",
    input:
        job_code,
        unpack(train_inputs("final")),
    params:
        args=lambda w: train_args(w, "final"),
        out=lambda w: run_dir(w.task, w.method, w.pae, w.seed),
    log:
        f"logs/{EXPERIMENT}/train_{{task}}_{{method}}_{{pae}}_seed{{seed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/train_{{task}}_{{method}}_{{pae}}_seed{{seed}}.tsv",
    conda:
        ENV
    threads: TRAIN_RESOURCES["threads"]
    resources:
        mem_mb=TRAIN_RESOURCES["mem_mb"],
        gpu=TRAIN_RESOURCES["gpus"],
        runtime=TRAIN_RESOURCES["runtime"],
    shell:
        "python -m pae.cli train {params.args} --seed {wildcards.seed} --out-dir {params.out} > {log} 2>&1"


rule evaluate:
    output:
        f"{RESULTS}/evaluations/{{task}}/{{method}}.json",
    input:
        job_code,
        runs=lambda w: [f"{run_dir(*job)}/metrics.json" for job in PLAN.method_jobs(w.task, w.method)],
    params:
        run_dirs=lambda w: " ".join(run_dir(*job) for job in PLAN.method_jobs(w.task, w.method)),
    log:
        f"logs/{EXPERIMENT}/evaluate_{{task}}_{{method}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/evaluate_{{task}}_{{method}}.tsv",
    conda:
        ENV
    threads: TRAIN_RESOURCES["threads"]
    resources:
        mem_mb=TRAIN_RESOURCES["mem_mb"],
        gpu=TRAIN_RESOURCES["gpus"],
    shell:
        "python -m pae.cli evaluate --run-dir {params.run_dirs} --out {output} > {log} 2>&1"
