"""What the pipeline runs, read by both Snakemake (workflow/rules) and DVC (the generated dvc.yaml): the jobs of
an experiment's grids, their folders, and the code each job's output depends on. Imports no torch."""
