"""Activity files: upload a raw body, download it back, filename rules."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.conftest import Api, assert_error

FLOW = "name: files\nactivities:\n  - {key: make, activity_name: echo}\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


async def _run(api: Api) -> str:
    await api.deploy(FLOW)
    return await api.start("files")


async def test_upload_then_download(api: Api) -> None:
    workflow_id = await _run(api)
    url = f"/api/v1/workflows/{workflow_id}/activities/make/files/chart.png"
    response = await api.client.post(url, content=PNG, headers={"content-type": "image/png"})
    assert response.status_code == 201, response.text
    meta = response.json()
    assert meta["workflow_id"] == workflow_id
    assert meta["activity_key"] == "make"
    assert meta["filename"] == "chart.png"
    assert meta["size"] == len(PNG)
    assert meta["content_type"] == "image/png"
    assert meta["created_at"].endswith("Z")

    download = await api.client.get(url)
    assert download.status_code == 200
    assert download.content == PNG
    assert download.headers["content-type"] == "image/png"
    assert int(download.headers["content-length"]) == len(PNG)

    listed = (
        await api.client.get(f"/api/v1/workflows/{workflow_id}/activities/make/output")
    ).json()
    assert [f["filename"] for f in listed["files"]] == ["chart.png"]
    assert listed["files"][0]["reference"] == f"postgres://{workflow_id}/make/chart.png"

    # A re-upload replaces the file.
    again = await api.client.post(url, content=b"v2", headers={"content-type": "text/plain"})
    assert again.status_code == 201, again.text
    replaced = await api.client.get(url)
    assert replaced.content == b"v2"
    assert replaced.headers["content-type"].startswith("text/plain")


async def test_upload_without_content_type_is_octet_stream(api: Api) -> None:
    workflow_id = await _run(api)
    url = f"/api/v1/workflows/{workflow_id}/activities/make/files/blob.bin"
    response = await api.client.post(url, content=b"\x00\x01")
    assert response.status_code == 201, response.text
    assert response.json()["content_type"] == "application/octet-stream"
    assert (await api.client.get(url)).headers["content-type"] == "application/octet-stream"


async def test_missing_files_and_targets_are_404(api: Api) -> None:
    workflow_id = await _run(api)
    base = f"/api/v1/workflows/{workflow_id}/activities"
    assert_error(await api.client.get(f"{base}/make/files/none.txt"), 404)
    assert_error(await api.client.post(f"{base}/ghost/files/a.txt", content=b"x"), 404)
    other = f"/api/v1/workflows/{uuid.uuid4()}/activities/make/files/a.txt"
    assert_error(await api.client.post(other, content=b"x"), 404)
    assert_error(await api.client.get(other), 404)


@pytest.mark.parametrize(
    "filename",
    ["%2E%2E", "%2E", "a%2Fb", "..%2Fsecret", "a%5Cb", "a%00b", "bad%0Aname", "tab%09name", "x%7F"],
)
async def test_bad_filenames_are_400(api: Api, filename: str) -> None:
    workflow_id = await _run(api)
    url = f"/api/v1/workflows/{workflow_id}/activities/make/files/{filename}"
    assert_error(await api.client.post(url, content=b"x"), 400)
    assert_error(await api.client.get(url), 400)


async def test_overlong_filename_is_400(api: Api) -> None:
    workflow_id = await _run(api)
    url = f"/api/v1/workflows/{workflow_id}/activities/make/files/{'a' * 256}"
    assert_error(await api.client.post(url, content=b"x"), 400)
