rule train:
    input:
        CODE,
        backbone=config["backbone"]["file"],
        data=f"results/{EXPERIMENT}/prepared/{{task}}.done",
    output:
        f"results/{EXPERIMENT}/runs/{{task}}/{{method}}/{{pae}}/seed{{seed}}/metrics.json",
    params:
        task=lambda w: task_args(w.task),
        pae=lambda w: pae_args(w.pae),
        train=flags(config["train"]),
        out=lambda w: run_dir(w.task, w.method, w.pae, w.seed),
        arch=config["backbone"]["arch"],
        size=config["img_size"],
    log:
        f"logs/{EXPERIMENT}/train_{{task}}_{{method}}_{{pae}}_seed{{seed}}.log",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        gpu=0,
    shell:
        "python -m pae.cli train {params.task} --arch {params.arch} --weights {input.backbone} --img-size {params.size}"
        " --method {wildcards.method} --seed {wildcards.seed} {params.train} {params.pae}"
        " --experiment {EXPERIMENT} --out-dir {params.out} > {log} 2>&1"
