"""An experiment's jobs from its validated params: the grids' (task, method, variant, seed) runs, their folders and
the tables and figures each feeds. Snakemake's rules and the generated dvc.yaml both read this one plan."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ..backbones.catalogue import arch_family
from ..methods import method_spec
from ..params import job_settings, variant_parts

Job = tuple[str, str, str, int]  # task, method, PAE variant (its folder name), seed
TABLES = ("accuracy", "convergence", "ablation", "cost")
FIGURES = ("learning_curves", "gradient_oscillation", "koopman_spectrum")


@dataclass(frozen=True)
class Plan:
    """The jobs of one experiment (``config``: validated params, ``pae.params.validate_params``)."""

    config: dict

    @property
    def experiment(self) -> str:
        return self.config["experiment"]

    @property
    def results(self) -> str:
        return f"results/{self.experiment}"

    @property
    def reports(self) -> str:
        return f"reports/{self.experiment}"

    def parts(self, variant: str) -> set[str]:
        """The PAE parts a variant switches on."""
        return {part for part, on in variant_parts(self.config, variant).items() if on}

    @cached_property
    def init_only(self) -> str | None:
        """The catalogue's variant with PAE's init alone: what a shallow method runs for a variant with init."""
        return next((v for v in self.config["pae_variants"] if self.parts(v) == {"init"}), None)

    def variants_for(self, method: str, variants: list[str]) -> list[str]:
        """The variants a method can take (its registered ``prompts``). PAE needs prompts; a shallow method has one
        prompt layer, so no Koopman chain: for it a variant with init means PAE's init alone."""
        prompts = method_spec(method).prompts
        out = []
        for v in variants:
            if prompts == "none":
                v = v if not self.parts(v) else None
            elif prompts == "shallow" and self.parts(v) - {"init"}:
                v = self.init_only if "init" in self.parts(v) else None
            if v is not None and v not in out:
                out.append(v)
        return out

    def jobs(self, grid: dict) -> list[Job]:
        """The runs of a grid (run or ablation; the ablation's tasks and seeds default to run's)."""
        run = self.config["run"]
        tasks, seeds = grid.get("tasks") or run["tasks"], grid.get("seeds") or run["seeds"]
        return [
            (t, m, v, s)
            for t in tasks
            for m in grid["methods"]
            for v in self.variants_for(m, grid["pae"])
            for s in seeds
        ]

    @cached_property
    def main_jobs(self) -> list[Job]:
        return self.jobs(self.config["run"])

    @cached_property
    def ablation_jobs(self) -> list[Job]:
        ablation = self.config["ablation"]
        return self.jobs(ablation) if ablation["methods"] else self.main_jobs

    @cached_property
    def all_jobs(self) -> list[Job]:
        return list(dict.fromkeys(self.main_jobs + self.ablation_jobs))

    @cached_property
    def table_jobs(self) -> dict[str, list[Job]]:
        return {
            "accuracy": self.main_jobs,
            "convergence": self.main_jobs,
            "ablation": self.ablation_jobs,
            "cost": self.all_jobs,
        }

    @cached_property
    def figure_jobs(self) -> dict[str, list[Job]]:
        return {
            "learning_curves": self.main_jobs,
            "gradient_oscillation": self.all_jobs,
            "koopman_spectrum": self.all_jobs,
        }

    def prepared_dir(self, task: str) -> str:
        """The task's decoded tensors (every job's --cache-dir); its summary with their content hashes sits beside."""
        return f"{self.results}/prepared/{task}"

    def mpa_task_dirs(self, task: str) -> list[str]:
        """The task's MPA folders, one per protocol it runs (final; tune with a search): DVC-tracked outputs."""
        return sorted({f"{self.results}/mpa/{protocol}/{task}" for protocol, t, _, _ in self.mpa_jobs() if t == task})

    def run_dir(self, task: str, method: str, variant: str, seed: int) -> str:
        return f"{self.results}/runs/{task}/{method}/{variant}/seed{seed}"

    def evaluation(self, task: str, method: str) -> str:
        """The evaluate job's output: every run of the task and method, rebuilt from its checkpoint and re-measured."""
        return f"{self.results}/evaluations/{task}/{method}.json"

    def method_jobs(self, task: str, method: str) -> list[Job]:
        """The runs of one task and method in either grid: what its evaluate job re-measures."""
        return [job for job in self.all_jobs if job[:2] == (task, method)]

    def evaluations(self, jobs: list[Job]) -> list[str]:
        """The evaluate outputs that cover ``jobs``, each once."""
        return list(dict.fromkeys(self.evaluation(t, m) for t, m, _, _ in jobs))

    def mpa_dir(self, protocol: str, task: str, key: str, seed: int) -> str:
        return f"{self.results}/mpa/{protocol}/{task}/{key}/seed{seed}"

    def mpa_key(self, task: str, method: str, variant: str) -> str:
        """What MPA of a job depends on beyond task and seed: its prompt count (one band per token) and profile (the
        scorer's defaults), e.g. 'p5' or 'p5-ours'; jobs with the same key share one search."""
        settings = job_settings(self.config, task, method, variant)
        tokens = settings.get("num_tokens", method_spec(method).options().num_tokens)
        profile = settings.get("profile", "official")
        return f"p{tokens}" + ("" if profile == "official" else f"-{profile}")

    def mpa_jobs(self) -> list[tuple[str, str, str, int]]:
        """(protocol, task, MPA key, seed) of every run's MPA, in job order, each once: the final runs', and with an
        lr search the search's (on its training split, with its seed)."""
        search = self.config["search"]
        out = []
        for t, m, v, s in self.all_jobs:
            if "init" in self.parts(v):
                key = self.mpa_key(t, m, v)
                out += [("final", t, key, s)] + ([("tune", t, key, search["seed"])] if search["lr"] else [])
        return list(dict.fromkeys(out))

    @cached_property
    def init_diagnosis_pair(self) -> tuple[str, str] | None:
        """(PAE run, base run) folders the init diagnosis compares: the ablation's first deep method with PAE's init
        alone (else the first variant with init) against it without PAE, on the first task and seed; None without
        an ablation (the diagnosis explains the ablation's init row) and on a Swin (it measures [CLS] attention)."""
        if arch_family(self.config["backbone"]["arch"]) != "vit":
            return None
        grid = self.config["ablation"]
        for method in grid["methods"]:
            variants = self.variants_for(method, grid["pae"])
            base = next((v for v in variants if not self.parts(v)), None)
            with_init = [v for v in variants if "init" in self.parts(v)]
            if method_spec(method).deep and base and with_init:
                pae = self.init_only if self.init_only in with_init else with_init[0]
                task, seed = (grid.get("tasks") or self.config["run"]["tasks"])[0], self.config["run"]["seeds"][0]
                return self.run_dir(task, method, pae, seed), self.run_dir(task, method, base, seed)
        return None

    @cached_property
    def shortcut_files(self) -> list[str]:
        """The shortcut maps the figure shows: each task's, of the first prompted method's MPA key and first seed."""
        run = self.config["run"]
        prompted = next((m for m in run["methods"] if method_spec(m).has_prompts), None)
        if prompted is None:
            return []
        return [
            f"{self.mpa_dir('final', t, self.mpa_key(t, prompted, run['pae'][0]), run['seeds'][0])}/shortcuts.json"
            for t in run["tasks"]
        ]
