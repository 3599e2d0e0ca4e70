"""End to end on data the test makes: `batchnorm reproduce` into tmp_path, reuse, the report
from the run files alone, and `batchnorm train` with a preset."""

from __future__ import annotations

import json
import shutil

import pytest

from batchnorm.cli import main
from batchnorm.experiments.report import write_report
from batchnorm.experiments.reproduce import reproduce

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    reproduce(
        out,
        quick=True,
        only="article001,figure1",
        dataset="synthetic",
        threads=1,
        progress=False,
        steps_cap=6,
    )
    return out


def test_reproduce_writes_runs_and_report(quick_out):
    manifest = json.loads((quick_out / "manifest.json").read_text())
    assert set(manifest["experiments"]) == {"article001", "figure1"}
    names = [
        n for e in manifest["experiments"].values() for runs in e["groups"].values() for n in runs
    ]
    assert len(names) == 8 and manifest["trained"] == 8
    for name in names:
        run = quick_out / "runs" / name
        assert {p.name for p in run.iterdir()} >= {
            "config.json",
            "metrics.jsonl",
            "summary.json",
            "curves.png",
        }
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert rows[0]["step"] == 0 and rows[-1]["step"] == 6
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 6 and 0.0 <= summary["final"]["running"]["test_acc"] <= 1.0
    mlp_bn = [n for n in names if n.startswith("mlp-ours")][0]
    rows = [
        json.loads(x)
        for x in (quick_out / "runs" / mlp_bn / "metrics.jsonl").read_text().splitlines()
    ]
    assert all(len(r["unit_percentiles"]) == 3 for r in rows)  # Figure 1's percentiles
    final = json.loads((quick_out / "runs" / mlp_bn / "summary.json").read_text())["final"]
    assert final["single"]["same_predictions"] and final["batch1"]["error"]  # batch of 1 refused
    md = (quick_out / "report.md").read_text()
    html = (quick_out / "report.html").read_text()
    for text in (md, html):
        # --steps-cap: the pipeline runs, but no verdict is given
        assert "Claim" in text and "NOT DECIDED (--steps-cap)" in text and "NOT HELD" not in text
    assert "runs/" in md and "curves.png" in md  # each run's figure is linked
    assert html.count("data:image/png;base64,") == 2
    assert (quick_out / "figures" / "figure1.png").stat().st_size > 1000


def test_report_from_run_files_alone(quick_out, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(quick_out / "runs", copy / "runs")
    shutil.copy(quick_out / "manifest.json", copy / "manifest.json")
    md, html = write_report(copy)  # nothing trained: only the files
    strip = lambda s: s.split("## Run folders")[0]  # noqa: E731
    assert strip(md.read_text()) == strip((quick_out / "report.md").read_text())
    assert html.read_text().count("<img") == 2


def test_rerun_reuses_finished_runs(quick_out):
    reproduce(
        quick_out,
        quick=True,
        only="article001,figure1",
        dataset="synthetic",
        threads=1,
        progress=False,
        steps_cap=6,
    )
    manifest = json.loads((quick_out / "manifest.json").read_text())
    assert manifest["trained"] == 0 and manifest["reused"] == 8


def test_train_cli_with_preset(tmp_path, capsys):
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"model": "mlp", "norm": "torch", "steps": 4, "batch_size": 16}))
    argv = [
        "train",
        "--preset",
        str(preset),
        "--dataset",
        "synthetic",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
        "--no-progress",
        "--seeds",
        "0,1",
        "--eval-stats",
        "population",
    ]
    assert main(argv) == 0
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(r.name.startswith("mlp-torch-") for r in runs)
    cfg = json.loads((runs[0] / "config.json").read_text())
    assert cfg["steps"] == 4 and cfg["eval_stats"] == "population" and cfg["batch_size"] == 16
    assert main(argv) == 0
    assert "(reused)" in capsys.readouterr().out
    assert main(["train", "--dataset", "synthetic", "--norm", "bn"]) == 2


