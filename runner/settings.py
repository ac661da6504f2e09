"""Runner settings: environment (``GPUFLEET_RUNNER_``) > YAML file > defaults.

The YAML file is the one named by ``--config`` (passed as ``config_file``), else by
``GPUFLEET_RUNNER_CONFIG_FILE``, else ``~/.config/gpufleet/runner.yaml`` when it exists.
Built once by the CLI and passed down; nothing reads the environment at import time.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from gpufleet.tls import SettingNames, TlsOptions, check_url, is_loopback
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

ENV_PREFIX = "GPUFLEET_RUNNER_"
CONFIG_FILE_ENV = ENV_PREFIX + "CONFIG_FILE"
DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
RUNNER_TLS_NAMES = SettingNames(
    ca_bundle="GPUFLEET_RUNNER_CA_BUNDLE (ca_bundle in runner.yaml)",
    verify="GPUFLEET_RUNNER_TLS_VERIFY (tls_verify in runner.yaml)",
    insecure_remote="GPUFLEET_RUNNER_TLS_INSECURE_REMOTE (tls_insecure_remote in runner.yaml)",
    client_cert="GPUFLEET_RUNNER_TLS_CLIENT_CERT (tls_client_cert in runner.yaml)",
    client_key="GPUFLEET_RUNNER_TLS_CLIENT_KEY (tls_client_key in runner.yaml)",
)


def default_config_file() -> Path:
    """``~/.config/gpufleet/runner.yaml`` (respecting ``XDG_CONFIG_HOME``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gpufleet" / "runner.yaml"


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "gpufleet-runner"


class RunnerSettings(BaseSettings):
    """Settings of one runner process (one GPU host)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    # identity and control plane
    control_plane_url: str = Field(
        default="http://127.0.0.1:8080", description="Base URL of the control plane."
    )

    @field_validator("control_plane_url")
    @classmethod
    def _url_form(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"{value!r} is not an http:// or https:// URL with a host "
                "(e.g. https://gpufleet.example.com)"
            )
        return value.rstrip("/")

    join_token: SecretStr | None = Field(
        default=None, description="Join token for registration (from POST /v1/admin/join-tokens)."
    )
    name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=128,
        description="Runner name; also names its Triton container (adoption key).",
    )
    region: str | None = Field(default=None, description="Region reported at registration.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels sent at registration.")
    request_timeout_s: float = Field(
        default=15.0, gt=0, description="Timeout of control-plane calls (long polls add wait_s)."
    )

    # TLS to the control plane (and presigned bucket URLs); see docs/tls.md
    ca_bundle: Path | None = Field(
        default=None,
        description="PEM file or directory of CA certificates trusted besides the system "
        "store (a control plane with a private CA).",
    )
    tls_verify: bool = Field(
        default=True,
        description="Verify the control plane's certificate. false: loopback URLs only, "
        "unless tls_insecure_remote is true too; logs a warning at start.",
    )
    tls_insecure_remote: bool = Field(
        default=False,
        description="Allow tls_verify=false for a control plane that is not on loopback.",
    )
    tls_client_cert: Path | None = Field(
        default=None, description="Client certificate (PEM) for a control plane requiring mTLS."
    )
    tls_client_key: Path | None = Field(default=None, description="Key of tls_client_cert (PEM).")

    # Triton
    backend: Literal["docker", "process", "mock"] = Field(
        default="docker",
        description="docker: Triton container; process: local tritonserver; mock: no Triton.",
    )
    mock_outputs: Literal["zeros", "echo"] = Field(
        default="zeros",
        description="mock backend: answer with zeros, or echo input i as output i where shape "
        "and datatype match (a distinct answer per job, for soak tests).",
    )
    mock_delay_s: float = Field(
        default=0.0, ge=0, le=3600, description="mock backend: seconds each inference takes."
    )
    triton_image: str = Field(default=DEFAULT_TRITON_IMAGE, description="Triton image (docker).")
    triton_entrypoint: list[str] | None = Field(
        default=None,
        description="Container entrypoint override; unset: the image's own (when it is "
        "tritonserver the command is the flags only, else `tritonserver` + flags).",
    )
    triton_http_port: int = Field(default=8000, ge=1, le=65535, description="Triton HTTP port.")
    triton_grpc_port: int = Field(default=8001, ge=1, le=65535, description="Triton gRPC port.")
    triton_metrics_port: int = Field(
        default=8002, ge=1, le=65535, description="Triton Prometheus metrics port."
    )
    protocol: Literal["grpc", "http"] = Field(
        default="grpc", description="Protocol used to forward jobs to Triton."
    )
    model_repository: Path = Field(
        default=Path("model_repository"),
        description="Local Triton model repository (mounted read-only at /models).",
    )
    gpus: list[str] | None = Field(
        default=None,
        description="GPU indexes or UUIDs given to Triton; unset: every GPU NVML finds.",
    )
    shm_size: str = Field(default="1g", description="Shared memory of the Triton container.")
    ulimits: dict[str, int] = Field(
        default_factory=lambda: {"memlock": -1, "stack": 67108864},
        description="Container ulimits (soft = hard; -1 unlimited), as NVIDIA recommends. "
        "Hosts whose hard memlock limit cannot be raised (unprivileged engines) drop memlock.",
    )
    tritonserver_path: str = Field(
        default="tritonserver", description="tritonserver binary (process backend)."
    )
    backend_directory: str | None = Field(
        default=None,
        description="Triton --backend-directory. Process backend: unset means "
        "<tritonserver's root>/backends when that exists (NVIDIA's layout), else Triton's "
        "default (/opt/tritonserver/backends).",
    )
    triton_library_path: list[str] | None = Field(
        default=None,
        description="Directories put first on tritonserver's LD_LIBRARY_PATH (process "
        "backend): the Python backend's stub finds Triton's libraries through it. Unset: "
        "<tritonserver's root>/lib when that exists (bin/../lib, NVIDIA's layout); [] none.",
    )
    triton_extra_args: list[str] = Field(
        default_factory=list, description="Extra tritonserver arguments."
    )
    triton_ready_timeout_s: float = Field(
        default=180.0, gt=0, description="How long to wait for Triton to become ready."
    )
    triton_exit_timeout_s: int = Field(
        default=10, ge=0, description="Triton --exit-timeout-secs (in-flight work on stop)."
    )
    infer_timeout_s: float = Field(
        default=600.0, gt=0, description="Upper bound of one inference (jobs have timeout_s)."
    )
    docker_host: str | None = Field(
        default=None, description="Docker engine address; unset: DOCKER_HOST or the default."
    )

    # supervision
    restart_backoff_initial_s: float = Field(
        default=1.0, gt=0, description="First delay before restarting a dead Triton."
    )
    restart_backoff_max_s: float = Field(
        default=60.0, gt=0, description="Largest delay between Triton restarts."
    )
    watch_interval_s: float = Field(
        default=1.0, gt=0, description="How often Triton's liveness is checked."
    )
    lease_grace_s: float = Field(
        default=30.0, ge=0, description="On SIGTERM: time in-flight jobs get to finish."
    )
    job_logs: bool = Field(
        default=True,
        description="Send each job's logs with its result (the runner's lines about the job, "
        "and Triton's output during its run with the docker backend: one Docker call per job).",
    )
    keep_triton_on_exit: bool = Field(
        default=False,
        description="On a clean stop leave Triton running (a restarted runner adopts it).",
    )
    register_retry_s: float = Field(
        default=60.0, gt=0, description="Retry period when the join token is refused."
    )

    # model sync
    model_load_timeout_s: float = Field(
        default=900.0, gt=0, description="Timeout of one Triton model load (big models: minutes)."
    )
    model_download_concurrency: int = Field(
        default=4, ge=1, le=64, description="Model files downloaded at once (model sync)."
    )

    # local
    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="Credentials, Triton logs, the model-repository API key and the model "
        "file cache (cache/sha256/<digest>) live here.",
    )
    status_port: int = Field(
        default=8765, ge=0, le=65535, description="Local status port on 127.0.0.1 (0: any free)."
    )
    status_enabled: bool = Field(default=True, description="Serve the local status port.")
    dispatch: bool = Field(
        default=True,
        description="Keep the dispatch channel open: synchronous inference from the control "
        "plane in memory (off = durable jobs only).",
    )
    channel_jobs: bool = Field(
        default=True,
        description="While the dispatch channel is open, lease and complete jobs over it "
        "instead of one signed HTTP request each (off = always HTTP).",
    )
    direct_url: str | None = Field(
        default=None,
        description="Direct mode (docs/direct.md): the URL callers reach this runner's own "
        "KServe v2 endpoint at (e.g. http://gpu-1.internal:8010), reported to the control plane, "
        "which hands it out with tickets. Unset: direct mode is off.",
    )
    direct_host: str = Field(
        default="0.0.0.0",
        description="Direct mode: address the endpoint listens on.",
    )
    direct_port: int = Field(
        default=8010, ge=0, le=65535, description="Direct mode: port the endpoint listens on."
    )
    direct_grpc_url: str | None = Field(
        default=None,
        description="Direct mode over gRPC: the host:port callers reach this runner's KServe "
        "gRPC endpoint at (needs direct_url too). Unset: HTTP only.",
    )
    direct_grpc_port: int = Field(
        default=8011, ge=0, le=65535, description="Direct mode: port of the gRPC endpoint."
    )
    direct_tls_cert: Path | None = Field(
        default=None, description="Direct mode: serve HTTPS with this certificate (PEM)."
    )
    direct_tls_key: Path | None = Field(default=None, description="Key of direct_tls_cert (PEM).")
    direct_ticket_issuer: str = Field(
        default="gpufleet",
        description="Direct mode: the `iss` tickets must carry (the control plane's jwt_issuer).",
    )
    direct_jwks_refresh_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Direct mode: re-read the control plane's JWKS this often (at once on an "
        "unknown kid); a rotated-out key stops verifying here within this time.",
    )
    log_level: str = Field(default="INFO", description="Logging level.")

    # file source, set by the CLI's --config (never from the environment)
    config_file: Path | None = Field(default=None, exclude=True, description="YAML file read.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = _yaml_file(init_settings())
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

    @model_validator(mode="after")
    def _tls_allowed(self) -> RunnerSettings:
        options = self.tls_options()
        if not options.verify and not options.insecure_remote:
            host = urlsplit(self.control_plane_url).hostname or ""
            if urlsplit(self.control_plane_url).scheme == "https" and not is_loopback(host):
                check_url(self.control_plane_url, options)  # raises, naming the settings
        if (self.tls_client_cert is None) != (self.tls_client_key is None):
            raise ValueError("tls_client_cert and tls_client_key go together: set both")
        if (self.direct_tls_cert is None) != (self.direct_tls_key is None):
            raise ValueError("direct_tls_cert and direct_tls_key go together: set both")
        if self.direct_url is not None and urlsplit(self.direct_url).scheme not in (
            "http",
            "https",
        ):
            raise ValueError("direct_url must be an http:// or https:// URL")
        if self.direct_grpc_url is not None and self.direct_url is None:
            raise ValueError("direct_grpc_url needs direct_url (direct mode) set too")
        return self

    def tls_options(self) -> TlsOptions:
        """The TLS options of every connection to the control plane and the bucket."""
        return TlsOptions(
            ca_bundle=self.ca_bundle,
            verify=self.tls_verify,
            insecure_remote=self.tls_insecure_remote,
            client_cert=self.tls_client_cert,
            client_key=self.tls_client_key,
            names=RUNNER_TLS_NAMES,
        )

    @property
    def credentials_file(self) -> Path:
        return self.state_dir / "credentials.json"

    @property
    def triton_log_file(self) -> Path:
        return self.state_dir / "triton.log"


def _yaml_file(init: dict[str, Any]) -> Path | None:
    explicit = init.get("config_file") or os.environ.get(CONFIG_FILE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    default = default_config_file()
    return default if default.exists() else None


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> RunnerSettings:
    """Build the settings once. ``overrides`` (CLI flags) win over env and file.

    ``None`` overrides are dropped, so unset CLI flags fall through to env/YAML/defaults.
    """
    values = {k: v for k, v in overrides.items() if v is not None}
    if config_file is not None:
        values["config_file"] = Path(config_file)
    return RunnerSettings(**values)
