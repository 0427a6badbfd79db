# Reproduce everything: `snakemake --cores all reproduce_all` (add --use-conda where conda exists;
# another experiment: append `--configfile params/mini.yaml`, last, since it takes a list).
# The DAG: import backbone -> prepare data -> frequency shortcuts -> initial prompts -> [lr/wd search ->
# selection] -> train (task x method x pae x seed) -> evaluate -> tables, figures -> report index.
configfile: "params/default.yaml"

include: "workflow/rules/common.smk"
include: "workflow/rules/backbone.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/shortcuts.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"

localrules: reproduce_all, ablation, select_hparams, table, figure, shortcut_maps, report  # seconds each: not worth a cluster job


rule reproduce_all:
    default_target: True
    input:
        f"{REPORTS}/README.md",


rule ablation:
    input:
        f"{REPORTS}/ablation.md",
