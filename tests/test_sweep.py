"""A multirun as one family: parent and child runs in a real SQLite store, readable
names, HParams read back with TensorBoard's reader, Optuna trials, the report."""

from __future__ import annotations

import gzip
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from federated_research import run_records
from federated_research.report import ReportError, load_runs, summarise
from federated_research.tracking.sweep import PARENT_TAG, SWEEP_FILE, job_run_name, swept_keys
from tests.conftest import cli_env
from tests.test_train_cli import LINEAR_BITS, _tensorboard

GROUPS = ["dataset", "model", "aggregator", "distributor", "optimizer@client_optimizer",
          "optimizer@server_optimizer", "experiment"]


@pytest.mark.parametrize(("overrides", "swept", "name"), [
    (["aggregator=compression", "seed=1", "rounds=2"], ["aggregator", "seed"],
     "compression-seed1"),
    (["client_optimizer.learning_rate=0.1", "aggregator=mean"],
     ["client_optimizer.learning_rate", "aggregator"], "lr0.1-mean"),
    (["client_optimizer.learning_rate=0.012345678", "server_optimizer.learning_rate=1.5"],
     ["client_optimizer.learning_rate", "server_optimizer.learning_rate"],
     "client_lr0.0123-server_lr1.5"),
    (["optimizer@client_optimizer=adam", "seed=0"], ["optimizer@client_optimizer"],
     "client_optimizer-adam"),
    (["aggregator=powersgd", "aggregator.error_feedback=false"],
     ["aggregator", "aggregator.error_feedback"], "powersgd-no_error_feedback"),
    (["server_optimizer.learning_rate=3", "aggregator=fetchsgd"],
     ["server_optimizer.learning_rate", "aggregator"], "server_lr3-fetchsgd"),
    (["rounds=2"], [], None),
])
def test_a_job_is_named_by_what_differs_in_its_sweep(overrides, swept, name):
    assert job_run_name(overrides, swept, GROUPS) == name


def test_swept_keys_come_from_the_command_line_and_the_sweepers_params():
    hydra_cfg = OmegaConf.create({
        "overrides": {"task": ["aggregator=mean,drive", "seed=range(3)", "rounds=2",
                               "hydra/launcher=joblib"]},
        "sweeper": {"params": {"client_optimizer.learning_rate": "interval(0.01, 0.1)",
                               "seed": "0,1"}}})
    assert swept_keys(hydra_cfg) == ["aggregator", "seed", "client_optimizer.learning_rate"]


def _family(uri: str):
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("run_type") == "sweep"]
    kids = [r for r in runs if r.data.tags.get("run_type") != "sweep"]
    return client, parents, kids


def _metric(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _hparams(logdir: Path) -> dict[str, object]:
    """The session-start hyper-parameters TensorBoard's HParams plugin reads in `logdir`."""
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    info = hparams_metadata.parse_session_start_info_plugin_data(
        content[hparams_metadata.SESSION_START_INFO_TAG])
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
            for k, v in info.hparams.items()} | {"_group": info.group_name}


# One sweep read by several tests: two arms (the mean; DRIVE with a quantising downlink)
# x two seeds, one after the other in one process (the basic launcher) in a new store;
# the seed-7 DRIVE job runs again on Ray (`ray_sweep`), where the reproducibility test
# compares the two (a sweep job costs ~10 s: built once, read by several tests).
SEEDED = ["hydra/sweeper=arms", "hydra.sweeper.arms=['aggregator=mean',"
          "'aggregator=drive distributor=rotated_quantize']", "model=linear", "rounds=2",
          "clients_per_round=3", "eval_every=1", "fed_eval.every=2", "fed_eval.clients=3"]
NAMES = {"mean": "mean", "drive": "drive-rotated_quantize"}
REPRODUCED = ["train/loss", "train/accuracy", "eval/loss", "eval/accuracy",
              "comm/aggregated_bits_cumulative"]


def _sweep(folder: Path, uri: str, *overrides: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "federated_research.train", "-m",
            "tracking.progress_bar=false", *overrides, f"hydra.sweep.dir={folder}/sweep",
            "hydra.sweep.subdir=${hydra.job.num}"]
    return subprocess.run(args, cwd=folder, env=cli_env(uri), capture_output=True, text=True,
                          timeout=600)


