# PAE's MPA as two jobs per (protocol, task, MPA key, seed), shared by every method of that key (its prompt count
# and profile, `mpa_key`): the frequency-shortcut search (with the per-class dominant-frequency maps for the
# figure), then the task-aware prompts for every block.


# MPA's jobs before any training job: every run with PAE's init waits on them, so started late they leave the
# cores idle at the end (measured on the default: the search ran after eight training jobs).
MPA_PRIORITY = 10


def mpa_args(w):
    """Only what MPA reads (one band per prompt token): a changed lr or epoch count does not redo the search."""
    tokens, _, profile = w.mpa.removeprefix("p").partition("-")
    return (f"{task_args(w.task)} --protocol {w.protocol} --seed {w.seed} --arch {config['backbone']['arch']}"
            f" --img-size {config['img_size']} --num-tokens {tokens} --profile {profile or 'official'} {init_args()}"
            f" --threads {TRAIN_RESOURCES['threads']}"
            + (f" --train-images {config['train']['train_images']}" if config["train"].get("train_images") else ""))


rule shortcuts:
    output:
        f"{RESULTS}/mpa/{{protocol}}/{{task}}/{{mpa}}/seed{{seed}}/shortcuts.json",
    input:
        job_code,
        backbone=config["backbone"]["file"],
        data=f"{RESULTS}/prepared/{{task}}.json",
    params:
        args=mpa_args,
    log:
        f"logs/{EXPERIMENT}/shortcuts_{{protocol}}_{{task}}_{{mpa}}_seed{{seed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/shortcuts_{{protocol}}_{{task}}_{{mpa}}_seed{{seed}}.tsv",
    conda:
        ENV
    threads: TRAIN_RESOURCES["threads"]
    priority: MPA_PRIORITY
    resources:
        mem_mb=TRAIN_RESOURCES["mem_mb"],
        gpu=TRAIN_RESOURCES["gpus"],
    shell:
        "python -m pae.cli shortcuts {params.args} --weights {input.backbone} --out {output} > {log} 2>&1"


rule init_prompts:
    output:
        f"{RESULTS}/mpa/{{protocol}}/{{task}}/{{mpa}}/seed{{seed}}/prompts.safetensors",
    input:
        job_code,
        backbone=config["backbone"]["file"],
        shortcuts=f"{RESULTS}/mpa/{{protocol}}/{{task}}/{{mpa}}/seed{{seed}}/shortcuts.json",
    params:
        args=mpa_args,
    log:
        f"logs/{EXPERIMENT}/init_prompts_{{protocol}}_{{task}}_{{mpa}}_seed{{seed}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/init_prompts_{{protocol}}_{{task}}_{{mpa}}_seed{{seed}}.tsv",
    conda:
        ENV
    threads: TRAIN_RESOURCES["threads"]
    priority: MPA_PRIORITY
    resources:
        mem_mb=TRAIN_RESOURCES["mem_mb"],
        gpu=TRAIN_RESOURCES["gpus"],
    shell:
        "python -m pae.cli init-prompts {params.args} --weights {input.backbone} --shortcuts {input.shortcuts}"
        " --out {output} > {log} 2>&1"
