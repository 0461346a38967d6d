"""Settings: precedence flag > environment > config file > default, original AllQ
environment names, TOML validation, one-line errors for every bad value, and the README
table generated from the code (fails when they drift)."""

from __future__ import annotations

from pathlib import Path

import pytest

from allq.config import ConfigError
from allq.settings import BY_SECTION, SETTINGS, markdown_table, parse_value, resolve

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults() -> None:
    values = resolve("server", {}, {})
    assert (values["host"], values["port"], values["max_job_bytes"]) == (
        "127.0.0.1",
        5555,
        1_048_576,
    )
    assert values["key"] is None
    assert resolve("gateway", {}, {})["servers"] == ()
    assert resolve("up", {}, {})["data_dir"] == Path(".allq")


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    config = tmp_path / "allq.toml"
    config.write_text("[server]\nport = 6001\nmax_tubes = 7\ndefault_ttr = 9\n")
    env = {"ALLQ_SERVER_PORT": "6002", "ALLQ_SERVER_MAX_TUBES": "8"}
    values = resolve("server", {"port": "6003"}, env, config)
    assert values["port"] == 6003  # flag
    assert values["max_tubes"] == 8  # environment
    assert values["default_ttr"] == 9  # file
    assert values["max_jobs"] == 0  # default


@pytest.mark.parametrize(
    ("section", "env", "name", "value"),
    [
        ("server", {"SERVER_PORT": "7000"}, "port", 7000),
        ("server", {"DEFAULT_TTL": "30"}, "default_ttr", 30),
        ("server", {"FQ_PREFIX": "fair-"}, "fair_prefix", "fair-"),
        ("server", {"SHARD_RESERVATION_LIMIT": "4"}, "default_shard_reservation_limit", 4),
        ("gateway", {"HTTP_SERVER_PORT": "8100"}, "port", 8100),
        ("gateway", {"SERVER_STRING": "tcp://a:1,b:2"}, "servers", ("a:1", "b:2")),
        ("gateway", {"ALLQ_API_TOKEN": "t"}, "api_token", "t"),
    ],
)
def test_original_allq_environment_names(
    section: str, env: dict[str, str], name: str, value: object
) -> None:
    assert resolve(section, {}, env)[name] == value


def test_only_resolves_and_checks_just_the_named_settings(tmp_path: Path) -> None:
    config = tmp_path / "allq.toml"
    config.write_text('[gateway]\nlog_level = "debug"\nmax_inflight = 0\n')
    env = {"ALLQ_GATEWAY_LOG_JSON": "on", "ALLQ_GATEWAY_SERVERS": "nope"}
    values = resolve("gateway", {}, env, config, only=("log_level", "log_json"))
    assert values == {"log_level": "DEBUG", "log_json": True}  # the bad others not read
    with pytest.raises(ConfigError, match=r"gateway\.servers = 'nope'"):
        resolve("gateway", {}, env, config)


def test_the_allq_name_wins_over_the_original_one() -> None:
    env = {"SERVER_PORT": "7000", "ALLQ_SERVER_PORT": "7001"}
    assert resolve("server", {}, env)["port"] == 7001


def test_bool_flags_and_env() -> None:
    assert resolve("up", {"memory": True}, {})["memory"] is True
    assert resolve("up", {}, {"ALLQ_UP_MEMORY": "yes"})["memory"] is True
    with pytest.raises(
        ConfigError, match=r"up\.memory = 'maybe' \(from ALLQ_UP_MEMORY\): must be true or false"
    ):
        resolve("up", {}, {"ALLQ_UP_MEMORY": "maybe"})


BAD = {
    "int": ["x", "1.5", "true"],
    "float": ["x", "nan", "inf"],
    "level": ["LOUD"],
    "servers": ["nope", "a:0", "a:99999"],
}


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"{s.section}.{s.name}")
def test_every_bad_value_is_one_line_naming_setting_value_and_rule(setting: object) -> None:
    from allq.settings import Setting

    assert isinstance(setting, Setting)
    candidates = list(BAD.get(setting.kind, []))
    if setting.kind in ("int", "float"):
        if setting.low is not None:
            candidates.append(str(setting.low - 1))
        if setting.high is not None:
            candidates.append(str(setting.high * 2 + 1))
    if setting.pattern is not None:
        candidates.append("bad value!")
    if setting.kind == "bool":
        candidates.append("perhaps")
    if setting.kind in ("str", "path") and setting.pattern is None:
        candidates.append("")
    assert candidates, f"no bad value known for {setting.kind}"
    for raw in candidates:
        with pytest.raises(ConfigError) as error:
            parse_value(setting, raw, setting.env)
        message = str(error.value)
        assert "\n" not in message
        assert f"{setting.section}.{setting.name} = {raw!r} (from {setting.env})" in message
        assert f"must be {setting.allowed()}" in message


def test_config_file_errors_name_the_problem(tmp_path: Path) -> None:
    config = tmp_path / "allq.toml"
    config.write_text("[server]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"\[server\] has no setting 'prot'"):
        resolve("server", {}, {}, config)
    config.write_text("[servre]\nport = 1\n")
    with pytest.raises(ConfigError, match=r"unknown table \[servre\]"):
        resolve("server", {}, {}, config)
    config.write_text("[server\n")
    with pytest.raises(ConfigError, match=r"allq\.toml"):
        resolve("server", {}, {}, config)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve("server", {}, {}, tmp_path / "missing.toml")
    config.write_text('[server]\nport = "http"\n')
    with pytest.raises(ConfigError, match=r"server\.port = 'http' \(from .*allq.toml \[server\]\)"):
        resolve("server", {}, {}, config)


def test_every_section_has_logging_settings() -> None:
    for section in BY_SECTION.values():
        assert {"log_level", "log_json"} <= set(section)


def test_readme_table_is_generated_from_the_code() -> None:
    text = README.read_text()
    begin, end = "<!-- settings:begin -->", "<!-- settings:end -->"
    assert begin in text, "README lacks the settings markers"
    assert end in text, "README lacks the settings markers"
    table = text.split(begin, 1)[1].split(end, 1)[0].strip()
    assert table == markdown_table(), "README settings table drifted: run python -m allq.settings"
