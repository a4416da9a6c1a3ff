"""Recurring schedules through the API (PROTOCOL §6), on SQLite and PostgreSQL:
CRUD, every refusal, and firing by the running scheduler on the real clock."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

import pytest
import trio

from kflow._serde import parse_datetime
from kflow.model.loader import load_definition
from kflow.server.schedule_ops import create_schedule
from kflow.server.schedules import ScheduleSpec
from tests.integration.api.test_auth import bearer, token_for
from tests.integration.conftest import Api, assert_error, create_client
from tests.integration.schedules_support import PENDING

URL = "/api/v1/schedules"


def body(**overrides: Any) -> dict[str, Any]:
    """A valid create body; an override of ``...`` drops that field."""
    values: dict[str, Any] = {
        "name": "hourly-report",
        "definition_name": "pending",
        "input": {"n": 1},
        "interval_seconds": 3600,
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not ...}


async def create(api: Api, **overrides: Any) -> dict[str, Any]:
    response = await api.client.post(URL, json=body(**overrides))
    assert response.status_code == 201, response.text
    return dict(response.json())


async def get(api: Api, schedule_id: str) -> dict[str, Any]:
    response = await api.client.get(f"{URL}/{schedule_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def runs_of(api: Api, name: str) -> list[dict[str, Any]]:
    """The runs a schedule started, each with its ``unique_key``."""
    response = await api.client.get("/api/v1/workflows", params={"limit": 1000})
    assert response.status_code == 200, response.text
    found = []
    for summary in response.json()["workflows"]:
        run = await api.run(summary["id"])
        key = run["state_data"]["unique_key"] or ""
        if key.startswith(f"schedule:{name}:"):
            found.append(run)
    return found


async def test_create_get_list_patch_delete(api: Api) -> None:
    await api.deploy(PENDING)
    before = dt.datetime.now(dt.UTC)
    created = await create(api, cron="0 9 * * *", interval_seconds=..., timezone="Europe/Paris")
    assert set(created) >= {
        "id", "name", "definition_name", "definition_version", "input", "cron",
        "interval_seconds", "timezone", "overlap_policy", "enabled", "next_fire_at",
        "last_fired_at", "created_at", "updated_at",
    }  # fmt: skip
    assert created["name"] == "hourly-report"
    assert created["cron"] == "0 9 * * *"
    assert created["interval_seconds"] is None
    assert created["timezone"] == "Europe/Paris"
    assert created["overlap_policy"] == "skip"
    assert created["enabled"] is True
    assert created["definition_version"] is None
    assert created["input"] == {"n": 1}
    assert created["last_fired_at"] is None
    assert created["created_at"].endswith("Z")
    next_fire = parse_datetime(created["next_fire_at"])
    assert before < next_fire <= before + dt.timedelta(days=1)
    local = next_fire.astimezone(zoneinfo.ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute) == (9, 0)

    assert await get(api, created["id"]) == created
    listing = await api.client.get(URL)
    assert listing.status_code == 200
    assert listing.json() == {"schedules": [created], "count": 1}

    # Changing the cadence recomputes next_fire_at; other fields keep it.
    patched = await api.client.patch(f"{URL}/{created['id']}", json={"interval_seconds": 60})
    assert patched.status_code == 200, patched.text
    changed = patched.json()
    assert changed["cron"] is None
    assert changed["interval_seconds"] == 60
    first = parse_datetime(changed["next_fire_at"])
    assert first.second == 0
    assert first.microsecond == 0
    assert dt.timedelta(0) < first - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=60)
    renamed = await api.client.patch(
        f"{URL}/{created['id']}", json={"name": "minutely", "input": {"n": 2}}
    )
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "minutely"
    assert renamed.json()["input"] == {"n": 2}
    assert renamed.json()["next_fire_at"] == changed["next_fire_at"]

    # Disabling clears next_fire_at; enabling computes the next period from now.
    off = await api.client.patch(f"{URL}/{created['id']}", json={"enabled": False})
    assert off.json()["enabled"] is False
    assert off.json()["next_fire_at"] is None
    on = await api.client.patch(f"{URL}/{created['id']}", json={"enabled": True})
    assert on.json()["enabled"] is True
    assert parse_datetime(on.json()["next_fire_at"]) > dt.datetime.now(dt.UTC)

    deleted = await api.client.delete(f"{URL}/{created['id']}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_error(await api.client.get(f"{URL}/{created['id']}"), 404)
    assert_error(await api.client.delete(f"{URL}/{created['id']}"), 404)
    assert (await api.client.get(URL)).json() == {"schedules": [], "count": 0}


async def test_defaults_and_a_disabled_schedule(api: Api) -> None:
    await api.deploy(PENDING)
    created = await create(
        api, input=..., enabled=False, overlap_policy="allow", interval_seconds=2.5
    )
    assert created["input"] == {}
    assert created["timezone"] == "UTC"
    assert created["enabled"] is False
    assert created["next_fire_at"] is None
    assert created["overlap_policy"] == "allow"
    assert created["interval_seconds"] == 2.5


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": ...}, "name"),
        ({"name": "has space"}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": 7}, "name"),
        ({"definition_name": ...}, "definition_name"),
        ({"definition_name": ""}, "definition_name"),
        ({"definition_version": 3}, "definition_version"),
        ({"input": [1, 2]}, "input"),
        ({"input": "text"}, "input"),
        ({"interval_seconds": ...}, "cron"),
        ({"interval_seconds": ...}, "interval_seconds"),
        ({"cron": "* * * * *"}, "cron"),
        ({"cron": "* * * * *"}, "interval_seconds"),
        ({"interval_seconds": 0.5}, "interval_seconds"),
        ({"interval_seconds": "60"}, "interval_seconds"),
        ({"interval_seconds": True}, "interval_seconds"),
        ({"interval_seconds": 10**12}, "interval_seconds"),
        ({"interval_seconds": ..., "cron": "61 * * * *"}, "cron"),
        ({"interval_seconds": ..., "cron": "* * * *"}, "cron"),
        ({"interval_seconds": ..., "cron": "0 0 31 2 *"}, "cron"),
        ({"interval_seconds": ..., "cron": 5}, "cron"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": ""}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"overlap_policy": "queue"}, "overlap_policy"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
async def test_every_bad_field_is_a_422_naming_it(
    api: Api, overrides: dict[str, Any], field: str
) -> None:
    await api.deploy(PENDING)
    response = await api.client.post(URL, json=body(**overrides))
    assert_error(response, 422, field=field)
    assert (await api.client.get(URL)).json()["count"] == 0


async def test_all_bad_fields_are_named_at_once(api: Api) -> None:
    response = await api.client.post(URL, json={"name": "a b", "input": 3, "timezone": "Nope/No"})
    error = assert_error(response, 422)
    assert set(error["details"]["field_errors"]) == {
        "name", "definition_name", "input", "timezone", "cron", "interval_seconds",
    }  # fmt: skip
    assert_error(await api.client.post(URL, json=[1]), 422, field="body")
    assert_error(await api.client.post(URL, content=b"{nope"), 400)


async def test_unknown_definition_duplicate_name_and_unknown_id(api: Api) -> None:
    assert_error(await api.client.post(URL, json=body()), 404)
    await api.deploy(PENDING)
    assert_error(await api.client.post(URL, json=body(definition_version="1.0")), 404)
    first = await create(api)
    again = body(cron="* * * * *", interval_seconds=...)
    error = assert_error(await api.client.post(URL, json=again), 409)
    assert error["details"]["schedule_id"] == first["id"]
    other = await create(api, name="other")
    assert_error(await api.client.patch(f"{URL}/{other['id']}", json={"name": first["name"]}), 409)
    assert_error(
        await api.client.patch(f"{URL}/{other['id']}", json={"definition_name": "missing"}), 404
    )
    missing = "0190c3f0-0000-7000-8000-000000000000"
    for response in (
        await api.client.get(f"{URL}/{missing}"),
        await api.client.patch(f"{URL}/{missing}", json={"enabled": False}),
        await api.client.delete(f"{URL}/{missing}"),
        await api.client.get(f"{URL}/not-a-uuid"),
    ):
        assert_error(response, 404)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"interval_seconds": None}, "interval_seconds"),
        ({"cron": "* * * * *", "interval_seconds": 60}, "interval_seconds"),
        ({"interval_seconds": 0}, "interval_seconds"),
        ({"timezone": "Nowhere/Land"}, "timezone"),
        ({"enabled": None}, "enabled"),
        ({"name": None}, "name"),
        ({"input": 5}, "input"),
        ({"overlap_policy": 1}, "overlap_policy"),
    ],
)
async def test_patch_refuses_bad_fields(api: Api, changes: dict[str, Any], field: str) -> None:
    await api.deploy(PENDING)
    created = await create(api)
    assert_error(await api.client.patch(f"{URL}/{created['id']}", json=changes), 422, field=field)
    assert await get(api, created["id"]) == created


async def test_reads_need_the_read_scope_and_writes_the_write_scope(secure_api: Api) -> None:
    await secure_api.ctx.engine.deploy(load_definition(PENDING))
    made = await create_schedule(
        secure_api.ctx.engine,
        ScheduleSpec(name="s", definition_name="pending", interval_seconds=60),
    )
    assert_error(await secure_api.client.get(URL), 401)
    tokens = {}
    for scope in ("workflows:read", "workflows:write", "worker"):
        client_id, secret = await create_client(secure_api, scope)
        tokens[scope] = bearer(await token_for(secure_api, client_id, secret))
    reader, writer, worker = tokens["workflows:read"], tokens["workflows:write"], tokens["worker"]
    assert_error(await secure_api.client.get(URL, headers=worker), 403)
    assert (await secure_api.client.get(URL, headers=reader)).status_code == 200
    assert (await secure_api.client.get(f"{URL}/{made.id}", headers=reader)).status_code == 200
    item = f"{URL}/{made.id}"
    assert_error(await secure_api.client.post(URL, json=body(), headers=reader), 403)
    assert_error(await secure_api.client.patch(item, json={}, headers=reader), 403)
    assert_error(await secure_api.client.delete(item, headers=reader), 403)
    assert (await secure_api.client.post(URL, json=body(), headers=writer)).status_code == 201
    assert (await secure_api.client.patch(item, json={}, headers=writer)).status_code == 200
    assert (await secure_api.client.delete(item, headers=writer)).status_code == 204


async def test_an_interval_schedule_fires_runs(api: Api) -> None:
    await api.deploy(PENDING)
    created = await create(api, name="every-second", interval_seconds=1, overlap_policy="allow")
    with trio.fail_after(10):
        while len(runs := await runs_of(api, "every-second")) < 2:
            await trio.sleep(0.05)
    keys = sorted(run["state_data"]["unique_key"] for run in runs)
    epochs = [int(key.rsplit(":", 1)[1]) for key in keys]
    assert len(set(epochs)) == len(epochs)
    assert all(run["input"] == {"n": 1} for run in runs)
    assert all(run["definition_name"] == "pending" for run in runs)
    state = await get(api, created["id"])
    assert state["last_fired_at"] is not None
    assert state["last_run_id"] in {run["id"] for run in runs}
    events = await api.client.get(
        f"/api/v1/workflows/{state['last_run_id']}/events", headers={"accept": "application/json"}
    )
    fired = [e for e in events.json() if e["type"] == "schedule.fired"]
    assert fired[0]["data"]["schedule"] == "every-second"

    # Disabled: no further runs, however long we wait for the scheduler.
    off = await api.client.patch(f"{URL}/{created['id']}", json={"enabled": False})
    assert off.status_code == 200
    count = len(await runs_of(api, "every-second"))
    disabled_at = api.ctx.engine.clock.now()
    with trio.fail_after(10):  # scheduler passes covering more than one period
        while (last := api.ctx.scheduler.last_run) is None or (
            last < disabled_at + dt.timedelta(seconds=1.5)
        ):
            await trio.sleep(0.05)
    assert len(await runs_of(api, "every-second")) == count


async def test_missed_periods_fire_once_on_recovery(api: Api) -> None:
    await api.deploy(PENDING)
    created = await create(api, name="recover", interval_seconds=3600)
    due = parse_datetime(created["next_fire_at"])
    past = due - dt.timedelta(hours=6)  # as if the server was down for six periods

    def backdate(tx: Any) -> int:
        return tx.run(
            "reschedule_schedule",
            id=created["id"],
            due=tx.time(due),
            next_fire_at=tx.time(past),
            missed=0,
            error=None,
        )

    assert await api.ctx.store.write(backdate) == 1
    api.ctx.scheduler.arm(past)
    with trio.fail_after(10):
        while (state := await get(api, created["id"]))["last_fired_at"] is None:
            await trio.sleep(0.02)
    runs = await runs_of(api, "recover")
    assert len(runs) == 1  # once, not six times
    fired = parse_datetime(state["last_fired_at"])
    hour = dt.timedelta(hours=1)
    assert fired == due - hour or fired == due  # the latest period (due, if the hour turned)
    assert state["missed_count"] == (fired - past) // hour  # 5: the earlier ones
    assert parse_datetime(state["next_fire_at"]) == fired + hour  # continues in the future
    assert runs[0]["state_data"]["unique_key"] == f"schedule:recover:{int(fired.timestamp())}"
    events = await api.client.get(
        f"/api/v1/workflows/{runs[0]['id']}/events", headers={"accept": "application/json"}
    )
    [event] = [e for e in events.json() if e["type"] == "schedule.fired"]
    assert event["data"]["missed"] == state["missed_count"]
