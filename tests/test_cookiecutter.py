"""cookie-mlflow-step, rendered by the real cookiecutter into a temporary copy of the repo: the new
step is clean, runs on its own, and joins the pipeline with the two edits the generator prints.
Bad answers are refused with one line before anything is written."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, Project, make_project

COOKIECUTTER = str(BIN / "cookiecutter")
PIPELINE_STEPS = ["download_dataset", "preprocess", "train_model", "evaluate"]


def generate(project: Project, *answers: str, force: bool = False) -> subprocess.CompletedProcess:
    """`cookiecutter cookie-mlflow-step -o src` as the docs show it, answers given as extra context."""
    flags = ["--overwrite-if-exists"] if force else []
    return project.run(COOKIECUTTER, "cookie-mlflow-step", "--no-input", *flags, "-o", "src", *answers)


def apply_printed_edits(project: Project, printed: str) -> None:
    """The two edits the generator prints, made as a user would: the printed line goes at the end
    of main.py's `_steps`, and the config section before `hydra:` in config.yaml."""
    entry = re.search(r"^1\. main\.py: .*?\n\n(    \"\w+\",\n)", printed, re.MULTILINE | re.DOTALL).group(1)
    main = project.root / "main.py"
    steps_end = re.compile(r"^(_steps = \[\n.*?)^\]", re.MULTILINE | re.DOTALL)
    text, count = steps_end.subn(lambda found: f"{found.group(1)}{entry}]", main.read_text(), count=1)
    assert count == 1
    main.write_text(text)
    section = re.search(r"add its section \(before `hydra:`\):\n\n(.*?)\n\n", printed, re.DOTALL).group(1)
    config = project.root / "config.yaml"
    config.write_text(config.read_text().replace("\nhydra:", f"\n{section}\n\nhydra:", 1))


def tree(folder: Path) -> dict[str, str]:
    """Every file and folder below `folder`, with a digest of each file's bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        if path.is_file()
        else "/"
        for path in sorted(folder.rglob("*"))
        if "__pycache__" not in path.parts
    }


@pytest.mark.e2e
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
    tests = [project.root / "tests" / f"test_{step}.py" for step in steps]  # where every step's tests live
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

    assert "  pytest tests/test_scale_check.py\n" in typed.stdout
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


@pytest.fixture(scope="module")
def bare_project(tmp_path_factory) -> Project:
    return make_project(tmp_path_factory.mktemp("cookiecutter"))


@pytest.mark.parametrize(
    "answers, refusal",
    [
        (["step_name=data-prep"], "step_name 'data-prep' is not a Python identifier"),
        (["step_name=2nd_pass"], "step_name '2nd_pass' is not a Python identifier"),
        (["step_name=../evil"], "step_name '../evil' is not a Python identifier"),
        (["step_name=new", "parameters=lr:float,batch-size:int"], "parameter name 'batch-size' is not"),
        (["step_name=new", "parameters=lr:float,epochs:int,lr"], "parameter 'lr' is given twice"),
        (["step_name=new", "parameters=input_artifact"], "'input_artifact' is taken by the generated step"),
        (
            ["step_name=new", "parameters=lr,on:bool"],
            "parameter name 'on' reads as a boolean or null in YAML",
        ),
        (["step_name=new", "parameters=lr:double=0.1"], "unknown type 'double'; use one of str, int, float"),
        (["step_name=new", "parameters=epochs:int=many"], "default 'many' is not an int"),
        (["step_name=new", "script_name=run.sh"], "script_name 'run.sh' must be a file name like run.py"),
        (["step_name=new", "job_type=a b"], "job_type 'a b' must be letters, digits"),
        (["step_name=os"], "step_name 'os' would shadow the Python module os (Python's standard library)"),
        (["step_name=torch"], "step_name 'torch' would shadow the Python module torch (installed by torch)"),
        (["step_name=wandb"], "step_name 'wandb' would shadow the Python module wandb (installed by wandb)"),
        (["step_name=sheldon"], "would shadow the Python module sheldon (the pipeline's own library)"),
    ],
    ids=[
        "dash",
        "digit",
        "path",
        "param-name",
        "param-twice",
        "param-reserved",
        "param-yaml",
        "type",
        "default",
        "script",
        "job-type",
        "shadows-stdlib",
        "shadows-dependency",
        "shadows-wandb",
        "shadows-sheldon",
    ],
)
def test_bad_answers_are_refused_before_anything_is_written(bare_project, answers, refusal):
    before = tree(bare_project.root)
    result = generate(bare_project, *answers)
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ") and refusal in line
    assert tree(bare_project.root) == before


@pytest.mark.parametrize(
    "step, refusal",
    [
        ("preprocess", "src/preprocess already exists"),
        ("data", "config.yaml already has a section 'data'"),
        ("prestart", "tests/test_prestart.py already exists"),
    ],
)
def test_existing_step_or_section_is_refused_by_the_pre_generation_hook(bare_project, step, refusal):
    before = tree(bare_project.root / "src")
    result = generate(bare_project, f"step_name={step}", force=True)  # even when told to overwrite
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and refusal in line
    assert "Traceback" not in result.output
    assert tree(bare_project.root / "src") == before


def test_existing_folder_is_refused_without_overwrite(bare_project):
    before = tree(bare_project.root / "src")
    result = generate(bare_project, "step_name=evaluate")
    assert result.returncode == 1
    assert result.output.strip() == 'Error: "src/evaluate" directory already exists'
    assert tree(bare_project.root / "src") == before


def test_a_new_step_joins_the_pipelines_picture_once_added_to_steps(tmp_path):
    """`make dag` draws main.py's steps with config.yaml's inputs: a generated step appears once the
    two printed edits add it, reading the artifact its section names."""
    project = make_project(tmp_path)
    made = generate(project, "step_name=clean_digits", "parameters=threshold:float=0.5")
    assert made.returncode == 0, made.output
    before = project.run("python", "-m", "sheldon.engine.dag")
    assert before.returncode == 0 and "clean_digits" not in before.stdout, before.output
    apply_printed_edits(project, made.stdout)
    after = project.run("python", "-m", "sheldon.engine.dag")
    assert after.returncode == 0, after.output
    lines = after.stdout.splitlines()
    assert "    clean_digits[clean_digits]" in lines
    assert "    download_dataset__raw_data -- input_artifact --> clean_digits" in lines
    assert set(before.stdout.splitlines()) <= set(lines)  # the rest of the picture as it was
