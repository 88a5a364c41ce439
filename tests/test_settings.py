"""Configuration: ``tessera.settings.load_settings`` over an explicit environment mapping.

The issuer rules are RFC 8414 §2 (an https URL with no query or fragment, compared as an exact
string); http:// is tolerated for loopback hosts only (local development).
"""

from __future__ import annotations

import pathlib

import pytest

from tessera.settings import Settings, SettingsError, is_loopback_host, load_settings


def settings_error(env: dict[str, str], **overrides: object) -> str:
    with pytest.raises(SettingsError) as exc:
        load_settings(env, **overrides)
    return str(exc.value)


# -- defaults ----------------------------------------------------------------------------------------


def test_defaults_from_an_empty_environment() -> None:
    s = load_settings({})
    assert s.host == "127.0.0.1"
    assert s.port == 8080
    assert s.issuer == "http://127.0.0.1:8080"
    assert s.audience_default == s.issuer
    assert s.workers == 1
    assert s.signing_algs == ["ES256"]
    assert s.access_token_lifetime == 900
    assert s.assertion_max_lifetime == 3600
    assert s.leeway == 30
    assert s.key_refresh_interval == 5.0
    assert s.jwks_max_age == 300
    assert s.log_level == "info"
    assert s.kek is None and s.admin_token is None and s.registration_token is None
    assert s.clients == []
    assert s.config is None


def test_the_process_environment_is_not_read_when_a_mapping_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_PORT", "9999")
    assert load_settings({}).port == 8080
    assert load_settings().port == 9999


def test_default_issuer_follows_host_and_port() -> None:
    assert load_settings({"TESSERA_PORT": "9001"}).issuer == "http://127.0.0.1:9001"
    assert load_settings({"TESSERA_HOST": "::1", "TESSERA_PORT": "9001"}).issuer == "http://[::1]:9001"
    assert load_settings({"TESSERA_HOST": "localhost"}).issuer == "http://localhost:8080"


def test_default_issuer_on_a_public_interface_is_refused() -> None:
    # Listening on all interfaces without naming the public https issuer would publish http://0.0.0.0:8080.
    msg = settings_error({"TESSERA_HOST": "0.0.0.0"})
    assert "issuer must use https" in msg


def test_database_url_defaults_to_sqlite_under_the_data_dir(tmp_path: pathlib.Path) -> None:
    s = load_settings({"TESSERA_DATA_DIR": str(tmp_path / "d")})
    assert s.data_dir == tmp_path / "d"
    assert s.database_url == f"sqlite:///{tmp_path / 'd' / 'tessera.db'}"


def test_relative_data_dir_gives_an_absolute_database_path(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings({"TESSERA_DATA_DIR": "rel"})
    assert s.database_url == f"sqlite:///{tmp_path / 'rel' / 'tessera.db'}"


def test_database_url_schemes() -> None:
    assert load_settings({"TESSERA_DATABASE_URL": "postgresql://u@h/db"}).database_url == "postgresql://u@h/db"
    assert load_settings({"TESSERA_DATABASE_URL": "postgresql+psycopg://u@h/db"}).database_url.startswith(
        "postgresql+psycopg://"
    )
    msg = settings_error({"TESSERA_DATABASE_URL": "mysql://u@h/db"})
    assert "database_url (TESSERA_DATABASE_URL): must start with sqlite:/// or postgresql://" in msg


# -- issuer (RFC 8414 §2) -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "issuer",
    [
        "https://auth.example.com",
        "https://auth.example.com:8443",
        "https://auth.example.com/tenant-a",
        "http://127.0.0.1:8080",
        "http://localhost:8080",
        "http://[::1]:8080",
        "http://api.localhost",
    ],
)
def test_issuer_accepted(issuer: str) -> None:
    assert load_settings({"TESSERA_ISSUER": issuer}).issuer == issuer


