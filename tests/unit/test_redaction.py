"""The Redactor, the secrets Settings hands it, the store's redacting flush, and the
log scrubbers built from it."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from celeriac.clock import utcnow
from celeriac.redaction import REDACTED, Redactor
from celeriac.store import Database, Run
from config.logging import configure_logging, redact_log_records
from config.settings import Settings

KEY = "sk-ant-unit-canary-0123456789"
PASSWORD = 'p@ss/w"rd+42'


def test_exact_secrets_and_their_encoded_forms_are_replaced() -> None:
    redactor = Redactor([KEY, PASSWORD])
    text = (f"key {KEY}; url redis://u:p%40ss%2Fw%22rd%2B42@h; form p%40ss%2Fw%22rd%2B42; "
            f"json {json.dumps(PASSWORD)}; raw {PASSWORD}")
    redacted = redactor.text(text)
    assert KEY not in redacted and PASSWORD not in redacted
    assert "p%40ss" not in redacted and 'w\\"rd' not in redacted
    assert redacted.startswith(f"key {REDACTED}; url redis://u:{REDACTED}@h;")


def test_short_strings_are_ignored_and_words_are_not_taken_for_keys() -> None:
    redactor = Redactor(["abc", "", "secret-value-1"])
    assert redactor.text("abc task-12345678 disk-partition-x") == (
        "abc task-12345678 disk-partition-x")
    # In data, a provider-shaped key that is not the server's is the tenant's text;
    # in logs it goes whether configured or not.
    assert redactor.text("use sk-live-0a1b2c3d4e please") == "use sk-live-0a1b2c3d4e please"
    logs = redactor.with_key_shapes()
    assert logs.text("use sk-live-0a1b2c3d4e please") == f"use {REDACTED} please"
    assert logs.text("abc task-12345678 secret-value-1") == f"abc task-12345678 {REDACTED}"
    assert redactor.text("secret-value-1") == REDACTED


def test_values_are_walked_so_json_stays_valid() -> None:
    quoted = 'tricky"\\secret'
    redactor = Redactor([quoted])
    doc = {"error": {"message": f"bad key {quoted}"}, quoted: [1, None, (quoted,)]}
    clean = redactor.value(doc)
    assert json.loads(json.dumps(clean)) == {
        "error": {"message": f"bad key {REDACTED}"}, REDACTED: [1, None, [REDACTED]]}
    untouched = {"a": ["b", {"c": 1}]}
    assert redactor.value(untouched) is untouched


def test_settings_list_every_secret_they_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "ANTHROPIC_API_KEY": "sk-ant-a1", "OPENAI_API_KEY": "sk-o1",
        "CELERIAC_WEBHOOK_SECRET": "whsec_c2VjcmV0", "CELERIAC_METRICS_TOKEN": "metrics-t",
        "FLOWER_BASIC_AUTH": "admin:flower-1,ops:flower-2",
        "REDIS_URL": "redis://default:redis%2Fpw@127.0.0.1:6379/0",
        "BROKER_URL": "amqp://guest:broker-pw@127.0.0.1//",
        "DATABASE_URL": "postgresql://app:db-pw@127.0.0.1/celeriac",
        "OPENAI_BASE_URL": "https://proxy:gateway-pw@llm.example/v1",
    }.items():
        monkeypatch.setenv(name, value)
    values = set(Settings().secret_values())  # type: ignore[call-arg]
    assert values == {"sk-ant-a1", "sk-o1", "whsec_c2VjcmV0", "c2VjcmV0", "metrics-t",
                      "flower-1", "flower-2", "redis%2Fpw", "redis/pw", "broker-pw", "db-pw",
                      "gateway-pw"}


def test_the_store_redacts_free_text_and_json_but_not_keys(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'store.db'}", redactor=Redactor([PASSWORD]))
    db.create_schema()
    now = utcnow()
    with db.session() as s:
        s.add(Run(id="r1", agent="a", agent_version="1", model="m", input=f"in {PASSWORD}",
                  meta={"note": PASSWORD}, idempotency_key=PASSWORD, created_at=now,
                  updated_at=now))
    with db.session() as s:
        run = s.get(Run, "r1")
        assert run is not None
        run.error_code, run.error_message = "provider_auth_failed", f"key {PASSWORD} refused"
    with db.reader() as s:
        run = s.get(Run, "r1")
        assert run is not None
        assert (run.input, run.meta, run.error_message) == (
            f"in {REDACTED}", {"note": REDACTED}, f"key {REDACTED} refused")
        assert run.idempotency_key == PASSWORD  # a String column: an id, left alone
    db.dispose()


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, factory = root.handlers[:], root.level, logging.getLogRecordFactory()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.setLogRecordFactory(factory)
    structlog.reset_defaults()


def test_logs_are_redacted_structlog_and_stdlib_alike(
    restored_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", Redactor([PASSWORD]))
    structlog.get_logger("t").warning("step_failed", error=f"key {PASSWORD}",
                                      detail={"url": f"redis://:{PASSWORD}@h"})
    try:
        raise RuntimeError(f"connect failed with {PASSWORD}")
    except RuntimeError:
        logging.getLogger("celery").exception("task %s crashed", PASSWORD)
    out = capsys.readouterr().out
    assert "step_failed" in out and "crashed" in out and "RuntimeError" in out
    assert PASSWORD not in out and json.dumps(PASSWORD)[1:-1] not in out
    assert REDACTED in out


def test_a_plain_stdlib_handler_gets_redacted_records(
    restored_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Flower's case: tornado's own handler and formatter, no structlog.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("flower.test")
    logger.addHandler(handler)
    try:
        redact_log_records(Redactor([PASSWORD]))
        try:
            raise ValueError(PASSWORD)
        except ValueError:
            logger.error("broker %s unreachable", f"redis://:{PASSWORD}@h", exc_info=True)
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert "unreachable" in err and "ValueError" in err
    assert PASSWORD not in err
