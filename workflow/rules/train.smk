rule train:
    input:
        CODE,
        backbone=config["backbone"]["file"],
        data=f"results/{EXPERIMENT}/prepared/{{task}}.done",
    output:
        f"results/{EXPERIMENT}/runs/{{task}}/{{method}}/seed{{seed}}/metrics.json",
    params:
        task=lambda w: task_args(w.task),
        out=lambda w: run_dir(w.task, w.method, w.seed),
        arch=config["backbone"]["arch"],
        size=config["img_size"],
        t=config["train"],
    log:
        f"logs/{EXPERIMENT}/train_{{task}}_{{method}}_seed{{seed}}.log",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        gpu=0,
    shell:
        "python -m pae.cli train {params.task} --arch {params.arch} --weights {input.backbone} --img-size {params.size}"
        " --method {wildcards.method} --seed {wildcards.seed} --protocol {params.t[protocol]}"
        " --epochs {params.t[epochs]} --warmup-epochs {params.t[warmup_epochs]} --lr {params.t[lr]}"
        " --weight-decay {params.t[weight_decay]} --batch-size {params.t[batch_size]}"
        " --num-tokens {params.t[num_tokens]} --prompt-dropout {params.t[prompt_dropout]}"
        " --experiment {EXPERIMENT} --out-dir {params.out} > {log} 2>&1"
