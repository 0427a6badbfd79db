# Reproduce everything: `snakemake --cores all reproduce_all` (add --use-conda where conda exists).
# The DAG: import backbone -> decode data -> [PAE init] + train (task x method x pae x seed) -> tables.
configfile: "params/default.yaml"

include: "workflow/rules/common.smk"
include: "workflow/rules/backbone.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule reproduce_all:
    default_target: True
    input:
        f"reports/{EXPERIMENT}/accuracy.md",


rule ablation:
    input:
        f"reports/{EXPERIMENT}/ablation.md",
