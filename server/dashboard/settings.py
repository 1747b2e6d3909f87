"""Dashboard settings: command-line flags override ``EDGEFED_DASHBOARD_*`` environment variables.

Safe by default: the server binds the loopback interface; a token guards every mutating endpoint
when one is configured, and one is required before the server may bind any other address.
"""

from __future__ import annotations

import hmac
import ipaddress
import shutil
import sys
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.dashboard.cache import MAX_STALE_S


def default_run_command() -> list[str]:
    """The ``edgefed`` console script of this interpreter's environment (``edgefed run ...``)."""
    script = Path(sys.executable).with_name("edgefed")
    return [str(script if script.exists() else shutil.which("edgefed") or "edgefed")]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Everything the dashboard needs; nothing here can be set through the API."""

    model_config = SettingsConfigDict(env_prefix="EDGEFED_DASHBOARD_", frozen=True)

    host: str = Field("127.0.0.1", min_length=1, max_length=255)
    port: int = Field(8080, ge=1, le=65535)
    db_url: str = Field("", description="SQLAlchemy URL; empty: SQLite file in data_dir")
    token: SecretStr | None = Field(None, description="bearer token for mutating endpoints")
    data_dir: Path = Field(Path("runs/dashboard"), description="database and run output folders")
    max_concurrent_runs: int = Field(1, ge=0, le=64, description="0 pauses the queue")
    max_queued_runs: int = Field(100, ge=0, le=100_000,
                                 description="launches beyond this many waiting runs get 429")
    cache_max_stale_s: float = Field(
        MAX_STALE_S, ge=0.0, le=10.0,
        description="how long a cached read may miss a run's streamed events (see cache.py)")
    cancel_timeout_s: float = Field(10.0, gt=0.0, le=600.0, description="SIGTERM -> SIGKILL")
    run_command: list[str] = Field(default_factory=default_run_command, min_length=1)
    public_url: str = Field("", description="URL runs report to; empty: derived from host/port")

    @field_validator("token")
    @classmethod
    def _empty_token_is_none(cls, token: SecretStr | None) -> SecretStr | None:
        return token if token and token.get_secret_value() else None

    @model_validator(mode="after")
    def _require_token_off_loopback(self) -> Settings:
        if not is_loopback(self.host) and self.token is None:
            raise ValueError(
                f"token: required when binding to the non-loopback address {self.host!r}"
            )
        return self

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'dashboard.db'}"

    @property
    def base_url(self) -> str:
        """Where this server is reached from the same machine (runs post their events here)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host if is_loopback(self.host) else "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    def run_dir(self, run_id: str) -> Path:
        """A run's folder: its config, the runner's log, the run's ``out`` folder."""
        return (self.runs_dir / run_id).resolve()

    def token_matches(self, given: str | None) -> bool:
        """Constant-time comparison with the configured token (True when none is configured)."""
        if self.token is None:
            return True
        expected = self.token.get_secret_value().encode()
        return given is not None and hmac.compare_digest(given.encode(), expected)