def _job_dirs(sweep: Path) -> dict[tuple[str, str], Path]:
    """(aggregator, seed) -> the job's output folder, read from its own overrides."""
    found = {}
    for job in sweep.glob("[0-9]*"):
        given = dict(o.split("=", 1) for o in
                     OmegaConf.load(job / ".hydra" / "overrides.yaml"))
        found[given["aggregator"], given["seed"]] = job
    return found


def _jobs(sweep: Path) -> dict[tuple[str, str], dict]:
    """(aggregator, seed) -> the job's summary.json."""
    return {key: json.loads((job / "summary.json").read_text())
            for key, job in _job_dirs(sweep).items()}


@pytest.fixture(scope="module")
def seeded_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seeded")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return folder, uri, _sweep(folder, uri, *SEEDED, "seed=7,8")


@pytest.mark.slow
@pytest.mark.xdist_group("seeded_sweep")
def test_a_sweep_is_one_parent_with_named_children_hparams_and_a_report(seeded_sweep):
    folder, mlflow_uri, done = seeded_sweep
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    assert "alembic" not in console and "Migration" not in console  # a new store, quietly
    assert "SweepTracking" not in console  # the store and parent were made before the jobs
    job_lines = [line for line in console.splitlines() if "] - job " in line]
    assert len(job_lines) == 4 and any("drive-rotated_quantize-seed8: eval accuracy" in line
                                       for line in job_lines), job_lines
    assert "mlflow ui --backend-store-uri" in console and "tensorboard --logdir" in console

    # the jobs in one new store (made before them: no race), children of one parent
    client, parents, kids = _family(mlflow_uri)
    assert len(parents) == 1 and len(kids) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED" and {k.info.status for k in kids} == {"FINISHED"}
    assert len({r.info.experiment_id for r in [*parents, *kids]}) == 1
    assert {k.data.tags[PARENT_TAG] for k in kids} == {parent.info.run_id}
    assert {k.data.tags["sweep_id"] for k in kids} == {parent.data.tags["sweep_id"]}
    assert {k.info.run_name for k in kids} == {f"{n}-seed{s}" for n in NAMES.values()
                                               for s in (7, 8)}
    assert parent.data.params["sweep.seed"] == "7,8"
    assert parent.data.tags["sweeper"] == "ArmsSweeper"
    assert parent.data.tags["launcher"] == "BasicLauncher"
    sweep = folder / "sweep"
    assert json.loads((sweep / SWEEP_FILE).read_text())["parent_run_id"] == parent.info.run_id
    assert client.get_run(parent.info.run_id).data.metrics["sweep/jobs"] == 4

    # HParams: each job's hyper-parameters beside its scalars; the table at the root
    sessions = {}
    for board in sweep.glob("*/tensorboard"):
        found = _hparams(board)
        sessions[found["_group"].rsplit("-seed", 1)[0], found["seed"]] = found
    assert set(sessions) == {(n, s) for n in NAMES.values() for s in (7, 8)}
    drive = sessions[NAMES["drive"], 8]
    assert drive["model"] == "linear" and drive["rounds"] == 2.0
    assert drive["_group"] == "drive-rotated_quantize-seed8"
    assert drive["distributor"] == "rotated_quantize" and sessions["mean", 8][
        "distributor"] == "plain"
    root = EventAccumulator(str(sweep))
    root.Reload()
    experiment = hparams_metadata.parse_experiment_plugin_data(
        root.PluginTagToContent(hparams_metadata.PLUGIN_NAME)[hparams_metadata.EXPERIMENT_TAG])
    assert {"aggregator", "seed"} <= {h.name for h in experiment.hparam_infos}
    assert "eval/accuracy" in {m.name.tag for m in experiment.metric_infos}

    # the report, on the parent run and in the sweep dir: a row per config, seeds pooled
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/rate_accuracy.png", "report/pareto.png",
            "report/accuracy_vs_round.png", "report/evaluation.png"} <= artifacts
    rows = json.loads((sweep / "report" / "report.json").read_text())["rows"]
    by_config = {r["config"]: r for r in rows}
    assert set(by_config) == set(NAMES.values()), sorted(by_config)
    mean_up = client.get_run(next(k.info.run_id for k in kids if k.info.run_name == "mean-seed7")
                             ).data.metrics["comm/aggregated_bits_cumulative"]
    assert by_config["mean"]["up_bits"] == mean_up
    drive = by_config[NAMES["drive"]]
    assert drive["up_ratio"] > 20 and drive["down_ratio"] > 4  # 1 bit against 32, 8 bits
    assert (sweep / "report" / "pareto.png").stat().st_size > 10_000
    assert "## Report" in client.get_run(parent.info.run_id).data.tags["mlflow.note.content"]


