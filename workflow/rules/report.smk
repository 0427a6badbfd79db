# Tables and figures from the runs' files (never from memory), then the report index, which also logs every
# table and figure to an MLflow "report" run. Each table waits for the evaluate stage of its runs: a run whose
# checkpoint does not reproduce its numbers never reaches a table.
TABLE_JOBS = PLAN.table_jobs
FIGURE_JOBS = PLAN.figure_jobs
SHORTCUT_FILES = PLAN.shortcut_files


evaluations = PLAN.evaluations


rule table:
    output:
        md=f"{REPORTS}/{{table}}.md",
        csv=f"{REPORTS}/{{table}}.csv",
        json=f"{REPORTS}/{{table}}.json",
        tex=f"{REPORTS}/{{table}}.tex",
    input:
        REPORT_CODE,
        runs=lambda w: run_files(TABLE_JOBS[w.table]),
        checked=lambda w: evaluations(TABLE_JOBS[w.table]),
    wildcard_constraints:
        table="|".join(TABLE_JOBS),
    log:
        f"logs/{EXPERIMENT}/table_{{table}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/table_{{table}}.tsv",
    conda:
        ENV
    shell:
        "python -m pae.cli table --kind {wildcards.table} --out-md {output.md} --out-csv {output.csv}"
        " --out-json {output.json} {input.runs} > {log} 2>&1"


rule figure:
    output:
        png=f"{REPORTS}/{{figure}}.png",
        pdf=f"{REPORTS}/{{figure}}.pdf",
    input:
        REPORT_CODE,
        runs=lambda w: run_files(FIGURE_JOBS[w.figure]),
    wildcard_constraints:
        figure="|".join(FIGURE_JOBS),
    log:
        f"logs/{EXPERIMENT}/figure_{{figure}}.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/figure_{{figure}}.tsv",
    conda:
        ENV
    shell:
        "python -m pae.cli figure --kind {wildcards.figure} --out {REPORTS}/{wildcards.figure} {input.runs} > {log} 2>&1"


rule shortcut_maps:
    output:
        png=f"{REPORTS}/shortcut_maps.png",
        pdf=f"{REPORTS}/shortcut_maps.pdf",
    input:
        REPORT_CODE,
        maps=SHORTCUT_FILES,
    log:
        f"logs/{EXPERIMENT}/figure_shortcut_maps.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/figure_shortcut_maps.tsv",
    conda:
        ENV
    shell:
        "python -m pae.cli figure --kind shortcut_maps --out {REPORTS}/shortcut_maps {input.maps} > {log} 2>&1"


DIAGNOSED = PLAN.init_diagnosis_pair  # (PAE-init run, base run), or None when no grid has both


if DIAGNOSED:
    rule init_diagnosis:
        output:
            md=f"{REPORTS}/init_diagnosis.md",
            json=f"{REPORTS}/init_diagnosis.json",
            png=f"{REPORTS}/init_diagnosis.png",
        input:
            REPORT_CODE,
            runs=[f"{d}/metrics.json" for d in DIAGNOSED],
        params:
            pae_run=DIAGNOSED[0],
            base_run=DIAGNOSED[1],
        log:
            f"logs/{EXPERIMENT}/init_diagnosis.log",
        benchmark:
            f"logs/{EXPERIMENT}/benchmarks/init_diagnosis.tsv",
        conda:
            ENV
        threads: TRAIN_RESOURCES["threads"]
        resources:
            mem_mb=TRAIN_RESOURCES["mem_mb"],
        shell:
            "python -m pae.cli diagnose-init --pae-run {params.pae_run} --base-run {params.base_run} --threads {threads}"
            " --out-md {output.md} --out-json {output.json} --out-png {output.png} > {log} 2>&1"


REPORT_FILES = ([f"{REPORTS}/{t}.md" for t in TABLE_JOBS] + [f"{REPORTS}/{f}.png" for f in FIGURE_JOBS]
                + [f"{REPORTS}/shortcut_maps.png"] + ([f"{REPORTS}/init_diagnosis.md"] if DIAGNOSED else []))


rule report:
    output:
        f"{REPORTS}/README.md",
    input:
        REPORT_CODE,
        REPORT_FILES,
        params=workflow.configfiles,
    log:
        f"logs/{EXPERIMENT}/report.log",
    benchmark:
        f"logs/{EXPERIMENT}/benchmarks/report.tsv",
    conda:
        ENV
    shell:
        "python -m pae.cli report --dir {REPORTS} --experiment {EXPERIMENT} --params {input.params} > {log} 2>&1"
