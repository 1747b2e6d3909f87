"""The ``edgefed`` command line (typer + rich).

    edgefed run CONFIG [--engine simulation|deployment] [--out DIR] [--run-id ID]
                       [--report-url URL] [--report-token TOKEN | $EDGEFED_REPORT_TOKEN]
    edgefed devices
    edgefed methods
    edgefed plan --device D --model M
    edgefed fleet up|down|status
    edgefed sweep SWEEP [--engine E] [--out DIR]
    edgefed demo
    edgefed dashboard [--host H] [--port P] [--db URL] [--token T] [--data-dir DIR]
                      [--max-runs N] [--launch FILE]
    edgefed compose [--fleet FLEET] [--out FILE] [--tls]

A config file that is refused (unreadable, bad syntax, any wrong field) stops the command before
anything is written: exit code 2 and, on stderr, one line per problem (``field: reason``, or
``file:line:column: what`` for syntax), never a traceback. The checks are ``common.validate``'s,
the same as the dashboard's.
"""

from __future__ import annotations

import gc
import json
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from common.compression.registry import REGISTRY
from common.config import ConfigError, Engine, ExperimentConfig, ModelName
from common.devices import assign_devices, load_catalogue
from common.events import Event
from common.record import ClientRecord
from common.validate import check_experiment, load_config, load_sweep, problems_of
from server.compose import compose_command

if TYPE_CHECKING:
    from server.fleet import FleetState

app = typer.Typer(help="Federated fine-tuning on memory-capped edge devices.", no_args_is_help=True)
fleet_app = typer.Typer(help="A deployment fleet on loopback: SuperLink + SuperNodes.")
app.add_typer(fleet_app, name="fleet")
app.command("compose")(compose_command)
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, highlight=False, soft_wrap=True)
INVALID = 2
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"
FLEET_DIR = Path("runs/fleet")


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.2f} MiB"


def _fail(message: str) -> typer.Exit:
    errors.print(f"[bold red]invalid config[/]: {escape(message)}")
    return typer.Exit(INVALID)


def refuse(error: ConfigError) -> typer.Exit:
    """Print every problem of ``error`` on stderr, one per line; the exit (code 2) to raise.

    A file that cannot be read or parsed is one line (``invalid config: f.yaml:3:1: ...``);
    field problems follow a line naming the file.
    """
    if len(error.problems) == 1 and not error.problems[0].field:
        return _fail(str(error.problems[0]))
    source = f" {error.source}" if error.source else ""
    errors.print(f"[bold red]invalid config[/]{escape(source)}:")
    for problem in error.problems:
        errors.print(f"  {problem}", markup=False)
    return typer.Exit(INVALID)


def load_experiment(path: Path) -> ExperimentConfig:
    """Read and check an experiment (``common.validate``); exit 2 listing every problem."""
    try:
        return load_config(path)
    except ConfigError as error:
        raise refuse(error) from None


@app.command()
def run(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="experiment YAML/JSON")],
    engine: Annotated[Engine, typer.Option(help="Flower engine")] = "simulation",
    out: Annotated[Path | None, typer.Option(help="output folder")] = None,
    run_id: Annotated[str | None, typer.Option(help="run id used in events")] = None,
    report_url: Annotated[str, typer.Option(help="POST every event here")] = "",
    report_token: Annotated[str, typer.Option(
        envvar="EDGEFED_REPORT_TOKEN", show_envvar=True,
        help="bearer token for report-url (prefer the variable: argv is world-readable)")] = "",
) -> None:
    """Run one experiment: progress per round, a per-client table at the end."""
    config = load_experiment(config_path)
    from common.train import pretraining_tradeoff  # imported late: torch is slow to import
    from server import runner  # imported late: `edgefed devices` stays fast

    tradeoff = pretraining_tradeoff(config)
    if tradeoff:
        console.print(f"[yellow]note[/]: {tradeoff}")

    run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    out = out or Path("runs") / run_id
    _claimable(out)
    runner.install_signal_handlers()
    clients: dict[int, ClientRecord] = {}
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console,
    ) as progress:
        task = progress.add_task(f"{config.name} ({engine})", total=config.rounds,
                                 status="starting")

        def on_event(event: Event) -> None:
            if event.round is not None:
                r = event.round
                progress.update(task, completed=r.round, status=(
                    f"round {r.round}: acc {r.accuracy:.3f} ok {r.num_ok} failed {r.num_failed}"))
            elif event.client is not None and event.client.phase == "train":
                clients[event.client.partition_id] = event.client
            elif event.state is not None:
                progress.update(task, status=event.state.message)

        try:
            outcome = runner.run(config, load_catalogue(), engine, out, run_id,
                                 report_url, report_token, on_event)
        except runner.RunCancelled as why:
            raise _cancelled(why) from None
    console.print(client_table(clients.values()))
    rounds = [e.round for e in outcome.events if e.round is not None]
    if rounds:
        start = "pretrained" if config.pretrain_epochs else "initial"
        console.print(f"test accuracy {rounds[0].accuracy:.4f} ({start}) -> "
                      f"{rounds[-1].accuracy:.4f} after round {rounds[-1].round}"
                      + (" (reduced pretraining, see the note above)" if tradeoff else ""))
    console.print(f"flower status {outcome.status}, {outcome.wall_s:.1f} s; events in "
                  f"{out / 'events.jsonl'}")
    final = outcome.state
    if final.status != "finished":
        errors.print(f"[bold red]run failed[/]: {escape(final.message)}")
        raise typer.Exit(1)
    if outcome.verdict.degraded:
        console.print(f"[yellow]{escape(final.message)}[/]")