# Hydra's Ray launcher for real (a Ray started on this machine), driven by the arms
# sweeper: the seeded sweep's DRIVE job at seed 7 once more, and beside it the same with
# error feedback, so the report has a feedback gain to give. One Ray CPU: one Ray worker
# pays the TF imports and runs both jobs (two importing at once on a busy machine took
# minutes).
RAY_ARMS = ("hydra.sweeper.arms=['aggregator=drive distributor=rotated_quantize',"
            "'aggregator=drive distributor=rotated_quantize aggregator.error_feedback=ef14']")


@pytest.fixture(scope="module")
def ray_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return folder, uri, _sweep(folder, uri, "hydra/launcher=ray_cluster",
                               "+hydra.launcher.ray.init.num_cpus=1", "hydra/sweeper=arms",
                               RAY_ARMS, *SEEDED[2:], "seed=7")


def _ray_job(folder: Path, feedback: str) -> dict:
    """The summary.json of the Ray sweep's job with that error feedback."""
    (found,) = [json.loads((job / "summary.json").read_text())
                for job in (folder / "sweep").glob("[0-9]*")
                if ("aggregator.error_feedback=ef14" in (job / ".hydra" / "overrides.yaml")
                    .read_text()) == (feedback == "ef14")]
    return found


@pytest.mark.slow
@pytest.mark.xdist_group("seeded_sweep")
def test_same_seed_same_metrics_other_seed_other_metrics(seeded_sweep, ray_sweep):
    """The DRIVE job once more, in another process on another launcher: every random
    stream of a run is in it (client sampling, shuffling, the uplink's rotations, the
    downlink's stochastic rounding); TFF's seeded rounding (`compression`) reproduces in
    tests/test_comm_bits.py."""
    (folder, _, first), (ray_folder, _, again) = seeded_sweep, ray_sweep
    assert first.returncode == 0, first.stderr[-3000:]
    assert again.returncode == 0, again.stderr[-3000:]
    before = _jobs(folder / "sweep")
    assert len(before) == 4
    same = [{k: run[k] for k in REPRODUCED} for run in (before["drive", "7"],
                                                        _ray_job(ray_folder, "none"))]
    assert same[0] == same[1]  # it reproduces its seed
    for arm in NAMES:
        assert before[arm, "8"]["train/loss"] != before[arm, "7"]["train/loss"], arm
    assert before["mean", "7"]["eval/loss"] != before["drive", "7"]["eval/loss"]


@pytest.mark.slow
@pytest.mark.xdist_group("seeded_sweep")
def test_compressed_both_ways_logs_fewer_bits_and_the_errors(seeded_sweep, tmp_path):
    """The sweep's DRIVE job: rotated quantisation down, DRIVE up, their bits and errors
    in MLflow and TensorBoard alike."""
    folder, mlflow_uri, done = seeded_sweep
    assert done.returncode == 0, done.stderr[-3000:]
    client, _, kids = _family(mlflow_uri)
    run_id = next(k.info.run_id for k in kids if k.info.run_name == f"{NAMES['drive']}-seed7")
    comm = json.loads(Path(client.download_artifacts(run_id, "comm_bits.json", str(
        tmp_path))).read_text())["per_client_bits"]
    down = _metric(client, run_id, "comm/broadcasted_bits")
    up = _metric(client, run_id, "comm/aggregated_bits")
    assert down == {0: 3 * comm["model_down"], 1: 3 * comm["model_down"]}
    assert comm["model_down"] < LINEAR_BITS / 4 and comm["model_up"] < LINEAR_BITS / 16
    assert up[0] == 3 * comm["model_up"]
    assert comm["diagnostic_up"] == LINEAR_BITS + 32  # the exact mean, counted apart
    board = _tensorboard(_job_dirs(folder / "sweep")["drive", "7"] / "tensorboard")
    for key in ("comm/update_mse", "comm/update_nmse", "comm/broadcast_mse",
                "comm/broadcast_nmse"):
        logged = _metric(client, run_id, key)
        assert sorted(logged) == [0, 1] and logged[1] > 0, key
        assert board[key] == pytest.approx(logged, rel=1e-6), key
    # The linear model starts at zero, which quantises exactly; updates never do.
    assert _metric(client, run_id, "comm/broadcast_mse")[0] == 0
    assert _metric(client, run_id, "comm/update_nmse")[0] > 0


