rule prepare_data:
    output:
        f"{RESULTS}/prepared/{{task}}.json",
    input:
        job_code,
    params:
        task=lambda w: task_args(w.task),
        size=config["img_size"],
    log:
        f"logs/{EXPERIMENT}/prepare_{{task}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/prepare_{{task}}.tsv",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
    shell:
        "python -m pae.cli prepare-data {params.task} --img-size {params.size} --summary {output} > {log} 2>&1"
