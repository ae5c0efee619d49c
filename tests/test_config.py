"""config.toml: the shipped file is valid; every broken file is refused with `file › key: problem`."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, SettingsFactory
from mailrelay.cli import main
from mailrelay.config import default_config_path, load_settings
from mailrelay.errors import ConfigError


def test_shipped_config_is_the_embedded_default_and_loads() -> None:
    assert default_config_path().resolve() == (REPO / "config.toml").resolve()
    settings = load_settings(default_config_path())
    assert settings.smtp.listen.port == 10025
    assert settings.next_hop.directory is not None
    assert settings.database_url.startswith("sqlite:///")
    assert [p.name for p in settings.rules] == sorted(p.name for p in (REPO / "rules").glob("*.toml"))
    assert {"ja", "en"} <= set(settings.tenants[0].footers)


def test_every_key_of_the_shipped_config_is_commented() -> None:
    lines = (REPO / "config.toml").read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        if "=" in stripped and not stripped.startswith(("#", '"', "[")) and not line.startswith((" ", "\t")):
            key = stripped.split("=", 1)[0].strip()
            if key in {"text", "html"}:  # footer bodies, documented once above the [footers] tables
                continue
            assert lines[index - 1].strip().startswith("#"), (
                f"config.toml line {index + 1}: {key} has no comment"
            )


def _broken(tmp_path: Path, text: str) -> ConfigError:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return info.value


BASE = f"""
[rules]
paths = ["{REPO}/rules/*.toml"]
[referral]
base_url = "https://careerrelay.jp/r/"
[[tenants]]
id = "a"
domains = ["a.example"]
[[tenants.dkim]]
selector = "s"
key_file = "k"
"""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[smtp]\nlisten = "localhost"\n', "smtp.listen: must be HOST:PORT"),
        ("[next_hop]\nport = 0\n", "next_hop.port: must be between 1 and 65535, not 0"),
        ("[next_hop]\nport = true\n", "next_hop.port: must be an integer, not bool True"),
        (
            '[next_hop]\nstarttls = "maybe"\n',
            "next_hop.starttls: must be one of off, opportunistic, required",
        ),
        ('[smtp]\nclient_networks = ["10.0.0.300/8"]\n', "smtp.client_networks: '10.0.0.300/8' is not an IP"),
        ('[smtp]\nlisen = "x"\n', "smtp.lisen: unknown key"),
        ('[footers.ja]\ntext = "no link"\nhtml = "{link}"\n', "footers.ja.text: must contain {link}"),
        ('[footers.ja]\ntext = "{link} {name}"\nhtml = "{link}"\n', "footers.ja.text: bad placeholder"),
        ("[smtp]\ntimeout = nan\n", "smtp.timeout: must be a finite number, not nan"),
        ("[processing]\ntime_budget = inf\n", "processing.time_budget: must be a finite number, not inf"),
    ],
)
def test_broken_config_names_file_key_and_problem(tmp_path: Path, extra: str, expected: str) -> None:
    error = _broken(tmp_path, extra + BASE)
    assert str(error).startswith(f"{tmp_path / 'config.toml'} › ")
    assert expected in str(error)


FOOTER_RULE = "use only {link} and {company}, without attribute, index, conversion or format spec"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{link} {company.name}", "bad placeholder {company.name}: " + FOOTER_RULE),
        ("{link} {link.upper}", "bad placeholder {link.upper}: " + FOOTER_RULE),
        ("{link[0]}", "bad placeholder {link[0]}: " + FOOTER_RULE),
        ("{link!r}", "bad placeholder {link!r}: " + FOOTER_RULE),
        ("{link} {company:>40}", "bad placeholder {company:>40}: " + FOOTER_RULE),
        ("{link} {}", "bad placeholder {}: " + FOOTER_RULE),
        (
            "{link} {company",
            "bad placeholder (expected '}' before end of string): "
            + FOOTER_RULE
            + " ({{ and }} for a brace)",
        ),
        ("{{link}}", "must contain {link}, the applicant's referral link"),
    ],
)
def test_footer_placeholders_are_only_link_and_company(tmp_path: Path, text: str, problem: str) -> None:
    """str.format would look up attributes and indexes: {company.x} crashed the check, and {link.upper}
    put a Python repr into applicants' mail."""
    footer = f"[tenants.footers.ja]\ntext = '{text}'\nhtml = '<a href=\"{{link}}\">{{link}}</a>'\n"
    error = _broken(tmp_path, BASE.replace("[[tenants.dkim]]", footer + "[[tenants.dkim]]"))
    assert str(error) == f"{tmp_path / 'config.toml'} › tenants[0].footers.ja.text: {problem}"


