"""cookie-mlflow-step, rendered by the real cookiecutter into a temporary copy of the repo: bad
answers are refused with one line before anything is written, and a new step joins the pipeline's
picture once the two edits the generator prints are made (e2e/test_cookiecutter_e2e.py runs it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from helpers.cookiecutter import apply_printed_edits, generate
from helpers.project import Project, make_project

PIPELINE_STEPS = ["download_dataset", "preprocess", "train_model", "evaluate"]


def tree(folder: Path) -> dict[str, str]:
    """Every file and folder below `folder`, with a digest of each file's bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        if path.is_file()
        else "/"
        for path in sorted(folder.rglob("*"))
        if "__pycache__" not in path.parts
    }


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
        ("prestart", "tests/engine/test_prestart.py already exists"),
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