def test_report_marks_partial_results(quick_out, tmp_path):
    copy = tmp_path / "partial"
    shutil.copytree(quick_out / "runs", copy / "runs")
    shutil.copy(quick_out / "manifest.json", copy / "manifest.json")
    manifest = json.loads((copy / "manifest.json").read_text())
    victim = manifest["experiments"]["article001"]["groups"]["with BN"][1]
    (copy / "runs" / victim / "summary.json").unlink()  # an interrupted run
    md = write_report(copy)[0].read_text()
    assert "PARTIAL: 1 of 6 runs not finished" in md and "(partial)" in md


def _numbers(run_dir):
    """A run's metrics and final results without the times (which vary run to run)."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((run_dir / "summary.json").read_text())["final"]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows], final


def test_parallel_workers_give_the_same_run_files(quick_out, tmp_path):
    # quick_out was trained in 2 worker processes (the default on 2 cores, or as many as
    # there are); here the same runs one after the other in this process.
    serial = tmp_path / "serial"
    reproduce(
        serial,
        quick=True,
        only="article001,figure1",
        dataset="synthetic",
        threads=1,
        workers=1,
        progress=False,
        steps_cap=6,
    )
    m = json.loads((serial / "manifest.json").read_text())
    assert m["workers"] == 1 and m["trained"] == 8
    for run in sorted((serial / "runs").iterdir()):
        assert _numbers(run) == _numbers(quick_out / "runs" / run.name)


def test_interrupted_job_resumes(quick_out, tmp_path):
    copy = tmp_path / "resume"
    shutil.copytree(quick_out / "runs", copy / "runs")
    victim = sorted((copy / "runs").iterdir())[0]
    (victim / "summary.json").unlink()  # killed mid-run: the folder stays, unfinished
    reproduce(
        copy,
        quick=True,
        only="article001,figure1",
        dataset="synthetic",
        threads=1,
        workers=2,
        progress=False,
        steps_cap=6,
    )
    m = json.loads((copy / "manifest.json").read_text())
    assert m["trained"] == 1 and m["reused"] == 7
    assert _numbers(victim) == _numbers(quick_out / "runs" / victim.name)
    md = (copy / "report.md").read_text()
    assert "1 run trained now, 7 reused (finished by an earlier invocation" in md


def test_reproduce_needs_matplotlib_before_training(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ValueError, match=r"matplotlib.*pip install"):
        reproduce(tmp_path, quick=True, dataset="synthetic", progress=False, steps_cap=2)
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_every_experiment_runs_and_plots(tmp_path):
    # All experiments (the main job's and depth), tiny: every rule and figure works.
    md, html = reproduce(
        tmp_path,
        quick=True,
        only="all",
        dataset="synthetic",
        threads=1,
        progress=False,
        steps_cap=3,
    )
    text = md.read_text()
    assert "could not evaluate" not in text and "figure failed" not in text
    figures = {p.stem for p in (tmp_path / "figures").iterdir()}
    assert figures == {
        "article001",
        "figure1",
        "lr_mlp",
        "lr_lenet",
        "init",
        "dropout",
        "batch_size",
        "inference",
        "depth",
    }
    assert html.read_text().count("<img") == 9


def test_interrupted_job_says_so(monkeypatch, tmp_path):
    from batchnorm.experiments import workers

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(workers, "run_configs", stop)
    with pytest.raises(KeyboardInterrupt):
        reproduce(
            tmp_path,
            quick=True,
            only="figure1",
            dataset="synthetic",
            progress=False,
            steps_cap=2,
        )
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["interrupted"] and m["trained"] == 0 and "finished" not in m
    md = write_report(tmp_path)[0].read_text()
    assert "was interrupted after" in md and "2 run(s) not finished" in md


def test_a_selection_gets_its_own_default_folder(tmp_path, monkeypatch, capsys):
    from batchnorm.experiments.reproduce import default_out

    assert default_out(quick=False, only=None) == "reports/full"
    assert default_out(quick=True, only=None) == "reports/quick"
    assert default_out(quick=False, only="depth") == "reports/full-depth"
    assert default_out(quick=True, only="figure1, article001") == (
        "reports/quick-article001+figure1"
    )
    # an unknown id is refused before any folder is made
    monkeypatch.chdir(tmp_path)
    from batchnorm.cli import main

    assert main(["reproduce", "--only", "bogus", "--report-only", "--no-progress"]) == 2
    assert "unknown experiment(s) bogus" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()
