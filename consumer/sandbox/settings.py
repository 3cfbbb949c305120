"""What the sandbox accepts as credentials, and where it writes what it accepted."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    """Credentials the sandbox accepts (test values, not secrets) and its record directory."""

    nibble_api_key: str = "sandbox-nibble-key"
    nibble_api_secret: str = field(default="sandbox-nibble-secret", repr=False)
    nudgify_api_key: str = field(default="sandbox-nudgify-api-key", repr=False)
    nudgify_site_key: str = "510eeb08-814e-456a-b5c1-8c7c70cc4c00"
    custobar_token: str = field(default="sandbox-custobar-token", repr=False)
    custobar_user: str = "sandbox"
    custobar_password: str = field(default="sandbox-custobar-password", repr=False)
    record_dir: Path | None = None
    seed: int = 0