def _cancelled(why: Exception) -> typer.Exit:
    """Say the run was cancelled (its processes are stopped by then); the exit (130) to raise.

    The exit must be quick too (the whole stop within 2 s): objects alive now are frozen out of
    the interpreter's final garbage collection, which walks torch's objects (loaded to check
    configs) for about 2 s on a loaded 2-core machine, 0.7 s once frozen."""
    console.print(f"[yellow]cancelled ({escape(str(why))}); every process stopped[/]")
    gc.freeze()
    return typer.Exit(130)


def _claimable(out: Path) -> None:
    """Exit 2 before anything is written if ``out`` holds an earlier run's files."""
    from server.runner import OutDirInUse, check_out_dir

    try:
        check_out_dir(out)
    except OutDirInUse as err:
        errors.print(f"[bold red]invalid output folder[/]: {escape(str(err))}")
        raise typer.Exit(INVALID) from None


def client_table(results: object) -> Table:
    """The last train record of every client: the budget beside the quantity it constrains
    (training: activations kept + gradients + optimizer state), the activations the methods
    compress, and the whole step's measured peak."""
    table = Table(title="clients (last round)")
    for column in ("partition", "device", "status", "method", "last_k", "eps", "batch",
                   "activations", "training", "budget", "step peak", "acc", "sim s", "reason"):
        table.add_column(column)
    for r in sorted(results, key=lambda r: r.partition_id):
        table.add_row(
            str(r.partition_id), r.device, r.status, r.method or "-", str(r.last_k or "-"),
            "-" if r.eps is None else f"{r.eps:.2f}", str(r.batch_size or "-"),
            _mib(r.activation_bytes), _mib(r.training_bytes), _mib(r.budget_bytes),
            _mib(r.peak_step_bytes),
            "-" if r.accuracy is None else f"{r.accuracy:.3f}",
            "-" if r.sim_time_s is None else f"{r.sim_time_s:.1f}", r.reason[:60],
        )
    return table


@app.command()
def devices() -> None:
    """List the device catalogue and its named fleets; a budget scaled down from the real
    board's (``board_budget_bytes``) is marked with its scale, and its note says why."""
    catalogue = load_catalogue()
    table = Table(title="device catalogue")
    for column in ("name", "budget", "board budget", "ram limit", "GFLOP/s", "up Mbit/s",
                   "down Mbit/s", "availability", "cpus", "description"):
        table.add_column(column)
    for p in catalogue.profiles.values():
        scale = p.budget_scale
        budget = _mib(p.budget_bytes) + ("" if scale is None or scale == 1.0
                                         else f" (scaled 1/{1 / scale:.0f})")
        description = "\n".join(part for part in (p.description, p.budget_note) if part)
        table.add_row(p.name, budget, _mib(p.board_budget_bytes), _mib(p.ram_bytes),
                      f"{p.flops / 1e9:g}", f"{p.uplink_bps / 1e6:g}",
                      f"{p.downlink_bps / 1e6:g}", f"{p.availability:.2f}", f"{p.cpus:g}",
                      description)
    console.print(table)
    for name, mix in catalogue.fleets.items():
        console.print(f"fleet [bold]{name}[/]: " + ", ".join(f"{n} x {d}" for d, n in mix.items()))