def test_check_config_refuses_a_bad_footer_placeholder_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[footers.ja]\ntext = "{link} {company.name}"\nhtml = "{link}"\n' + BASE, encoding="utf-8"
    )
    assert main(["check-config", "--config", str(path)]) == 2
    assert f"{path} › footers.ja.text: bad placeholder {{company.name}}: " in capsys.readouterr().out


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cert.pem + key.pem (a pair), other.key (another key), enc.key (key.pem under a passphrase)."""
    base = tmp_path_factory.mktemp("tls")
    for cert, key in (("cert.pem", "key.pem"), ("other.pem", "other.key")):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-days", "2", "-subj", "/CN=relay.test", "-keyout", base / key, "-out", base / cert],
            check=True, capture_output=True,
        )  # fmt: skip
    encrypt = ["openssl", "pkey", "-in", base / "key.pem", "-aes256", "-passout", "pass:secret"]
    subprocess.run([*encrypt, "-out", base / "enc.key"], check=True, capture_output=True)
    (base / "junk.pem").write_text("not PEM\n", encoding="utf-8")
    return base


@pytest.mark.parametrize(
    ("cert", "key", "problem"),
    [
        ("missing.pem", "key.pem", "smtp.tls_cert_file: {dir}/missing.pem does not exist"),
        ("cert.pem", "missing.pem", "smtp.tls_key_file: {dir}/missing.pem does not exist"),
        (
            "cert.pem",
            "other.key",
            "smtp.tls_key_file: {dir}/other.key is not the private key of tls_cert_file",
        ),
        ("junk.pem", "key.pem", "smtp.tls_cert_file: {dir}/junk.pem holds no PEM certificate"),
        ("key.pem", "key.pem", "smtp.tls_cert_file: {dir}/key.pem holds no PEM certificate"),
        ("cert.pem", "junk.pem", "smtp.tls_key_file: {dir}/junk.pem holds no PEM private key"),
        (
            "cert.pem",
            "enc.key",
            "smtp.tls_key_file: {dir}/enc.key needs a passphrase; mailrelay starts unattended, so give it "
            "the key without one (openssl pkey -in KEY -out PLAIN_KEY)",
        ),
    ],
)
def test_tls_files_must_exist_and_load_together(
    tmp_path: Path, tls_files: Path, cert: str, key: str, problem: str
) -> None:
    """They were first opened by serve, which died with a traceback; check-config said ok."""
    smtp = f'[smtp]\ntls_cert_file = "{tls_files / cert}"\ntls_key_file = "{tls_files / key}"\n'
    error = _broken(tmp_path, smtp + BASE)
    assert str(error) == f"{tmp_path / 'config.toml'} › " + problem.format(dir=tls_files)


def test_a_matching_tls_pair_loads(tmp_path: Path, tls_files: Path) -> None:
    path = tmp_path / "config.toml"
    smtp = f'[smtp]\ntls_cert_file = "{tls_files}/cert.pem"\ntls_key_file = "{tls_files}/key.pem"\n'
    path.write_text(smtp + BASE, encoding="utf-8")
    assert load_settings(path).smtp.tls_key_file == tls_files / "key.pem"


HOSTNAME_RULE = (
    "must be a host name (letters, digits and hyphens in dot-separated labels, RFC 1123 §2.1) "
    "or an address literal such as [192.0.2.1]"
)


@pytest.mark.parametrize(
    ("toml", "shown"),
    [
        (r'"relay.example\r\n250 injected"', r"'relay.example\r\n250 injected'"),
        ('"mail relay.example"', "'mail relay.example'"),
        ('"-relay.example"', "'-relay.example'"),
        ('"relay..example"', "'relay..example'"),
        ('"relay_1.example"', "'relay_1.example'"),
        ('"[192.0.2.300]"', "'[192.0.2.300]'"),
        ('"' + "a" * 64 + '.example"', repr("a" * 64 + ".example")),
    ],
)
def test_smtp_hostname_must_be_a_host_name(tmp_path: Path, toml: str, shown: str) -> None:
    """It is sent verbatim in the 220 greeting and the EHLO reply: CR LF there injected reply lines."""
    error = _broken(tmp_path, f"[smtp]\nhostname = {toml}\n" + BASE)
    assert str(error) == f"{tmp_path / 'config.toml'} › smtp.hostname: {HOSTNAME_RULE}, not {shown}"


@pytest.mark.parametrize(
    "hostname", ["localhost", "relay.example", "MX-1.example.co.jp", "[192.0.2.1]", "[IPv6:2001:db8::1]"]
)
def test_smtp_hostname_may_be_a_name_or_an_address_literal(tmp_path: Path, hostname: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[smtp]\nhostname = "{hostname}"\n' + BASE, encoding="utf-8")
    assert load_settings(path).smtp.hostname == hostname


@pytest.mark.parametrize("selector", ["mail relay", "s_1", "-s", "s.", "ｓ1"])
def test_dkim_selector_must_be_dns_labels(tmp_path: Path, selector: str) -> None:
    """It is the s= tag and the first labels of the key's DNS name: with a space every signature failed."""
    error = _broken(tmp_path, BASE.replace('selector = "s"', f'selector = "{selector}"'))
    assert str(error) == (
        f"{tmp_path / 'config.toml'} › tenants[0].dkim[0].selector: must be DNS labels (letters, digits and "
        f"hyphens, separated by dots; RFC 6376 §3.1), not {selector!r}"
    )


