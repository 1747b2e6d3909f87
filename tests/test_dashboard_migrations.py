"""Schema migrations: a database made by the dashboard of ace9c78 (before migrations; made by
``tests/fixtures/make_dashboard_ace9c78.py``) opens with today's code, upgrades in place and
serves its old runs as that code did, apart from the record's new and renamed fields; a new
database and an upgraded one both match the models exactly."""

from __future__ import annotations

import csv
import importlib
import io
import json
import shutil
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic import BaseModel
from sqlalchemy import Text, create_engine, inspect, text

from server.dashboard.migrations import alembic_config, upgrade
from server.dashboard.models import Base, record_columns
from server.dashboard.store import hash_token
from tests.dashboard_support import tiny_config
from tests.test_dashboard_api import client_event, create, make_client, post

FIXTURES = Path(__file__).with_name("fixtures")
OLD = json.loads((FIXTURES / "dashboard-ace9c78.json").read_text())
RAN_WITH = importlib.import_module(  # what revision 0004 writes into configs lacking it
    "server.dashboard.migrations.versions.0004_config_defaults").RAN_WITH
RENAMED = {"peak_bytes": "peak_forward_bytes"}  # ace9c78's name -> the record's
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
NEW_FIELDS = {"training_bytes", "grad_bytes", "optimizer_bytes", "param_bytes",
              "transient_bytes", "peak_step_bytes", "rss_peak_bytes", "memory_limit_bytes"}


def _old_database(tmp_path: Path) -> Path:
    shutil.copy(FIXTURES / "dashboard-ace9c78.db", tmp_path / "dashboard.db")
    return tmp_path / "dashboard.db"


def _schema_differences(url: str) -> list:
    with create_engine(url).connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)


def _config_today(old: dict) -> dict:
    """An old experiment as served today: its config says how it ran (revision 0004)."""
    return old | {"config": RAN_WITH | old["config"]}


def _as_today(old_client: dict) -> dict:
    return {RENAMED.get(k, k): v for k, v in old_client.items()} | dict.fromkeys(NEW_FIELDS)


def test_an_ace9c78_database_upgrades_in_place_and_serves_its_runs(tmp_path: Path) -> None:
    path = _old_database(tmp_path)
    with make_client(tmp_path) as client:
        experiment = client.get(f"/api/experiments/{OLD['experiment']['id']}").json()
        assert experiment == _config_today(OLD["experiment"])
        for run_id in OLD["runs"]:
            old, new = OLD["details"][run_id], client.get(f"/api/runs/{run_id}").json()
            assert (new["run"], new["config"], new["rounds"]) == (
                old["run"], RAN_WITH | old["config"], old["rounds"])
            assert new["clients"] == [_as_today(c) for c in old["clients"]]
            node_ids = {c["node_id"] for c in new["clients"]}
            assert len(new["clients"]) == 8 and {2**63, 2**63 + 1} < node_ids

            rows = list(csv.DictReader(io.StringIO(client.get(
                f"/api/runs/{run_id}/export?format=csv&table=clients").text)))
            old_rows = list(csv.DictReader(io.StringIO(OLD["csv"][run_id])))
            assert rows == [{**_as_today(r), **dict.fromkeys(NEW_FIELDS, "")} for r in old_rows]

        compared = client.get("/api/compare", params={"run": OLD["runs"]}).json()["runs"]
        for new, old in zip(compared, OLD["compare"]["runs"], strict=True):
            kept = old.keys() & new.keys()
            assert {k: new[k] for k in kept} == {k: old[k] for k in kept}
            assert new["memory_bytes"] == old["activation_bytes_mean"]  # the default axis

        # the upgraded table takes new records: a re-sent one replaces its row
        run_id = OLD["runs"][0]
        body = client.post(f"/api/experiments/{OLD['experiment']['id']}/attach").json()
        headers = {"Authorization": f"Bearer {body['report_token']}"}
        post(client, body["run"]["id"], headers,
             client_event(body["run"]["id"], 1, 0, training_bytes=5, peak_step_bytes=9))
        post(client, body["run"]["id"], headers,
             client_event(body["run"]["id"], 1, 0, training_bytes=6, peak_step_bytes=2**40))
        rows = client.get(f"/api/runs/{body['run']['id']}/clients").json()
        assert [(r["training_bytes"], r["peak_step_bytes"]) for r in rows] == [(6, 2**40)]
        assert len(client.get(f"/api/runs/{run_id}/clients").json()) == 8

    url = f"sqlite:///{path}"
    assert _schema_differences(url) == []
    with create_engine(url).connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
            (HEAD,)]


