rule accuracy_table:
    input:
        CODE,
        runs=expand(f"results/{EXPERIMENT}/runs/{{task}}/{{method}}/seed{{seed}}/metrics.json",
                    task=config["tasks"], method=config["methods"], seed=config["seeds"]),
    output:
        md=f"reports/{EXPERIMENT}/accuracy.md",
        csv=f"reports/{EXPERIMENT}/accuracy.csv",
    log:
        f"logs/{EXPERIMENT}/accuracy_table.log",
    conda:
        ENV
    shell:
        "python -m pae.cli table --out-md {output.md} --out-csv {output.csv} {input.runs} > {log} 2>&1"