@pytest.mark.parametrize("selector", ["mr2027", "2027-01", "eu.mr"])
def test_dkim_selector_may_have_several_labels(tmp_path: Path, selector: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(BASE.replace('selector = "s"', f'selector = "{selector}"'), encoding="utf-8")
    assert load_settings(path).tenants[0].dkim[0].selector == selector


DOMAIN_RULE = "letters, digits and hyphens in dot-separated labels, e.g. example.co.jp"


@pytest.mark.parametrize(
    ("domain", "problem"),
    [
        (
            "@a.example",
            "'@a.example' is not a domain name: write 'a.example' (a rule's senders take \"@domain\", "
            "domains do not)",
        ),
        (
            "hr@a.example",
            "'hr@a.example' is not a domain name: write 'a.example' (a rule's senders take \"@domain\", "
            "domains do not)",
        ),
        ("a example", f"'a example' is not a domain name ({DOMAIN_RULE})"),
        ("*.a.example", f"'*.a.example' is not a domain name ({DOMAIN_RULE})"),
        ("a..example", f"'a..example' is not a domain name ({DOMAIN_RULE})"),
        ("ａ.example", f"'ａ.example' is not a domain name ({DOMAIN_RULE})"),
    ],
)
def test_tenant_domains_must_be_domain_names(tmp_path: Path, domain: str, problem: str) -> None:
    """ "@a.example" was accepted, and then no mail ever matched the tenant."""
    error = _broken(tmp_path, BASE.replace('domains = ["a.example"]', f'domains = ["{domain}"]'))
    assert str(error) == f"{tmp_path / 'config.toml'} › tenants[0].domains: {problem}"


def test_internal_domains_must_be_domain_names(tmp_path: Path) -> None:
    error = _broken(tmp_path, 'internal_domains = ["b.example", "@agency.example"]\n' + BASE)
    assert str(error) == (
        f"{tmp_path / 'config.toml'} › internal_domains: '@agency.example' is not a domain name: write "
        "'agency.example' (a rule's senders take \"@domain\", domains do not)"
    )


def test_tenant_domains_may_be_idn_and_end_in_a_dot(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    domains = 'domains = ["A.example.", "例え.jp", "xn--r8jz45g.jp"]'
    path.write_text(BASE.replace('domains = ["a.example"]', domains), encoding="utf-8")
    assert load_settings(path).tenants[0].domains == ("a.example", "例え.jp", "xn--r8jz45g.jp")


GOOD_SECRET = "whsec_" + base64.b64encode(b"g" * 24).decode()


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        (GOOD_SECRET + "x", "secret 2 is not whsec_ followed by base64 (standard alphabet, padded)"),
        (GOOD_SECRET[:-4] + "-_-_", "secret 2 is not whsec_ followed by base64 (standard alphabet, padded)"),
        (GOOD_SECRET[6:], "secret 2 does not start with whsec_"),
        (
            "whsec_" + base64.b64encode(b"s" * 23).decode(),
            "secret 2 decodes to 23 bytes; at least 24 are needed",
        ),
    ],
)
def test_webhook_secrets_must_decode(tmp_path: Path, secret: str, problem: str) -> None:
    """A secret that is not base64 passed the prefix and length check; every webhook then got 500. The
    error names the secret by its place in the list, never by its value."""
    http = f'[http]\nwebhook_secrets = ["{GOOD_SECRET}", "{secret}"]\n'
    error = _broken(tmp_path, http + BASE)
    assert str(error) == f"{tmp_path / 'config.toml'} › http.webhook_secrets: {problem}"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (
            "mailrelay.db",
            'is not an SQLAlchemy URL: write e.g. "postgresql+psycopg://mailrelay@db.example/mailrelay" or '
            '"sqlite:////var/lib/mailrelay/mailrelay.db", or "" for SQLite in state_dir',
        ),
        (
            "postgres://mailrelay:hunter2@db.example/mailrelay",
            "names 'postgres', which is no SQLAlchemy dialect here: PostgreSQL is "
            '"postgresql+psycopg://mailrelay@db.example/mailrelay"',
        ),
    ],
)
def test_database_url_must_be_an_sqlalchemy_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, problem: str
) -> None:
    """check-config, db upgrade and report ended in an SQLAlchemy traceback; the password is never shown."""
    path = tmp_path / "config.toml"
    path.write_text(f'[database]\nurl = "{url}"\n' + BASE, encoding="utf-8")
    assert main(["check-config", "--config", str(path)]) == 2
    assert f"{path} › database.url: {problem}\n" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("host", "fix"),
    [
        ("[127.0.0.1]:10026", 'write host = "127.0.0.1" and port = 10026'),
        ("[::1]", 'write host = "::1"'),
        ("[relay.example]", 'write host = "relay.example"'),
        ("relay.example:25", 'write host = "relay.example" and port = 25'),
    ],
)
def test_next_hop_host_refuses_postfix_relayhost_syntax(tmp_path: Path, host: str, fix: str) -> None:
    """ "[127.0.0.1]:10026" was accepted and then unreachable, as a name to resolve."""
    error = _broken(tmp_path, f'[next_hop]\nhost = "{host}"\n' + BASE)
    assert str(error) == (
        f"{tmp_path / 'config.toml'} › next_hop.host: must be a host name or an IP address without brackets "
        f"or port, not {host!r}: {fix} (the port goes in next_hop.port; mailrelay never looks up MX records, "
        "so Postfix's brackets are not needed)"
    )