def _compare_runs(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """scripts/compare_runs.py in this process (its imports are paid already): exit code
    and what it wrote to stderr."""
    monkeypatch.setattr(sys, "argv", ["compare_runs.py", *args])
    try:
        runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "compare_runs.py"),
                       run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
        print(stop.code, file=sys.stderr)
    return code, capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.xdist_group("seeded_sweep")
def test_a_sweeps_runs_exported_to_a_file_give_the_same_report(seeded_sweep, tmp_path,
                                                              monkeypatch, capsys):
    """`compare_runs.py --export`, then `--from` that file with no store: the same rows
    as the report the sweep wrote from MLflow; pooling the file twice counts each run once."""
    folder, mlflow_uri, done = seeded_sweep
    assert done.returncode == 0, done.stderr[-3000:]
    parent = _family(mlflow_uri)[1][0].info.run_id
    monkeypatch.chdir(tmp_path)
    exported = tmp_path / "runs.jsonl.gz"
    assert _compare_runs(monkeypatch, capsys, "--tracking-uri", mlflow_uri, "--parent", parent,
                         "--export", str(exported))[0] == 0
    assert exported.read_bytes()[:2] == b"\x1f\x8b"  # gzip
    code, err = _compare_runs(monkeypatch, capsys, "--from", str(exported), "--from",
                              str(exported), "--json", str(tmp_path / "rows.json"))
    assert code == 0, err
    from_file = json.loads((tmp_path / "rows.json").read_text())
    from_store = json.loads((folder / "sweep" / "report" / "report.json").read_text())["rows"]
    assert len(from_file) == 2 and from_file == json.loads(json.dumps(from_store))
    assert not (tmp_path / "mlflow.db").exists()  # no store was opened or made

    runs = run_records.load(exported)
    assert {r.seed for r in runs} == {"7", "8"} and all(r.accuracy for r in runs)
    lines = gzip.decompress(exported.read_bytes()).decode().splitlines()
    for name, text, message in [
            ("cut.jsonl", "\n".join(lines[:-1]), "truncated: 3 runs of 4"),
            ("foreign.jsonl", '{"format": "other/9"}\n', "not a runs file of this version"),
            ("damaged.jsonl.gz", "not gzip", "damaged or not a runs file"),
            ("broken.jsonl", lines[0] + "\n{", "damaged or not a runs file")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ReportError, match=message):
            run_records.load(tmp_path / name)
    with pytest.raises(ReportError, match="no file .*missing.jsonl .*--export"):
        run_records.load(tmp_path / "missing.jsonl")
    code, err = _compare_runs(monkeypatch, capsys, "--from", str(tmp_path / "cut.jsonl"))
    assert code == 1 and err.count("\n") == 1, err
    assert "truncated" in err and "Fix: pass a file written by --export" in err


def test_a_sweeps_children_are_found_in_other_experiments(mlflow_uri, tmp_path):
    """`-m experiment=a,b` whose presets set tracking.experiment: the parent sits in the
    default experiment, its children in theirs; the sweep still ends FINISHED."""
    import time

    from federated_research.tracking.sweep import SweepInfo, end_sweep

    client = MlflowClient(mlflow_uri)
    home, other = (client.create_experiment(n) for n in ("federated_research", "presets"))
    parent = client.create_run(home, tags={"run_type": "sweep"}).info.run_id
    child = client.create_run(other, tags={PARENT_TAG: parent}).info.run_id
    client.set_terminated(child, "FINISHED")
    info = SweepInfo(uri=mlflow_uri, experiment_id=home, parent_run_id=parent, sweep_id="s",
                     swept=[], groups=[], started=time.time(), folder=str(tmp_path))
    assert end_sweep(info, report=None) == "FINISHED"
    assert client.get_run(parent).data.metrics["sweep/jobs"] == 1


def test_a_sweep_with_a_failed_job_ends_failed_in_one_line(tmp_path, mlflow_uri, run_cli):
    """In parallel (joblib), where the failed job's error comes back pickled from the
    worker process: the other job finishes, the sweep ends FAILED, one line says why."""
    done = run_cli("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "clients_per_round=3,50",
                   "model=linear", "rounds=1", multirun=True)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: clients_per_round=50: the dataset has only 40 training clients. "
                      "Fix: pass clients_per_round=40 or fewer"]
    assert "Traceback" not in done.stderr
    _, parents, kids = _family(mlflow_uri)
    assert [p.info.status for p in parents] == ["FAILED"]
    assert [(k.info.run_name, k.info.status) for k in kids] == [("clients3", "FINISHED")]


