"""Builds the concrete ledger from settings: the one place that wires classes together."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.ledger.adapters.program_file import load_program
from services.ledger.adapters.sql_views import construct_view
from services.ledger.application.ledger import LedgerApplication
from services.ledger.application.service import Ledger
from services.ledger.application.view_switch import active_prefix
from services.ledger.domain.clock import Clock, FixedClock, SystemClock
from services.ledger.domain.program import Program

EXAMPLES = Path(__file__).resolve().parent / "examples"


class Settings(BaseSettings):
    """Configuration from the environment (prefix LOYALTY_) or arguments."""

    model_config = SettingsConfigDict(env_prefix="LOYALTY_", extra="ignore")

    program: Path = Field(default=EXAMPLES / "coffee.yaml", description="program file (YAML)")
    db: Path = Field(default=Path("var/ledger.sqlite"), description="SQLite file (default store)")
    persistence_module: str | None = Field(
        default=None,
        validation_alias="PERSISTENCE_MODULE",
        description="eventsourcing.sqlite (default) or eventsourcing.postgres",
    )
    now: datetime | None = Field(
        default=None, description="fixed clock instant (replays, demos); default: system time"
    )


# Named, not imported: a SQLite store never loads psycopg.
PG = "services.ledger.adapters.pg_recorder:LedgerPostgresProcessRecorder"


def store_env(settings: Settings) -> dict[str, str]:
    """The eventsourcing environment: SQLite file by default, PostgreSQL when configured."""
    if settings.persistence_module and settings.persistence_module != "eventsourcing.sqlite":
        return {"PERSISTENCE_MODULE": settings.persistence_module}
    settings.db.parent.mkdir(parents=True, exist_ok=True)
    return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(settings.db)}


def with_recorder(env: dict[str, str]) -> dict[str, str]:
    """On PostgreSQL, the library's recorder with an insert outside psycopg's pipeline mode,
    which can hang on a large batch (adapters/pg_recorder.py)."""
    module = env.get("PERSISTENCE_MODULE") or os.environ.get("PERSISTENCE_MODULE")
    if module == "eventsourcing.postgres" and "PROCESS_RECORDER_TOPIC" not in env:
        return {**env, "PROCESS_RECORDER_TOPIC": PG}
    return env


def build_ledger(
    settings: Settings | None = None,
    *,
    program: Program | None = None,
    clock: Clock | None = None,
    env: dict[str, str] | None = None,
) -> Ledger:
    settings = settings or Settings()
    program = program or load_program(settings.program)
    if clock is None:
        clock = FixedClock(settings.now) if settings.now else SystemClock()
    store = with_recorder(env if env is not None else store_env(settings))
    app = LedgerApplication(program, clock, store)
    view = construct_view(app.factory, active_prefix(app))
    return Ledger(app, view, lambda prefix: construct_view(app.factory, prefix))
