"""A device's director repository in one round trip (``GET …/director``): the agent's TUF
client refreshes from one answer and still verifies every file; the answer holds only
what the device lacks; a tampered answer is refused and the targets the device verified stay; against a server
that sends no bundle, the device reads the files one by one."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from edgefleet.agent.fetcher import https_client
from edgefleet.agent.updates import TrustAnchors, UpdateClient
from edgefleet.errors import UpdateRefused
from edgefleet.web.tls import tls_context
from tests.uptane_world import Setup, make_setup

Answer = Callable[[httpx.Request, httpx.Response], httpx.Response]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    yield from make_setup(tmp_path)


class Recording(httpx.BaseTransport):
    """The device's real TLS transport, each request noted, each answer passed through ``answer``."""

    def __init__(self, setup: Setup, answer: Answer = lambda _, response: response) -> None:
        directory = setup.device.directory
        self.inner = httpx.HTTPTransport(verify=tls_context(
            setup.plane.settings.pki.ca_cert, directory / "cert.pem", directory / "key.pem"))
        self.answer = answer
        self.requests: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.raw_path.decode().rsplit("/director", 1)[1])
        response = self.inner.handle_request(request)
        response.read()
        return self.answer(request, response)

    def close(self) -> None:
        self.inner.close()


def client_through(setup: Setup, transport: Recording) -> UpdateClient:
    ca = setup.plane.settings.pki.ca_cert
    return UpdateClient(
        device_id=setup.device.id, hardware_type="hw-x86", state_dir=setup.device.directory,
        anchors=TrustAnchors(setup.workspace.image.root(1).to_bytes(), setup.workspace.director.root(1).to_bytes()),
        director_url=f"{setup.plane.url}/api/v1/devices/{setup.device.id}/director",
        director_tls=httpx.Client(transport=transport), mirrors=[f"{setup.plane.url}/repository"],
        mirror_tls=https_client(ca))


def checked_version(client: UpdateClient) -> str:
    """The release an update check with ``client`` (closed after) finds assigned."""
    try:
        plan = client.check(installed_counter=4)
    finally:
        client.close()
    assert plan is not None
    return plan.version


def verified_files(directory: Path) -> dict[str, bytes]:
    """The metadata a device's TUF client keeps (the idle-poll record aside: a refused
    refresh drops it, so the next check verifies in full)."""
    return {path.relative_to(directory).as_posix(): path.read_bytes() for path in directory.rglob("*")
            if path.is_file() and path.name != "verified.json"}


def bundle(setup: Setup, **query: object) -> httpx.Response:
    return setup.device.client.get(f"/api/v1/devices/{setup.device.id}/director", params=query)


def test_an_update_check_reads_the_director_in_one_round_trip_and_verifies_it(setup: Setup) -> None:
    setup.assign("5.0")
    transport = Recording(setup)
    client = client_through(setup, transport)
    try:
        plan = client.check(installed_counter=4)
        assert plan is not None
        assert (plan.version, plan.counter) == ("5.0", 5)
        assert transport.requests == ["?root=1&snapshot=0"]  # a file-by-file refresh takes five
        setup.assign("3.0")  # a new assignment: a new snapshot and targets
        held = json.loads((setup.device.directory / "tuf" / "director" / "snapshot.json").read_bytes())
        plan = client.check(installed_counter=4)
        assert plan is not None
        assert plan.version == "3.0"
        assert transport.requests[1:] == [f"?root=1&snapshot={held['signed']['version']}"]
    finally:
        client.close()


def test_the_bundle_holds_only_what_the_device_lacks(setup: Setup) -> None:
    setup.assign("5.0")
    full = bundle(setup, root=1, snapshot=0)
    assert full.status_code == 200, full.text
    files = full.json()["files"]
    version = json.loads(files["timestamp.json"])["signed"]["meta"]["snapshot.json"]["version"]
    assert set(files) == {"timestamp.json", f"{version}.snapshot.json", f"{version}.targets.json"}
    assert full.json()["latest_root"] == 1
    for name, text in files.items():  # each file exactly as served alone
        alone = setup.device.client.get(f"/api/v1/devices/{setup.device.id}/director/{name}")
        assert alone.content == text.encode()
    held = bundle(setup, root=1, snapshot=version)
    assert set(held.json()["files"]) == {"timestamp.json"}


@pytest.mark.parametrize("query", [{"root": 0}, {"snapshot": 1}, {"root": 1, "snapshot": -1},
                                   {"root": 1, "extra": "x"}, {"root": "one"}])
def test_a_malformed_bundle_query_is_refused(setup: Setup, query: dict[str, object]) -> None:
    answer = bundle(setup, **query)
    assert answer.status_code == 422, answer.text


def test_a_tampered_bundle_is_refused_and_the_verified_targets_stay(setup: Setup) -> None:
    setup.assign("5.0")
    assert checked_version(client_through(setup, Recording(setup))) == "5.0"
    director = setup.device.directory / "tuf" / "director"
    before = verified_files(director)
    setup.assign("3.0")

    def tampered(request: httpx.Request, response: httpx.Response) -> httpx.Response:
        if not request.url.raw_path.endswith(b"/director") and b"/director?" not in request.url.raw_path:
            return response
        answer = response.json()
        name = next(n for n in answer["files"] if n.endswith(".targets.json"))
        answer["files"][name] = answer["files"][name].replace("3.0", "5.0")  # back to the other release
        return httpx.Response(200, json=answer)

    client = client_through(setup, Recording(setup, tampered))
    try:
        with pytest.raises(UpdateRefused) as refused:
            client.check(installed_counter=4)
        assert refused.value.code.startswith("director_")
    finally:
        client.close()
    # The timestamp and snapshot were genuine, and TUF keeps them, as it would file by
    # file; the targets (what the device takes) stay those verified before.
    assert verified_files(director)["targets.json"] == before["targets.json"]
    assert verified_files(director)["root.json"] == before["root.json"]
    assert checked_version(client_through(setup, Recording(setup))) == "3.0"


def test_against_a_server_without_bundles_the_device_reads_the_files_one_by_one(setup: Setup) -> None:
    setup.assign("5.0")

    def older_server(request: httpx.Request, response: httpx.Response) -> httpx.Response:
        path = request.url.raw_path
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no such route"}}) \
            if path.endswith(b"/director") or b"/director?" in path else response

    transport = Recording(setup, older_server)
    assert checked_version(client_through(setup, transport)) == "5.0"
    assert transport.requests[0] == "?root=1&snapshot=0"
    assert transport.requests[1:] == ["/timestamp.json", "/2.root.json", "/timestamp.json",
                                      transport.requests[4], transport.requests[5]]
    assert transport.requests[4].endswith(".snapshot.json")
    assert transport.requests[5].endswith(".targets.json")