def test_an_optuna_search_lands_its_trials_under_one_parent(tmp_path, mlflow_uri, run_cli):
    done = run_cli("hparams_search=learning_rates", "hydra.sweeper.n_trials=2", "rounds=1",
                   "model=linear", "clients_per_round=2", "tracking.experiment=search",
                   "hydra.sweep.dir=search", multirun=True)
    assert done.returncode == 0, done.stderr[-3000:]
    _, parents, kids = _family(mlflow_uri)
    assert len(parents) == 1 and len(kids) == 2
    assert parents[0].data.tags["sweeper"] == "OptunaSweeper"
    assert {k.data.tags[PARENT_TAG] for k in kids} == {parents[0].info.run_id}
    assert all(k.info.run_name.startswith("client_lr") and "-server_lr" in k.info.run_name
               for k in kids)
    rates = {k.data.params["client_optimizer.learning_rate"] for k in kids}
    assert len(rates) == 2  # two different trials
    best = (tmp_path / "search" / "optimization_results.yaml").read_text()
    assert "best_value" in best


def test_the_report_reads_several_experiments_and_refuses_what_it_cannot_find(mlflow_uri):
    client = MlflowClient(mlflow_uri)
    made = []
    for name in ("first", "second"):
        made.append(client.create_run(client.create_experiment(name)).info.run_id)
        client.set_terminated(made[-1], "FINISHED")
    runs, _ = load_runs(mlflow_uri, experiment="first, second")
    assert sorted(r.run_id for r in runs) == sorted(made)
    assert len(load_runs(mlflow_uri, experiment="second")[0]) == 1
    with pytest.raises(ReportError, match="no experiment 'nothing'"):
        load_runs(mlflow_uri, experiment="first,nothing")
    with pytest.raises(ReportError, match="no FINISHED run"):
        summarise([])


def test_the_arms_sweeper_runs_each_arm_with_each_grid_point():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.federated_research_arms.arms_sweeper import ArmsSweeper

    sweeper = ArmsSweeper(arms=["aggregator=mean", "aggregator=topk aggregator.fraction=0.1"])
    overrides = OverridesParser.create().parse_overrides(["seed=0,1", "rounds=2",
                                                          "aggregator=drive"])
    jobs = sweeper.split_arguments(overrides, None)
    assert jobs == [[["seed=0", "rounds=2", "aggregator=mean"],
                     ["seed=1", "rounds=2", "aggregator=mean"],
                     ["seed=0", "rounds=2", "aggregator=topk", "aggregator.fraction=0.1"],
                     ["seed=1", "rounds=2", "aggregator=topk", "aggregator.fraction=0.1"]]]
    assert [len(batch) for batch in sweeper.split_arguments(overrides, 3)] == [3, 1]
    # the command line (after the preset's params) narrows a preset's grid
    narrowed = OverridesParser.create().parse_overrides(["seed=0,1,2", "n=40,100,300",
                                                          "seed=0", "n=100,300"])
    assert sweeper.split_arguments(narrowed, None) == [[
        ["seed=0", "n=100", "aggregator=mean"], ["seed=0", "n=300", "aggregator=mean"],
        ["seed=0", "n=100", "aggregator=topk", "aggregator.fraction=0.1"],
        ["seed=0", "n=300", "aggregator=topk", "aggregator.fraction=0.1"]]]


@pytest.mark.slow
@pytest.mark.xdist_group("seeded_sweep")
def test_a_feedback_sweep_runs_on_a_local_ray_and_reports_its_gain(ray_sweep):
    """The parent and children as with the basic launcher; the report's feedback table
    from what the two jobs logged."""
    folder, mlflow_uri, done = ray_sweep
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Started a local Ray instance" in done.stderr
    _, parents, kids = _family(mlflow_uri)
    assert len(parents) == 1 and parents[0].data.tags["launcher"] == "RayLauncher"
    assert parents[0].data.tags["sweeper"] == "ArmsSweeper"
    assert parents[0].info.status == "FINISHED"
    assert {k.info.status for k in kids} == {"FINISHED"}
    assert sorted(k.info.run_name for k in kids) == ["drive-rotated_quantize",
                                                     "drive-rotated_quantize-ef14"]
    assert {k.data.tags[PARENT_TAG] for k in kids} == {parents[0].info.run_id}
    report = json.loads((folder / "sweep" / "report" / "report.json").read_text())
    (gain,) = report["feedback_gains"]
    accuracy = {r["config"]: r["accuracy"] for r in report["rows"]}
    assert gain["participation"] == 3 / 40 and gain["config"] != gain["without"]
    assert gain["gain"] == pytest.approx(
        100 * (accuracy[gain["config"]] - accuracy[gain["without"]]))
    assert _ray_job(folder, "ef14")["train/loss"] != _ray_job(folder, "none")["train/loss"]
    assert "Error feedback's gain" in (folder / "sweep" / "report" / "report.md").read_text()


