"""Every subset of the steps, in any order: what it runs, what it reuses, and which runs stand in
for the steps it needs but does not run, planned against a real tracking store where the whole
pipeline ran once (sheldon/engine/runner.py, Upstream); SEED.md's `-P steps=download_dataset,train_model`
end to end."""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Iterator

import mlflow
import pytest
from helpers.checkout import REPO
from helpers.project import SHRUNK, STEPS, summary_status
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from mlflow.entities import Run

from sheldon.core.errors import StepError
from sheldon.engine.lineage import CACHED
from sheldon.engine.plan import make_plan
from sheldon.engine.upstream import Upstream

sys.path.insert(0, str(REPO))  # main.py declares the steps
from main import STEPS as PIPELINE  # noqa: E402

SUBSETS = [list(s) for n in range(1, 5) for s in itertools.combinations(STEPS, n)]  # the 15, in order


@pytest.fixture
def store(project, full_run) -> Iterator[None]:
    """The shared project's tracking store, where the shrunk pipeline ran once."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(project.tracking_uri)
    yield
    mlflow.set_tracking_uri(previous)


def plan(spec: str, *overrides: str) -> tuple[Upstream, set[str]]:
    """What main.py plans for `main.steps=<spec>` on the shrunk config: its stand-ins, and the
    steps it forces."""
    with initialize_config_dir(config_dir=str(REPO), version_base=None):
        config = compose(
            config_name="config",
            overrides=[*SHRUNK.split(), f"main.steps='{spec}'", "main.env_manager=local", *overrides],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(config)  # a refusal names the command with the user's overrides
    made = make_plan(config, PIPELINE)
    experiment_id = mlflow.set_experiment(str(config.main.experiment_name)).experiment_id
    return Upstream.of(PIPELINE, config, made, experiment_id), made.forced


def before_last(subset: list[str]) -> list[str]:
    """The steps up to the last selected one: this chain's last step needs every one before it."""
    return STEPS[: STEPS.index(subset[-1]) + 1]


def ids(runs: dict[str, Run | None]) -> dict[str, str | None]:
    return {step: run.info.run_id if run else None for step, run in runs.items()}


def walk(upstream: Upstream, outputs: dict[str, Run]) -> tuple[dict[str, Run], dict[str, str]]:
    """The engine's loop without launching: before each selected step its stand-ins are found,
    then the step yields `outputs[step]` (its run, reused or as a run with the same output)."""
    produced: dict[str, Run] = {}
    origins: dict[str, str] = {}
    for step in upstream.selected:
        upstream.resolve_before(step, produced, origins)
        produced[step] = outputs[step]
    return produced, origins


@pytest.fixture
def full(store) -> dict[str, Run]:
    """The run of each step that the shrunk configuration reuses."""
    foreseen = plan("all")[0].foresee(set())
    assert all(foreseen.values()), ids(foreseen)
    return foreseen  # type: ignore[return-value]


@pytest.mark.parametrize("subset", SUBSETS, ids=",".join)
def test_each_subset_reuses_its_configuration_s_runs_in_any_order(full, subset):
    upstream, forced = plan(",".join(reversed(subset)))  # typed backwards: planned in pipeline order
    assert upstream.selected == subset and not forced
    stand_ins = [s for s in before_last(subset) if s not in subset]
    assert set(upstream.needed_by) == set(stand_ins)
    foreseen = upstream.foresee(forced)
    assert ids(foreseen) == {s: full[s].info.run_id for s in before_last(subset)}
    produced, origins = walk(upstream, full)
    assert origins == dict.fromkeys(stand_ins, CACHED)
    assert ids(produced) == ids(foreseen)


@pytest.mark.parametrize("subset", [s for s in SUBSETS if "download_dataset" in s], ids=",".join)
def test_a_rerun_step_is_followed_by_the_stand_ins_its_output_gives(full, subset):
    """main.force=download_dataset: downloaded again, the same data; the stand-ins after it can be
    looked up only once it ran, and are then this configuration's runs."""
    upstream, forced = plan(",".join(subset), "main.force=download_dataset")
    assert upstream.foresee(forced) == dict.fromkeys(before_last(subset))  # nothing can be told yet
    produced, origins = walk(upstream, full)
    assert ids(produced) == {s: full[s].info.run_id for s in before_last(subset)}
    assert origins == {s: CACHED for s in before_last(subset) if s not in subset}


@pytest.mark.parametrize("subset", SUBSETS, ids=",".join)
def test_a_stand_in_this_configuration_never_produced_is_refused_before_anything_runs(full, subset):
    """preprocess.seed=1234: no preprocess run, nor any after it, matches."""
    upstream, forced = plan(",".join(subset), "preprocess.seed=1234")
    if "preprocess" not in subset and subset != ["download_dataset"]:
        with pytest.raises(StepError) as refused:
            upstream.foresee(forced)
        produce = ",".join(s for s in before_last(subset) if s in subset or s != "download_dataset")
        assert re.fullmatch(
            rf"{upstream.needed_by['preprocess']} needs the output of preprocess, but no finished preprocess "
            r"run matches this configuration \(its code, parameters and inputs\); make one along with the "
            rf"rest: mlflow run \. --env-manager local -P steps={produce} -P hydra_options='.*"
            r"preprocess.seed=1234'  \(or name a run: main.pin=preprocess:<run id>\)",
            str(refused.value),
        ), str(refused.value)
        return
    foreseen = upstream.foresee(forced)
    before = STEPS[: STEPS.index("preprocess")]
    assert ids(foreseen) == {s: full[s].info.run_id if s in before else None for s in before_last(subset)}


def test_a_stand_in_that_a_rerun_step_s_output_does_not_give_is_refused_after_it(full):
    """Forced, download_dataset runs; only then can preprocess's key be known: none matches."""
    upstream, forced = plan(
        "download_dataset,train_model", "main.force=download_dataset", "preprocess.seed=1234"
    )
    assert ids(upstream.foresee(forced)) == dict.fromkeys(STEPS[:3])
    with pytest.raises(StepError, match=r"-P steps=download_dataset,preprocess,train_model "):
        walk(upstream, full)


@pytest.mark.parametrize("subset", SUBSETS, ids=",".join)
def test_a_new_experiment_refuses_each_subset_that_needs_a_step_it_does_not_run(store, subset):
    upstream, forced = plan(",".join(subset), f"main.experiment_name=empty-{len(subset)}-{subset[-1]}")
    if subset == before_last(subset):  # nothing missing: every step runs
        assert upstream.foresee(forced) == dict.fromkeys(subset)
        return
    first = next(s for s in STEPS if s not in subset)
    produce = ",".join(before_last(subset))
    with pytest.raises(StepError, match=rf"needs the output of {first}, .* -P steps={produce} "):
        upstream.foresee(forced)


@pytest.mark.slow  # 15-30 s: the default suite keeps under 15 min
def test_seed_md_subset_download_dataset_and_train_model(project, full_run):
    """SEED.md's example: download_dataset is reused, then preprocess's run of this configuration
    is looked up, and train_model reused; with download_dataset forced, it runs first."""
    for force in ("", "main.force=download_dataset"):
        result = project.mlflow_run("steps=download_dataset,train_model", hydra_options=f"{SHRUNK} {force}")
        assert result.returncode == 0, result.output[-3000:]
        assert "Traceback" not in result.output
        status = "ran" if force else "cached"
        expected = {"download_dataset": status, "preprocess": "cached", "train_model": "cached"}
        assert summary_status(result.stdout) == expected, result.stdout[-2000:]
