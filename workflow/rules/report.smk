rule accuracy_table:
    input:
        CODE,
        runs=run_metrics(),
    output:
        md=f"reports/{EXPERIMENT}/accuracy.md",
        csv=f"reports/{EXPERIMENT}/accuracy.csv",
    log:
        f"logs/{EXPERIMENT}/accuracy_table.log",
    conda:
        ENV
    shell:
        "python -m pae.cli table --out-md {output.md} --out-csv {output.csv} {input.runs} > {log} 2>&1"


rule ablation_table:
    input:
        CODE,
        runs=run_metrics(variants=list(config["pae_variants"])),
    output:
        md=f"reports/{EXPERIMENT}/ablation.md",
        csv=f"reports/{EXPERIMENT}/ablation.csv",
    log:
        f"logs/{EXPERIMENT}/ablation_table.log",
    conda:
        ENV
    shell:
        "python -m pae.cli table --kind ablation --out-md {output.md} --out-csv {output.csv} {input.runs} > {log} 2>&1"