def test_the_gain_is_plotted_against_participation_when_the_sweep_spans_it(tmp_path):
    from federated_research import feedback_gain

    rows = [{"config": f"topk-{kind}-nclients{n}", "without": f"topk-none-nclients{n}",
             "method": f"topk-nclients{n}", "feedback": kind, "participation": 10 / n,
             "seeds": 3, "gain": gain, "gain_std": 0.5}
            for kind, n, gain in (("ef14", 40, 2.6), ("ef14", 300, 0.4), ("ef21", 40, 1.9))]
    path = feedback_gain.plot(rows, tmp_path, "participation")
    assert path == tmp_path / "gain_vs_participation.png" and path.stat().st_size > 5000
    assert feedback_gain.plot(rows[:1], tmp_path / "one", "one point") is None
    assert "| topk-ef14-nclients300 | topk-none-nclients300 | 0.0333 | 3 | +0.40 |" in (
        feedback_gain.markdown(rows))


def test_participation_comes_from_the_logged_population_when_the_config_has_none():
    """FEMNIST's writers are the dataset's own clients (dataset.num_clients=None): the
    gain table reads the population the runs logged (data/train_clients)."""
    from federated_research import feedback_gain
    from federated_research.report import Run

    def run(seed, accuracy, train_clients):
        return Run(run_id=seed, name="", seed=seed, params={}, choices={},
                   accuracy={199: accuracy}, up={}, down={}, round_seconds={},
                   update_nmse=[], train_clients=train_clients)

    common = {"clients_per_round": "10", "dataset.num_clients": "None"}
    none, ef14 = (tuple(sorted({**common, "aggregator.error_feedback": k}.items()))
                  for k in ("none", "ef14"))
    configs = {none: [run("0", 0.86, 300), run("1", 0.80, 300)],
               ef14: [run("0", 0.89, 300), run("1", 0.84, 300)]}
    labels = {none: "topk-none-nclients300", ef14: "topk-ef14-nclients300"}
    (row,) = feedback_gain.feedback_gains(configs, labels)
    assert row["method"] == "topk-nclients300"  # the plot's series: "topk + ef14"
    assert row["participation"] == pytest.approx(10 / 300)
    assert row["gain"] == pytest.approx(3.5) and row["seeds"] == 2
    # +3 and +4 points: t(0.975, 1 df) = 12.706, sd 0.707 over 2 seeds: [-2.85, +9.85]
    assert row["gain_ci"] == pytest.approx([3.5 - 6.3531, 3.5 + 6.3531], abs=1e-3)
    assert row["distinguishable"] is False
    assert "| +3.50 | 0.71 | [-2.85, +9.85] n.s. |" in feedback_gain.markdown([row])
    configs = {k: [run(r.seed, r.final_accuracy, None) for r in v] for k, v in configs.items()}
    (row,) = feedback_gain.feedback_gains(configs, {none: "topk-none", ef14: "topk-ef14"})
    assert row["participation"] is None  # nothing says how many clients there are


def test_a_package_override_in_an_arm_is_a_parameter_mlflow_takes(mlflow_uri):
    """`distributor@distributor.codec=...` in an arm: MLflow refuses `@` in a parameter's
    name, and the sweep's parent was left RUNNING with its start half done."""
    from mlflow.entities import Param

    from federated_research.tracking.sweep import sweep_params
    from tests.conftest import compose_config

    arm = "aggregator=drive distributor=federated_dropout distributor@distributor.codec=quantize"
    cfg = compose_config(["hydra/sweeper=arms", f"hydra.sweeper.arms=['{arm}','aggregator=mean']",
                          "optimizer@client_optimizer=sgd"], hydra_config=True)
    params = sweep_params(cfg.hydra)
    assert params["sweep.distributor.codec"] == "quantize"
    assert params["sweep.aggregator"] == "drive,mean"
    client = MlflowClient(mlflow_uri)
    run = client.create_run(client.create_experiment("arms"))
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    assert client.get_run(run.info.run_id).data.params["sweep.distributor.codec"] == "quantize"