@app.command()
def methods() -> None:
    """List the compression methods (the registry), their parameters and fallbacks."""
    table = Table(title="compression methods")
    for column in ("method", "parameters", "planner falls back to", "what it keeps"):
        table.add_column(column)
    for spec in REGISTRY.values():
        table.add_row(spec.name, "\n".join(f"{p.name}: {p.rule}" for p in spec.params) or "-",
                      ", ".join(spec.cheaper) or "-", spec.summary)
    console.print(table)


@app.command()
def plan(
    device: Annotated[str, typer.Option(help="catalogue profile")],
    model: Annotated[ModelName, typer.Option(help="architecture")] = "mobilenetv2",
    config_path: Annotated[Path | None, typer.Option("--config", help="experiment")] = None,
) -> None:
    """What fits DEVICE's budget for MODEL: every option tried, measured, and the choice."""
    catalogue = load_catalogue()
    if device not in catalogue.profiles:
        raise _fail(f"device: unknown device {device!r} (known: {', '.join(catalogue.profiles)})")
    base = load_experiment(config_path or DEMO_CONFIG)
    try:  # another model: last_k is checked against its layers
        config = check_experiment({**base.model_dump(), "model": model},
                                  source=f"{config_path or DEMO_CONFIG} with --model {model}")
    except ConfigError as error:
        raise refuse(error) from None
    from server.task import plan_device  # torch is imported only here

    result = plan_device(config, catalogue.profile(device))
    table = Table(title=f"{device}: budget {_mib(result.device.budget_bytes)}, {model}")
    for column in ("option", "training bytes", "fits", "how"):
        table.add_column(column)
    for option in result.options:
        table.add_row(option.candidate.describe(), _mib(option.training_bytes),
                      "yes" if option.fits else "no",
                      "measured" if option.measured else "grads+momentum alone")
    console.print(table)
    if result.fits:
        console.print(f"[green]chosen[/]: {result.chosen.describe()} "
                      f"({_mib(result.needed_bytes)})")
    else:
        console.print(f"[red]nothing fits[/]: {result.reason}")


@fleet_app.command("up")
def fleet_up(
    fleet: Annotated[str, typer.Option(help="named fleet of the catalogue")] = "compose",
    config_path: Annotated[Path | None, typer.Option("--config", help="use its fleet")] = None,
    directory: Annotated[Path, typer.Option("--dir")] = FLEET_DIR,
) -> None:
    """Start a SuperLink and one memory-limited SuperNode per device."""
    from server import fleet as deployment

    catalogue = load_catalogue()
    if config_path:
        config = load_experiment(config_path)
    else:
        try:
            config = ExperimentConfig(fleet=catalogue.fleet(fleet))
        except KeyError as err:
            raise _fail(f"fleet: {err.args[0]}") from None
    if deployment.load(directory) is not None:
        console.print(f"a fleet is already up in {directory}; `edgefed fleet down` first")
        raise typer.Exit(1)
    state = deployment.up(directory, assign_devices(config.fleet, catalogue))
    limit = state.nodes[0].process.limit if state.nodes else "-"
    console.print(f"SuperLink {state.address}, {len(state.nodes)} SuperNodes, each ClientApp "
                  f"under its device's memory limit ({limit})")
    _warn_if_rlimit(state)


def _warn_if_rlimit(state: FleetState) -> None:
    from server.fleet import limit_warning

    if warning := limit_warning(state):
        console.print(f"[yellow]warning[/]: {warning}")


@fleet_app.command("down")
def fleet_down(directory: Annotated[Path, typer.Option("--dir")] = FLEET_DIR) -> None:
    """Stop every process of the fleet by pid."""
    from server import fleet as deployment

    console.print(f"stopped {deployment.down(directory)} running processes")


@fleet_app.command("status")
def fleet_status(directory: Annotated[Path, typer.Option("--dir")] = FLEET_DIR) -> None:
    """List the fleet's processes, their limits and whether they run."""
    from server import fleet as deployment

    state = deployment.load(directory)
    if state is None:
        console.print(f"no fleet in {directory}")
        return
    table = Table(title=f"fleet {state.group} at {state.address}")
    for column in ("role", "pid", "device", "limit", "memory limit", "running"):
        table.add_column(column)
    table.add_row("superlink", str(state.superlink.pid), "-", "-", "-",
                  str(state.superlink.alive()))
    for node in state.nodes:
        for p in (node.supernode, node.process):
            table.add_row(p.role, str(p.pid), node.device, p.limit, _mib(p.limit_bytes),
                          str(p.alive()))
    console.print(table)
    _warn_if_rlimit(state)


