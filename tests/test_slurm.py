"""The tiny DAG through a real SLURM scheduler (a one-node cluster, tests/slurm_cluster.py), every job submitted by
Snakemake's SLURM executor plugin with the profile users copy: the tables of a local run, one completed sacct job per
Snakemake job with the resources and partition asked for (not the cluster's default one), and a training job preempted
mid-run (SIGTERM), resubmitted by Snakemake's retry, that resumes from the first attempt's saved state (its log says
so) to exactly the uninterrupted run's numbers in one MLflow run."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from .slurm_cluster import SBIN, Cluster, Unavailable, setup, start_cluster, unavailable
from .test_pipeline import EXPERIMENT, run, tiny_params, tiny_project
from .test_resume import same_run, states

pytestmark = pytest.mark.slow
PROFILE = "workflow/profiles/slurm-test"
FIXED_RESOURCES = {"import_backbone": (1, 4000), "prepare_data": (2, 8000)}  # rules that ask for their own
NOT_NUMBERS = re.compile(r"wall|_s$|mlflow_run_ids")  # table columns that are timings or run ids
PREEMPTED_EPOCHS = 12  # long enough that the signal lands mid-training; the tiny grid trains 2
RESUMED = re.compile(r"resuming \S+ from epoch (\d+), step (\d+) \(state [^\n]+\)")  # pae.loop.resume's line


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The test cluster; skipped with the reason where this machine cannot run it (PAE_REQUIRE_SLURM=1: failed)."""
    try:
        started = start_cluster(tmp_path_factory.mktemp("slurm"))
    except Unavailable as exc:
        if os.environ.get("PAE_REQUIRE_SLURM") == "1":
            pytest.fail(f"no SLURM test cluster: {exc}")
        pytest.skip(f"no SLURM test cluster on this machine: {exc}")
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print(
            f"\nSLURM test cluster: {started.version}, snakemake-executor-plugin-slurm "
            f"{version('snakemake-executor-plugin-slurm')}, snakemake {version('snakemake')}"
        )
    yield started
    started.stop()


@pytest.fixture(scope="module")
def slurm_project(tmp_path_factory: pytest.TempPathFactory, tiny_task: Path, cluster: Cluster) -> tuple[Path, dict]:
    """The tiny project with a copy of the SLURM profile whose partition is the test cluster's."""
    root = tmp_path_factory.mktemp("slurm-project") / "project"
    env = tiny_project(root, tiny_task)
    env.update(SLURM_CONF=cluster.env["SLURM_CONF"], PATH=f"{env['PATH']}{os.pathsep}{SBIN}")
    profile = yaml.safe_load((root / "workflow/profiles/slurm/config.yaml").read_text())
    profile["default-resources"]["slurm_partition"] = cluster.partition
    (root / PROFILE).mkdir(parents=True)
    (root / PROFILE / "config.yaml").write_text(yaml.safe_dump(profile))
    return root, env


def test_a_failing_set_up_command_is_unavailable_with_its_message():
    """Set-up failures skip (or fail, PAE_REQUIRE_SLURM=1) with the reason, not as an unrelated error."""
    fail = (sys.executable, "-c", "import sys; sys.exit('no key for you')")
    with pytest.raises(Unavailable, match="failed \\(1\\): no key for you"):
        setup(*fail, env=dict(os.environ))
    called = subprocess.run(fail, capture_output=True, text=True, check=False)
    exc = subprocess.CalledProcessError(called.returncode, fail, called.stdout, called.stderr)
    assert "no key for you" in str(unavailable(exc))
    assert "TimeoutExpired" in str(unavailable(subprocess.TimeoutExpired("slurmd", 30)))


def default_partition(cluster: Cluster) -> str:
    """The partition a job goes to without --partition (sinfo marks it with '*')."""
    return next(p[:-1] for p in cluster.run("sinfo", "-h", "-o", "%P").split() if p.endswith("*"))


def slurm(*args: str) -> list[str]:
    """Snakemake through the plugin; status checks from 2 s after a submission (the plugin's default: 40 s)."""
    return ["snakemake", "--profile", PROFILE, "--slurm-init-seconds-before-status-checks", "2", *args]


def run_id(output: str) -> str:
    """The plugin names every job of one Snakemake run by the run's id."""
    return re.search(r"SLURM run ID: (\S+)", output)[1]


def sacct(cluster: Cluster, name: str) -> list[dict[str, str]]:
    """The accounting records of a run's jobs, oldest first."""
    fields = ["JobIDRaw", "Partition", "AllocCPUS", "ReqMem", "State", "ExitCode", "Comment"]
    out = cluster.run(
        "sacct", "-X", "-P", "-n", "--starttime", "2000-01-01", "--name", name, f"--format={','.join(fields)}"
    )
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line]
    return sorted(rows, key=lambda r: int(r["JobIDRaw"]))


def rule_of(comment: str) -> str:
    """The plugin's job comment: rule_<rule>[_wildcards_<values>]."""
    return re.fullmatch(r"rule_(.+?)(_wildcards_.*)?", comment)[1]


