"""Credentials (docs/SECURITY.md §2): enrolment tokens, revocation, seed ranges that do not name their device."""

from __future__ import annotations

import hashlib
import sqlite3

import httpx
import pytest
from live_cloud import ADMIN, start_server

from cooperllm.api_client import ApiError, CooperClient
from cooperllm.protocol import ERRORS, RunConfig
from cooperllm_app.cli import main as cli


@pytest.fixture(scope="module")
def tokens_only(tmp_path_factory, tiny_model_dir, public_tsv):
    """A server without a shared enrolment key: devices enrol only with tokens an admin issued."""
    srv = start_server(tmp_path_factory.mktemp("tokens"), tiny_model_dir, public_tsv, enrolment_key=None)
    yield srv
    srv.stop()


def test_an_enrolment_token_enrols_one_device(tokens_only):
    """Finding 3: the enrolment key was shared by every device, so its holder could enrol devices without end and
    fill a round's quorum alone."""
    srv = tokens_only
    issued = srv.admin().issue_enrolment_token(uses=1, label="pixel-7")
    CooperClient(srv.url).enroll(issued.token, "first")
    for key in (issued.token, "test-enrolment-key-0123456789"):  # spent; and no shared key here
        with pytest.raises(ApiError) as err:
            CooperClient(srv.url).enroll(key, "sybil")
        assert (err.value.status_code, err.value.detail) == (403, ERRORS["bad_enrolment_key"])
    batch = srv.admin().issue_enrolment_token(uses=2)
    CooperClient(srv.url).enroll(batch.token, "a")
    CooperClient(srv.url).enroll(batch.token, "b")
    with pytest.raises(ApiError):
        CooperClient(srv.url).enroll(batch.token, "c")
    db = sqlite3.connect(srv.settings.database_url.removeprefix("sqlite:///"))
    stored = [h for (h,) in db.execute("SELECT token_hash FROM enrolment_tokens")]
    assert hashlib.sha256(issued.token.encode()).hexdigest() in stored and issued.token not in stored
    device = CooperClient(srv.url)
    device.enroll(srv.admin().issue_enrolment_token().token, "d")
    with pytest.raises(ApiError) as err:  # a device token cannot issue enrolment tokens
        device.issue_enrolment_token()
    assert (err.value.status_code, err.value.detail) == (403, ERRORS["forbidden"])


def test_revocation_takes_effect_on_the_next_request(tokens_only, monkeypatch, capsys):
    """Finding 7: revoking took a restart, and there was no endpoint for it."""
    srv = tokens_only
    srv.admin().create_run(RunConfig(strategy="zo", rounds=2, quorum=2, local_steps=1, blocks=[0], deadline_s=60))
    dev = CooperClient(srv.url)
    enrolled = dev.enroll(srv.admin().issue_enrolment_token().token, "stolen")
    dev.current_round()  # the token is cached as valid
    monkeypatch.setenv("COOPERLLM_ADMIN_TOKEN", ADMIN)
    assert cli(["admin", "--url", srv.url, "revoke", str(enrolled.device_id)]) == 0
    assert f"device {enrolled.device_id} revoked" in capsys.readouterr().out
    with pytest.raises(ApiError) as err:
        dev.current_round()
    assert (err.value.status_code, err.value.detail) == (403, ERRORS["forbidden"])
    with pytest.raises(ApiError) as err:
        srv.admin().revoke_device(10_000)
    assert (err.value.status_code, err.value.detail) == (404, ERRORS["unknown_device"])
    assert cli(["admin", "--url", srv.url, "revoke", "10000"]) == 2  # a one-line error, not a traceback
    assert "no such device" in capsys.readouterr().err
    assert cli(["admin", "--url", srv.url, "token", "--uses", "3"]) == 0
    assert capsys.readouterr().out.startswith("cet_")


def test_seed_ranges_do_not_name_their_device(tokens_only):
    """Finding 9: a device's seed range was a public function of its id, so anyone reading a published round could
    tell which device sent which report. It is now a keyed hash under a secret the server keeps (0600, stable across
    restarts)."""
    srv = tokens_only
    cfg = RunConfig(strategy="zo", rounds=2, quorum=2, local_steps=1, blocks=[0], deadline_s=60)
    run = srv.admin().create_run(cfg)
    dev = CooperClient(srv.url)
    enrolled = dev.enroll(srv.admin().issue_enrolment_token().token, "private")
    info = dev.current_round()
    public = hashlib.blake2b(f"{cfg.seed}:{run.run_id}:{info.round}:{enrolled.device_id}".encode(), digest_size=8)
    guessable = (int.from_bytes(public.digest(), "little") % (1 << 36)) << 16  # the same slice, unkeyed
    assert info.seed_lo != guessable and info.seed_hi - info.seed_lo == 1 << 16
    key = srv.settings.state_dir / "seed.key"
    assert len(key.read_bytes()) == 32 and key.stat().st_mode & 0o077 == 0
    r = httpx.get(f"{srv.url}/v1/rounds/current", headers={"Authorization": f"Bearer {dev.token}"})
    assert r.json()["seed_lo"] == info.seed_lo  # the same range on every ask within the round