@app.command()
def sweep(
    sweep_path: Annotated[Path, typer.Argument(metavar="SWEEP", help="sweep YAML/JSON")],
    engine: Annotated[Engine, typer.Option(help="Flower engine")] = "simulation",
    out: Annotated[Path | None, typer.Option(
        help="one sub-folder per experiment (default runs/sweep-DATE-TIME)")] = None,
) -> None:
    """Run every experiment of a methods x budgets sweep; summary table + summary.json.
    Exit code 1 if any experiment failed."""
    try:
        experiments = load_sweep(sweep_path)
    except ConfigError as error:
        raise refuse(error) from None
    out = out or Path("runs") / time.strftime("sweep-%Y%m%d-%H%M%S")
    for config in experiments:
        _claimable(out / config.name)
    from server import runner

    runner.install_signal_handlers()
    rows = []
    for config in experiments:
        console.print(f"[bold]{config.name}[/]")
        try:
            outcome = runner.run(config, load_catalogue(), engine, out / config.name,
                                 config.name)
        except runner.RunCancelled as why:
            raise _cancelled(why) from None
        rows.append(sweep_row(config, outcome))
    table = Table(title=f"sweep {sweep_path.name}")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    if failed := [row["experiment"] for row in rows if row["status"] != "finished"]:
        errors.print(f"[bold red]failed[/]: {escape(', '.join(failed))}")
        raise typer.Exit(1)


def sweep_row(config: ExperimentConfig, outcome: object) -> dict[str, object]:
    """One Pareto point: final test accuracy vs mean measured activation bytes of the clients."""
    rounds = [e.round for e in outcome.events if e.round is not None]
    clients = [e.client for e in outcome.events if e.client is not None]
    ok = [c for c in clients if c.status == "ok"]
    return {
        "experiment": config.name,
        "status": outcome.state.status,
        "degraded": outcome.verdict.degraded,
        "accuracy": round(rounds[-1].accuracy, 4) if rounds else None,
        "activation_bytes": int(sum(c.activation_bytes for c in ok) / len(ok)) if ok else None,
        "compressed_bytes": int(sum(c.compressed_bytes for c in ok) / len(ok)) if ok else None,
        "ok": len(ok),
        "oom": sum(c.status == "oom" for c in clients),
    }


@app.command()
def demo(engine: Annotated[Engine, typer.Option()] = "simulation") -> None:
    """Run the quickstart federation (what `make run` starts)."""
    run(DEMO_CONFIG, engine=engine, out=None, run_id=None, report_url="", report_token="")


@app.command()
def dashboard(
    host: Annotated[str | None, typer.Option(help="address to bind (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8080)")] = None,
    db: Annotated[str | None, typer.Option(help="SQLAlchemy URL (default: SQLite file)")] = None,
    token: Annotated[str | None, typer.Option(help=(
        "bearer token for mutating endpoints (prefer EDGEFED_DASHBOARD_TOKEN: argv is "
        "world-readable)"))] = None,
    data_dir: Annotated[Path | None, typer.Option(
        help="folder of the SQLite database (unless --db) and the run folders "
             "(default runs/dashboard)")] = None,
    max_runs: Annotated[int | None, typer.Option(
        help="runs executed at once (default 1; 0 pauses the queue)")] = None,
    launch: Annotated[list[Path] | None, typer.Option(
        help="experiment YAML/JSON to launch at startup (repeatable; an experiment with the "
             "same config is reused, and nothing starts while one of its runs is active)")] = None,
) -> None:
    """Serve the experiment dashboard (FastAPI) until interrupted."""
    from pydantic import ValidationError

    from server.dashboard.serve import serve  # FastAPI and uvicorn load only for this command
    from server.dashboard.settings import Settings

    try:
        serve(host=host, port=port, db_url=db, token=token, launch=launch or (),
              data_dir=data_dir, max_concurrent_runs=max_runs)
    except ConfigError as error:  # a --launch file
        raise refuse(error) from None
    except ValidationError as error:  # the flags and EDGEFED_DASHBOARD_* variables
        raise refuse(ConfigError(problems_of(error, Settings), "dashboard settings")) from None
