rule import_backbone:
    input:
        CODE.backbone,
    output:
        config["backbone"]["file"],
    params:
        source=config["backbone"]["source"],
        arch=config["backbone"]["arch"],
    log:
        "logs/import_backbone.log",
    benchmark:
        "logs/benchmarks/import_backbone.tsv",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "python -m pae.cli import-backbone --source {params.source} --arch {params.arch} --out {output} > {log} 2>&1"