def test_the_revisions_from_nothing_build_the_models_schema_and_downgrade(tmp_path: Path
                                                                         ) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    engine = create_engine(url)
    command.upgrade(alembic_config(engine), "head")
    assert _schema_differences(url) == []
    upgrade(engine)  # at head: nothing to do
    command.downgrade(alembic_config(engine), "0001")
    columns = {c["name"] for c in inspect(engine).get_columns("clients")}
    assert "peak_bytes" in columns and not columns & (NEW_FIELDS | {"peak_forward_bytes"})


def test_a_new_database_is_made_at_the_newest_revision(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade(create_engine(url))
    assert _schema_differences(url) == []
    with create_engine(url).connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
            (HEAD,)]


def test_downgrade_keeps_the_old_runs(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{_old_database(tmp_path)}")
    upgrade(engine)
    command.downgrade(alembic_config(engine), "0001")
    with engine.connect() as connection:
        peaks = connection.execute(text("SELECT DISTINCT peak_bytes FROM clients "
                                        "WHERE status = 'ok' AND phase = 'train'")).all()
    assert peaks == [(13_762_560,)]


def test_a_record_field_without_a_column_type_is_named() -> None:
    class Odd(BaseModel):
        fine: int | None = None
        odd: int | str

    with pytest.raises(TypeError, match=r"odd: no column type for int \| str"):
        record_columns(Odd, {})
    assert [c.name for c in record_columns(Odd, {"odd": Text()})] == ["fine", "odd"]


def _table_sql(url: str, table: str) -> str:
    with create_engine(url).connect() as connection:
        return connection.execute(text("SELECT sql FROM sqlite_master WHERE name = :t"),
                                  {"t": table}).scalar_one()


def test_a_database_from_before_revision_0005_never_reuses_an_experiment_id(tmp_path: Path
                                                                           ) -> None:
    """Made at revision 0004 (experiments without AUTOINCREMENT), holding three experiments and
    a run of the second; upgraded by the dashboard that opens it: the newest experiment deleted,
    the next one gets a new id, and the rebuilt table took nothing with it (no cascade to
    ``runs``: the old run still takes its events)."""
    url = f"sqlite:///{tmp_path / 'dashboard.db'}"  # the settings' default database
    command.upgrade(alembic_config(create_engine(url)), "0004")
    assert "AUTOINCREMENT" not in _table_sql(url, "experiments")
    with create_engine(url).begin() as connection:  # as the dashboard at 0004 stored them
        for experiment_id in (1, 2, 3):
            connection.execute(text(
                "INSERT INTO experiments (id, name, config_json, created_at) "
                "VALUES (:id, 'old', :config, 0)"),
                {"id": experiment_id, "config": json.dumps(tiny_config(name="old"))})
        connection.execute(text(
            "INSERT INTO runs (id, experiment_id, engine, external, status, message, token_hash, "
            "created_at, last_event_id) VALUES ('old', 2, 'simulation', 1, 'running', '', :hash, "
            "0, 0)"), {"hash": hash_token("old-token")})
    with make_client(tmp_path) as client:
        assert "AUTOINCREMENT" in _table_sql(url, "experiments")
        post(client, "old", {"Authorization": "Bearer old-token"}, client_event("old", 1, 0))
        assert client.delete("/api/experiments/3").status_code == 204
        assert create(client)["id"] == 4
        assert client.delete("/api/experiments/4").status_code == 204
    with make_client(tmp_path) as client:  # nor after a restart
        assert create(client)["id"] == 5
        assert [e["id"] for e in client.get("/api/experiments").json()] == [5, 2, 1]
        assert client.get("/api/experiments/2").json()["runs"][0]["id"] == "old"
        assert len(client.get("/api/runs/old/clients").json()) == 1
    with create_engine(url).connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
            (HEAD,)]
