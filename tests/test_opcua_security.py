"""OPC UA security: Basic256Sha256 SignAndEncrypt with users; clear errors for a wrong password or an untrusted certificate."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import pytest_asyncio

from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.collect.opcua import OpcuaCollector, OpcuaConnectError, pinned_certificate
from factory_copilot.plumbing.opcua import ensure_certificate
from factory_copilot.records import Reading, SourceState
from tests.support.opcua import drain, line_with_opcua, start_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECURE = "basic256sha256_sign_encrypt"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pki(tmp_path_factory):
    """A server PKI dir, the collector's own PKI dir, and a trust list holding only the collector's certificate."""
    root = tmp_path_factory.mktemp("pki")
    client_cert, _ = await ensure_certificate(root / "client", "collector", "urn:factory-copilot:collector", server=False)
    return {"server": root / "server", "client": root / "client", "trusted": [client_cert], "root": root}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secure_server(pki):
    s = await start_server(security="both", users={"op": "s3cret"}, pki_dir=pki["server"], trusted_clients=pki["trusted"])
    yield s
    await s.stop()


async def test_sign_and_encrypt_with_a_user_streams_readings(secure_server, pki):
    line = line_with_opcua(
        endpoint=secure_server.endpoint,
        security=SECURE,
        username="op",
        password="s3cret",
        server_certificate=str(secure_server.certificate),
    )
    buffer: Buffer[Reading] = Buffer(1000)
    collector = OpcuaCollector(line, buffer, pki_dir=pki["client"])
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    await asyncio.wait_for(collector.connected.wait(), 15)
    policy = collector.client.security_policy
    assert policy.URI.endswith("Basic256Sha256") and collector.client.security_policy.Mode.name == "SignAndEncrypt"
    t0 = time.time() - 30
    await secure_server.write([Reading(t0, "product_pump", "flow", 39.0)])
    got = await drain(buffer, lambda rs: any(r.ts == pytest.approx(t0, abs=1e-3) for r in rs))
    assert got[-1].value == 39.0
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_wrong_password_is_said_clearly_and_retried_until_the_server_accepts_it(pki, caplog):
    """A rejected login no longer stops the collector for good: it says why, keeps trying, and connects once fixed."""
    caplog.set_level(logging.WARNING, logger="factory_copilot.collect.opcua")
    server = await start_server(security="both", users={"op": "other"}, pki_dir=pki["server"],
                                trusted_clients=pki["trusted"])
    try:
        line = line_with_opcua(endpoint=server.endpoint, security=SECURE, username="op", password="s3cret")
        buffer: Buffer[Reading] = Buffer(1000)
        collector = OpcuaCollector(line, buffer, pki_dir=pki["client"])
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run(stop))
        states: list[SourceState] = []
        while collector.connect_attempts < 2:
            await asyncio.sleep(0.05)
            assert not task.done(), "the collector gave up on a rejected login"
        message = f"{server.endpoint}: user 'op' rejected (BadUserAccessDenied)"
        assert collector.stats()["last_error"] == message
        said = [r.getMessage() for r in caplog.records if message in r.getMessage()]
        assert len(said) == 1, "one log line per failure, not one per attempt"
        # the server's operator fixes the account; the same collector gets in, no restart
        server.set_users({"op": "s3cret"})
        await asyncio.wait_for(collector.connected.wait(), 30)
        t0 = time.time() - 30
        await server.write([Reading(t0, "product_pump", "flow", 39.0)])
        await drain(buffer, lambda rs: any(r.ts == pytest.approx(t0, abs=1e-3) for r in rs), states=states)
        assert [s.connected for s in states] == [False, False, True] and states[1].detail == message
        assert collector.stats()["last_error"] is None
        stop.set()
        await asyncio.wait_for(task, 10)
    finally:
        await server.stop()


async def test_anonymous_is_refused_when_the_server_has_users(secure_server, pki):
    line = line_with_opcua(endpoint=secure_server.endpoint)
    with pytest.raises(OpcuaConnectError, match="anonymous access not accepted by the server"):
        await OpcuaCollector(line, Buffer(10), pki_dir=pki["client"]).connect()


async def test_untrusted_client_certificate_gives_one_clear_error(secure_server, pki):
    line = line_with_opcua(endpoint=secure_server.endpoint, security=SECURE, username="op", password="s3cret")
    stranger = OpcuaCollector(line, Buffer(10), pki_dir=pki["root"] / "stranger")  # makes its own, untrusted, certificate
    with pytest.raises(OpcuaConnectError) as err:
        await asyncio.wait_for(stranger.connect(), 20)
    assert "client certificate is not trusted by the server (BadCertificateUntrusted)" in str(err.value)
    assert (pki["root"] / "stranger" / "collector_cert.der").exists()


async def test_the_server_certificate_is_trusted_on_first_use_and_a_changed_one_refused(pki, tmp_path):
    first = await start_server(security="both", users={"op": "s3cret"}, pki_dir=tmp_path / "server-a",
                               trusted_clients=pki["trusted"])
    port = int(first.endpoint.rsplit(":", 1)[1].split("/")[0])
    line = line_with_opcua(endpoint=first.endpoint, security=SECURE, username="op", password="s3cret")
    try:
        client = await OpcuaCollector(line, Buffer(10), pki_dir=pki["client"]).connect()
        await client.disconnect()
    finally:
        await first.stop()
    pin = pinned_certificate(first.endpoint, pki["client"])
    assert pin.read_bytes() == first.certificate.read_bytes()  # the certificate it showed, kept
    # the same address now answers with another certificate (a replaced box, or someone in the middle)
    other = await start_server(port=port, security="both", users={"op": "s3cret"}, pki_dir=tmp_path / "server-b",
                               trusted_clients=pki["trusted"])
    try:
        with pytest.raises(OpcuaConnectError, match=r"another certificate .* pinned in .*delete that file"):
            await OpcuaCollector(line, Buffer(10), pki_dir=pki["client"]).connect()
        pin.unlink()  # the operator accepts the renewed certificate
        client = await OpcuaCollector(line, Buffer(10), pki_dir=pki["client"]).connect()
        await client.disconnect()
    finally:
        await other.stop()


async def test_a_server_certificate_we_do_not_trust_is_refused(secure_server, pki, tmp_path):
    other, _ = await ensure_certificate(tmp_path, "impostor", "urn:factory-copilot:simulator", server=True)
    line = line_with_opcua(
        endpoint=secure_server.endpoint, security=SECURE, username="op", password="s3cret", server_certificate=str(other)
    )
    with pytest.raises(OpcuaConnectError, match=r"server certificate is not the trusted one .*BadCertificateUntrusted"):
        await OpcuaCollector(line, Buffer(10), pki_dir=pki["client"]).connect()


async def test_asking_for_security_the_server_does_not_offer_is_said_plainly(pki):
    plain = await start_server(security="none")
    try:
        line = line_with_opcua(endpoint=plain.endpoint, security=SECURE)
        with pytest.raises(OpcuaConnectError, match="does not offer security basic256sha256_sign_encrypt"):
            await OpcuaCollector(line, Buffer(10), pki_dir=pki["client"]).connect()
    finally:
        await plain.stop()