def numbers(csv_text: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    """Every table's rows as written, timings and run ids left out."""
    return {
        name: [{k: v for k, v in row.items() if not NOT_NUMBERS.search(k)} for row in csv.DictReader(text.splitlines())]
        for name, text in csv_text.items()
    }


def test_the_tiny_dag_through_slurm_gives_the_local_tables_one_completed_job_each(
    slurm_project, cluster, tiny_pipeline
):
    root, env = slurm_project
    done = run(slurm("reproduce_all"), root, env)
    log = done.stdout + done.stderr
    submitted = Counter(re.findall(r"^rule (\w+):$", log, re.MULTILINE))  # the local rules' jobs print as "localrule"
    assert sum(submitted.values()) == len(re.findall(r"has been submitted with SLURM jobid", log)) > 20
    jobs = sacct(cluster, run_id(log))
    assert Counter(rule_of(j["Comment"]) for j in jobs) == submitted
    assert len({j["Comment"] for j in jobs}) == len(jobs)  # one job per (rule, wildcards): none resubmitted
    train = tiny_params(Path(), Path())["resources"]["train"]
    assert default_partition(cluster) != cluster.partition  # so each job's partition is the profile's doing
    for job in jobs:
        cpus, mem = FIXED_RESOURCES.get(rule_of(job["Comment"]), (train["threads"], train["mem_mb"]))
        assert (job["State"], job["ExitCode"], job["Partition"]) == ("COMPLETED", "0:0", cluster.partition), job
        assert (job["AllocCPUS"], job["ReqMem"]) == (str(cpus), f"{mem}M"), job
    written = {p.name: p.read_text() for p in sorted((root / f"reports/{EXPERIMENT}").glob("*.csv"))}
    assert numbers(written) == numbers(tiny_pipeline[2]) and len(written) == 5  # 4 tables, 1 figure's data


def running_train_job(cluster: Cluster, out: Path, snakemake: subprocess.Popen, after_epoch: int) -> str:
    """The SLURM id of the running training job, once its run has saved epoch ``after_epoch``."""
    deadline = time.monotonic() + 300
    while True:
        assert snakemake.poll() is None and time.monotonic() < deadline, snakemake.communicate()
        queue = cluster.run("squeue", "-h", "-t", "RUNNING", "-o", "%i %k").split("\n")
        ids = [line.split()[0] for line in queue if " rule_train_" in line]
        if ids and any(int(p.name.split("-")[1]) >= after_epoch for p in states(out)):
            return ids[0]
        time.sleep(0.2)


def position(state: Path) -> tuple[int, int]:
    """(completed epochs, steps into the next) of a saved state, from its name state-<epoch>-<step>.pt."""
    _, epoch, step = state.stem.split("-")
    return int(epoch), int(step)


def test_a_preempted_training_job_is_resubmitted_by_snakemake_and_resumes_exactly(slurm_project, cluster):
    """SIGTERM to every process of the job (batch script and steps), as SLURM's preemption and time limit send it;
    the profile's retry resubmits the job, which resumes from the saved state."""
    from mlflow import MlflowClient

    root, env = slurm_project
    run_dir = "runs/tiny/vpt_deep/koopman/seed1"
    for experiment in ("preempted", "uninterrupted"):
        grid = {"methods": ["vpt_deep"], "pae": ["koopman"]}
        params = {
            "experiment": experiment,
            "run": grid,
            "ablation": grid,
            "search": {"lr": [], "weight_decay": []},
            "train": {"epochs": PREEMPTED_EPOCHS},
        }
        (root / f"{experiment}.yaml").write_text(yaml.safe_dump(params))
    run(
        [
            "snakemake",
            "--cores",
            "2",
            f"results/uninterrupted/{run_dir}/metrics.json",
            "--configfile",
            "uninterrupted.yaml",
        ],
        root,
        env,
    )  # --configfile takes a list: last

    out = root / f"results/preempted/{run_dir}"
    target = f"results/preempted/{run_dir}/metrics.json"
    snakemake = subprocess.Popen(
        slurm(target, "--configfile", "preempted.yaml"),
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = root / "logs/preempted/train_tiny_vpt_deep_koopman_seed1.log"  # each attempt rewrites it
    job = running_train_job(cluster, out, snakemake, after_epoch=2)
    signalled = max(position(p)[0] for p in states(out))
    cluster.run("scancel", f"--signal={signal.SIGTERM.name[3:]}", "--full", job)
    deadline = time.monotonic() + 120
    while job in cluster.run("squeue", "-h", "-o", "%i").split() and time.monotonic() < deadline:
        time.sleep(0.2)
    saved, first_log = states(out), log.read_text()  # read before the retry's job starts (sacct, sbatch: seconds)
    output, _ = snakemake.communicate(timeout=600)
    assert snakemake.returncode == 0, output[-4000:]

    attempts = [j for j in sacct(cluster, run_id(output)) if rule_of(j["Comment"]) == "train"]
    assert [(j["JobIDRaw"], j["State"]) for j in attempts] == [(job, "FAILED"), (attempts[1]["JobIDRaw"], "COMPLETED")]
    assert saved and not states(out)  # the first attempt left its state, the second resumed from it and finished
    # The first attempt trained from scratch; the second says it resumed from the newest state the first one left (a
    # restart from epoch 0 would end with the same numbers: training is deterministic).
    assert first_log.strip() and not RESUMED.search(first_log), first_log[-2000:]
    retried_log = log.read_text()
    resumed = [(int(e), int(s)) for e, s in RESUMED.findall(retried_log)]
    assert resumed == [position(saved[-1])] and resumed[0][0] >= signalled, retried_log[-2000:]
    assert "starting afresh" not in retried_log
    same_run(out, root / f"results/uninterrupted/{run_dir}")

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("preempted").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # both attempts logged to one run
    curve = client.get_metric_history(runs[0].info.run_id, "test_top1")
    assert sorted(m.step for m in curve) == list(range(PREEMPTED_EPOCHS + 1))
