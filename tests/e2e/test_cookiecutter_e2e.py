"""cookie-mlflow-step end to end: steps rendered by the real cookiecutter into a temporary copy
of the repo are clean, run on their own and, after the two edits the generator prints,
through the pipeline, cached like the built-in steps."""

from __future__ import annotations

import pytest
from helpers.cookiecutter import apply_printed_edits, generate
from helpers.project import BIN, make_project


@pytest.mark.slow  # ~30 s: the default suite keeps under 15 min
def test_generated_steps_run_alone_and_through_the_pipeline(tmp_path):
    project = make_project(tmp_path)
    src = project.root / "src"

    typed = generate(
        project, "step_name=scale_check", "parameters=threshold:float=0.5,epochs:int=3,name,verbose:bool"
    )
    assert typed.returncode == 0, typed.output
    apply_printed_edits(project, typed.stdout)
    plain = generate(  # SEED.md's example answers, with a script of another name
        project,
        "step_name=copy_digits",
        "script_name=transform.py",
        "short_description=Copies the digits",
        "long_description=Reads an artifact and logs it again. " * 4,
        "parameters=parameter1,parameter2,parameter3",
    )
    assert plain.returncode == 0, plain.output
    apply_printed_edits(project, plain.stdout)
    bare = generate(project, "step_name=bare", "parameters=")
    assert bare.returncode == 0, bare.output

    steps = ["scale_check", "copy_digits", "bare"]
    template_env = (
        project.root / "cookie-mlflow-step" / "{{ cookiecutter.step_name }}" / "conda.yml"
    ).read_text()
    made = sorted(p.name for p in (src / "copy_digits").iterdir())
    assert made == ["MLproject", "conda.yml", "settings.py", "transform.py"]
    # where every step's tests live
    tests = [project.root / "tests" / "steps" / f"test_{step}.py" for step in steps]
    for step, test in zip(steps, tests, strict=True):
        for path in [*(src / step).iterdir(), test]:
            assert "{{" not in path.read_text() and "{%" not in path.read_text(), path
        assert (src / step / "conda.yml").read_text() == template_env
    assert (
        '    threshold: float = parameter(0.5, "float argument of process()")\n'
        in (src / "scale_check" / "settings.py").read_text()
    )
    assert "threshold: {type: float, default: 0.5}" in (src / "scale_check" / "MLproject").read_text()
    assert '  epochs: 3\n  name: ""\n  verbose: false\n' in typed.stdout

    assert "  pytest tests/steps/test_scale_check.py\n" in typed.stdout
    for lint in (["check"], ["format", "--check"]):
        result = project.run(str(BIN / "ruff"), *lint, *(f"src/{s}" for s in steps), *map(str, tests))
        assert result.returncode == 0, result.output
    result = project.run(str(BIN / "pytest"), "-q", "-p", "no:cacheprovider", *map(str, tests))
    assert result.returncode == 0 and "6 passed" in result.stdout, result.output
    result = project.run(str(BIN / "python"), "-m", "sheldon.engine.contract", "scale_check", "copy_digits")
    assert result.returncode == 0, result.output
    result = project.run(str(BIN / "python"), "-m", "sheldon.engine.mlproject", "--check", *steps)
    assert result.returncode == 0, result.output  # the template writes what the generator would

    # Without its input, a step says in one line how to give one, before any run opens.
    missing = project.run(str(BIN / "python"), "run.py", cwd=src / "bare")
    assert missing.returncode == 1
    assert [line for line in missing.stderr.splitlines() if line.startswith("error:")] == [
        "error: bare needs input_artifact: --input_artifact runs:/<run id>/<artifact> (run ids are in the "
        "MLflow UI and a pipeline's summary), or let the pipeline find it: mlflow run . --env-manager local "
        "-P steps=bare"
    ]

    # On its own, as an MLflow project, with any artifact URI as input.
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "digits.txt").write_text("0123456789")
    alone = project.run(
        "mlflow", "run", "src/scale_check", "--env-manager", "local", "--experiment-name", "sheldon",
        "-P", f"input_artifact={(tmp_path / 'input').as_uri()}", "-P", "threshold=0.7",
    )  # fmt: skip
    assert alone.returncode == 0, alone.output[-3000:]
    [run] = project.step_runs("scale_check")
    assert run.info.status == "FINISHED"
    assert run.data.params["threshold"] == "0.7" and run.data.params["epochs"] == "3"
    assert run.data.metrics["n_files"] == 1
    artifacts = project.client().list_artifacts(run.info.run_id, "scale_check")
    assert [a.path for a in artifacts] == ["scale_check/digits.txt"]

    # Through the pipeline after the two edits: its input is the output of the run made by hand
    # (pinned: its input was no pipeline's), and a Hydra override reaches its parameter.
    overrides = (
        f"copy_digits.inputs.input_artifact=scale_check/scale_check copy_digits.parameter2=hi "
        f"main.pin=scale_check:{run.info.run_id}"
    )
    piped = project.mlflow_run("steps=copy_digits", hydra_options=overrides)
    assert piped.returncode == 0, piped.output[-3000:]
    [copied] = project.step_runs("copy_digits")
    assert copied.info.status == "FINISHED"
    assert copied.data.params["input_artifact"] == f"runs:/{run.info.run_id}/scale_check"
    assert copied.data.params["parameter2"] == "hi"
    assert [a.path for a in project.client().list_artifacts(copied.info.run_id, "copy_digits")] == [
        "copy_digits/digits.txt"
    ]
    said = [
        line for line in piped.stdout.splitlines() if line.startswith("copy_digits ")
    ]  # its line, its row
    assert len(said) == 2 and all(copied.info.run_id[:8] in s and "n_files=1" in s for s in said), (
        piped.stdout
    )
    assert [r.data.tags["sheldon.step"] for r in project.step_runs()] == ["scale_check", "copy_digits"]

    # Like the built-in steps, it is cached: the same code, parameters and input reuse that run.
    again = project.mlflow_run("steps=copy_digits", hydra_options=overrides)
    assert again.returncode == 0, again.output[-3000:]
    said = [line for line in again.stdout.splitlines() if line.startswith("copy_digits ")]
    assert len(said) == 2 and all("cached" in s and copied.info.run_id[:8] in s for s in said), again.stdout
    assert len(project.step_runs("copy_digits")) == 1