def test_next_hop_host_must_be_a_name_or_address(tmp_path: Path) -> None:
    error = _broken(tmp_path, '[next_hop]\nhost = "relay example"\n' + BASE)
    assert str(error) == (
        f"{tmp_path / 'config.toml'} › next_hop.host: "
        "must be a host name or an IP address, not 'relay example'"
    )


@pytest.mark.parametrize("host", ["::1", "2001:db8::25", "10.0.0.1", "relay.example.", "postfix_relay"])
def test_next_hop_host_may_be_ipv6_or_a_container_name(tmp_path: Path, host: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[next_hop]\nhost = "{host}"\n' + BASE, encoding="utf-8")
    assert load_settings(path).next_hop.host == host


def test_base_url_must_be_https(tmp_path: Path) -> None:
    error = _broken(tmp_path, BASE.replace("https://careerrelay.jp/r/", "http://careerrelay.jp/r/"))
    assert "referral.base_url: must be an https URL" in str(error)


def test_toml_syntax_error_is_named(tmp_path: Path) -> None:
    assert "not valid TOML" in str(_broken(tmp_path, "[smtp\n"))


def test_tenant_domains_must_not_overlap(tmp_path: Path) -> None:
    text = (
        BASE
        + '[[tenants]]\nid = "b"\ndomains = ["a.example"]\n[[tenants.dkim]]\nselector = "s"\nkey_file = "k"\n'
    )
    assert "tenants[1].domains: 'a.example' already belongs to tenant 'a'" in str(_broken(tmp_path, text))


def test_serve_refuses_a_broken_config_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[next_hop]\nport = 70000\n" + BASE, encoding="utf-8")
    assert main(["serve", "--config", str(path)]) == 2
    assert f"{path} › next_hop.port: must be between 1 and 65535, not 70000" in capsys.readouterr().err


def test_world_readable_dkim_key_is_refused(make_settings: SettingsFactory, tmp_path: Path) -> None:
    from mailrelay.app import build

    settings = make_settings()
    key = tmp_path / "open.key"
    key.write_bytes(settings.tenants[0].dkim[0].key_file.read_bytes())
    os.chmod(key, 0o644)
    text = settings.source.read_text(encoding="utf-8").replace(
        str(settings.tenants[0].dkim[0].key_file), str(key)
    )
    settings.source.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="readable by group or others"):
        build(load_settings(settings.source))


def test_dkim_keygen_writes_a_private_key_and_prints_the_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dkim", "keygen", "--domain", "acme.co.jp", "--selector", "mr", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert 'mr._domainkey.acme.co.jp. IN TXT ( "v=DKIM1; k=rsa; p=' in out
    key = tmp_path / "mr.acme.co.jp.rsa.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert b"BEGIN RSA PRIVATE KEY" in key.read_bytes()
    # Never overwrite a key that may already be published.
    assert main(["dkim", "keygen", "--domain", "acme.co.jp", "--selector", "mr", "--out", str(tmp_path)]) == 1