@pytest.mark.parametrize(
    ("issuer", "reason"),
    [
        ("http://auth.example.com", "issuer must use https; http:// is allowed only for loopback hosts"),
        ("http://10.0.0.1:8080", "issuer must use https; http:// is allowed only for loopback hosts"),
        ("http://localhost.example.com", "issuer must use https; http:// is allowed only for loopback hosts"),
        ("https://auth.example.com/", "issuer must not end with '/'"),
        ("https://auth.example.com/tenant/", "issuer must not end with '/'"),
        ("https://auth.example.com?tenant=a", "issuer must not have a query or fragment"),
        ("https://auth.example.com/?", "issuer must not have a query or fragment"),
        ("https://auth.example.com#frag", "issuer must not have a query or fragment"),
        ("ftp://auth.example.com", "issuer must be an absolute https URL"),
        ("auth.example.com", "issuer must be an absolute https URL"),
        ("https://", "issuer must be an absolute https URL"),
    ],
)
def test_issuer_refused(issuer: str, reason: str) -> None:
    msg = settings_error({"TESSERA_ISSUER": issuer})
    assert msg.startswith("invalid configuration:")
    assert reason in msg


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("a.localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("localhost.example", False),
        ("example.com", False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback_host(host: str | None, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


# -- the TOML file and precedence ----------------------------------------------------------------------


def write_config(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "tessera.toml"
    path.write_text(text)
    return path


def test_config_file_values(tmp_path: pathlib.Path) -> None:
    path = write_config(
        tmp_path,
        """
issuer = "https://auth.example.com"
port = 9000
signing_algs = ["RS256", "ES256"]
access_token_lifetime = 600
key_refresh_interval = 2.5
log_level = "WARNING"

[[clients]]
client_id = "ci"
token_endpoint_auth_method = "private_key_jwt"
""",
    )
    s = load_settings({"TESSERA_CONFIG": str(path)})
    assert s.config == path
    assert s.issuer == "https://auth.example.com"
    assert s.port == 9000
    assert s.signing_algs == ["RS256", "ES256"]
    assert s.access_token_lifetime == 600
    assert s.key_refresh_interval == 2.5
    assert s.log_level == "warning"
    assert s.clients == [{"client_id": "ci", "token_endpoint_auth_method": "private_key_jwt"}]


def test_environment_overrides_the_config_file_and_overrides_win(tmp_path: pathlib.Path) -> None:
    path = write_config(tmp_path, 'port = 9000\naccess_token_lifetime = 600\nsigning_algs = ["RS256"]\n')
    env = {"TESSERA_CONFIG": str(path), "TESSERA_PORT": "9100", "TESSERA_SIGNING_ALGS": "EdDSA"}
    s = load_settings(env)
    assert (s.port, s.access_token_lifetime, s.signing_algs) == (9100, 600, ["EdDSA"])
    assert load_settings(env, port=9200).port == 9200
    assert load_settings(env, port=None).port == 9100  # an unset CLI flag changes nothing


def test_config_override_names_the_file(tmp_path: pathlib.Path) -> None:
    path = write_config(tmp_path, "port = 9300\n")
    assert load_settings({}, config=str(path)).port == 9300


def test_unknown_key_in_the_config_file_is_refused(tmp_path: pathlib.Path) -> None:
    path = write_config(tmp_path, "port = 9000\naccess_token_lifetme = 600\n")
    msg = settings_error({"TESSERA_CONFIG": str(path)})
    assert "access_token_lifetme" in msg
    assert "not a Tessera setting" in msg


def test_unknown_environment_variables_are_ignored() -> None:
    assert load_settings({"TESSERA_NO_SUCH_SETTING": "1", "TESSERA_TEST_POSTGRES_URL": "x"}).port == 8080


def test_missing_config_file(tmp_path: pathlib.Path) -> None:
    msg = settings_error({"TESSERA_CONFIG": str(tmp_path / "absent.toml")})
    assert msg == f"TESSERA_CONFIG: no such file {tmp_path / 'absent.toml'}"


def test_config_file_that_is_not_toml(tmp_path: pathlib.Path) -> None:
    path = write_config(tmp_path, "port = = 1\n")
    msg = settings_error({"TESSERA_CONFIG": str(path)})
    assert msg.startswith(f"{path}: not valid TOML")


# -- typed values ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["abc", "8080.5", "-1", "65536", ""])
def test_invalid_port_names_the_variable(port: str) -> None:
    msg = settings_error({"TESSERA_PORT": port})
    assert "port (TESSERA_PORT)" in msg


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TESSERA_WORKERS", "0"),
        ("TESSERA_ACCESS_TOKEN_LIFETIME", "9"),
        ("TESSERA_ACCESS_TOKEN_LIFETIME", "86401"),
        ("TESSERA_ASSERTION_MAX_LIFETIME", "3601"),
        ("TESSERA_LEEWAY", "-1"),
        ("TESSERA_KEY_REFRESH_INTERVAL", "0"),
        ("TESSERA_MAX_BODY_BYTES", "100"),
        ("TESSERA_LOG_LEVEL", "verbose"),
    ],
)
def test_out_of_range_values_name_the_variable(name: str, value: str) -> None:
    msg = settings_error({name: value})
    assert f"({name})" in msg


def test_numbers_from_the_environment_are_parsed() -> None:
    s = load_settings(
        {
            "TESSERA_KEY_REFRESH_INTERVAL": "0.5",
            "TESSERA_ACCESS_TOKEN_LIFETIME": "10",
            "TESSERA_LEEWAY": "0",
            "TESSERA_JWKS_MAX_AGE": "60",
        }
    )
    assert (s.key_refresh_interval, s.access_token_lifetime, s.leeway, s.jwks_max_age) == (0.5, 10, 0, 60)


@pytest.mark.parametrize(
    ("raw", "algs"),
    [
        ("ES256", ["ES256"]),
        ("ES256,RS256,EdDSA", ["ES256", "RS256", "EdDSA"]),
        (" RS256 , ES256 ", ["RS256", "ES256"]),
        ("EdDSA,", ["EdDSA"]),
        ('["RS256", "EdDSA"]', ["RS256", "EdDSA"]),
        (' ["ES256"] ', ["ES256"]),
    ],
)
def test_signing_algs_parsing(raw: str, algs: list[str]) -> None:
    assert load_settings({"TESSERA_SIGNING_ALGS": raw}).signing_algs == algs


@pytest.mark.parametrize("raw", ["HS256", "ES256,none", "es256", "", "ES256,ES256", "[]", '["PS256"]'])
def test_bad_signing_algs_refused(raw: str) -> None:
    msg = settings_error({"TESSERA_SIGNING_ALGS": raw})
    assert "signing_algs (TESSERA_SIGNING_ALGS)" in msg
    assert "distinct values from ['ES256', 'EdDSA', 'RS256']" in msg


def test_signing_algs_bad_json_refused() -> None:
    msg = settings_error({"TESSERA_SIGNING_ALGS": '["ES256"'})
    assert msg.startswith("TESSERA_SIGNING_ALGS: not valid JSON")


def test_declared_clients_from_json_environment() -> None:
    s = load_settings({"TESSERA_CLIENTS": '[{"client_id": "a", "scope": "read"}]'})
    assert s.clients == [{"client_id": "a", "scope": "read"}]
    assert settings_error({"TESSERA_CLIENTS": "[{"}).startswith("TESSERA_CLIENTS: not valid JSON")


def test_settings_are_immutable() -> None:
    s = load_settings({})
    with pytest.raises(ValueError, match="frozen"):
        s.port = 1  # type: ignore[misc]


# -- secrets -----------------------------------------------------------------------------------------------


def test_masked_hides_secrets_and_the_database_password() -> None:
    env = {
        "TESSERA_KEK": "kek-value-0123456789",
        "TESSERA_ADMIN_TOKEN": "admin-value-0123456789",
        "TESSERA_REGISTRATION_TOKEN": "reg-value-0123456789",
        "TESSERA_DATABASE_URL": "postgresql://tessera:db-pass-0123456789@db.example:5432/tessera",
    }
    s = load_settings(env)
    assert s.kek == "kek-value-0123456789"
    out = s.masked()
    assert out["kek"] == "***"
    assert out["admin_token"] == "***"
    assert out["registration_token"] == "***"
    assert out["database_url"] == "postgresql://***@db.example:5432/tessera"
    assert out["port"] == 8080 and out["issuer"] == "http://127.0.0.1:8080"
    text = repr(out)
    for secret in ("kek-value", "admin-value", "reg-value", "db-pass", "tessera:"):
        assert secret not in text
    for secret in ("kek-value", "admin-value", "reg-value"):
        assert secret not in repr(s)


def test_masked_leaves_unset_secrets_and_sqlite_urls_alone(tmp_path: pathlib.Path) -> None:
    out = load_settings({"TESSERA_DATA_DIR": str(tmp_path)}).masked()
    assert out["kek"] is None and out["admin_token"] is None and out["registration_token"] is None
    assert out["database_url"] == f"sqlite:///{tmp_path / 'tessera.db'}"


def test_masked_is_every_setting() -> None:
    assert set(load_settings({}).masked()) == set(Settings.model_fields)
