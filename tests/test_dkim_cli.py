"""Issue 7: `mailrelay dkim rotate` makes the next key and says what to do; `dkim dns --verify` checks DNS
(answers faked: DNS is not ours to run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import KeyPairs, SettingsFactory
from mailrelay import signing
from mailrelay.cli import main


def test_rotate_makes_a_private_key_and_prints_records_and_steps(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings()
    args = ["dkim", "rotate", "--config", str(settings.source), "--tenant", "acme", "--selector", "mr2027"]
    assert main(args) == 0
    out = capsys.readouterr().out
    key = settings.state_dir / "dkim" / "acme.mr2027.rsa.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert 'mr2027._domainkey.acme.co.jp. IN TXT ( "v=DKIM1; k=rsa; p=' in out
    assert "mr2027._domainkey.acme.example. IN TXT" in out
    assert "systemctl reload mailrelay" in out and 'selector = "mr2027"' in out
    assert main(args) == 1  # never overwrites a key
    assert main([*args[:-1], "mr1"]) == 1  # a selector already in use


def test_dns_verify_says_which_records_match(
    make_settings: SettingsFactory,
    keys: KeyPairs,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings()
    answers = {"mr1._domainkey.acme.co.jp": [keys.rsa_txt], "mr1._domainkey.acme.example": []}
    monkeypatch.setattr(signing, "published_txt", lambda name, timeout=3.0: answers.get(name))
    assert main(["dkim", "dns", "--config", str(settings.source), "--verify"]) == 1
    out = capsys.readouterr().out
    assert out.count("published: yes, the record in DNS matches this key") == 1
    assert "published: NO: no record in DNS" in out
    answers["mr1._domainkey.acme.example"] = [keys.rsa_txt]
    assert main(["dkim", "dns", "--config", str(settings.source), "--verify"]) == 0
    monkeypatch.setattr(signing, "published_txt", lambda name, timeout=3.0: None)
    assert main(["dkim", "dns", "--config", str(settings.source), "--verify"]) == 0
    assert "unknown: DNS could not be asked" in capsys.readouterr().out


def test_keygen_where_it_cannot_write_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was a PermissionError traceback (--out a directory of root's); tests may run as root, whom
    permissions do not stop, so a file stands where the directory should be."""
    in_the_way = tmp_path / "dkim"
    in_the_way.write_text("")
    out = in_the_way / "keys"
    status = main(["dkim", "keygen", "--domain", "acme.co.jp", "--selector", "mr", "--out", str(out)])
    captured = capsys.readouterr()
    assert (status, captured.out) == (1, "")
    assert captured.err == f"mailrelay: cannot write {out}: Not a directory\n"


def test_rotate_where_it_cannot_write_says_so_in_one_line(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings()
    settings.state_dir.write_text("")  # a file where state_dir, the key directory's parent, should be
    args = ["dkim", "rotate", "--config", str(settings.source), "--tenant", "acme", "--selector", "mr2027"]
    status = main(args)
    captured = capsys.readouterr()
    assert (status, captured.out) == (1, "")
    assert captured.err == f"mailrelay: cannot write {settings.state_dir / 'dkim'}: Not a directory\n"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--domain", "a example", "must be a domain name such as example.co.jp"),
        ("--domain", "example", "must be a domain name such as example.co.jp"),
        ("--domain", "-acme.co.jp", "must be a domain name such as example.co.jp"),
        ("--domain", "求人.jp", "must be a domain name such as example.co.jp"),
        ("--selector", "my sel;x", "must be a selector such as mr2027"),
        ("--selector", "../mr", "must be a selector such as mr2027"),
        ("--selector", "x" * 64, "must be a selector such as mr2027"),
    ],
)
def test_keygen_refuses_a_domain_or_selector_no_zone_can_hold(
    option: str, value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """RFC 6376 §3.1; "a example" was written into the zone line it printed."""
    args = {"--domain": "acme.co.jp", "--selector": "mr", option: value}
    with pytest.raises(SystemExit) as exit_:
        main(["dkim", "keygen", *(f"{name}={x}" for name, x in args.items()), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert f"mailrelay dkim keygen: error: argument {option}: {message}" in err
    assert err.endswith(f"not {value!r}\n")
    assert list(tmp_path.iterdir()) == []


def test_keygen_takes_a_dotted_selector_and_a_domain_with_the_root_dot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["dkim", "keygen", "--domain", "acme.co.jp.", "--selector", "mr.2027", "--out", str(tmp_path)]
    assert main(args) == 0
    assert 'mr.2027._domainkey.acme.co.jp. IN TXT ( "v=DKIM1; k=rsa; p=' in capsys.readouterr().out
    assert (tmp_path / "mr.2027.acme.co.jp.rsa.key").exists()


def test_rotate_refuses_a_selector_no_zone_can_hold(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings()
    with pytest.raises(SystemExit) as exit_:
        main(
            ["dkim", "rotate", "--config", str(settings.source), "--tenant", "acme", "--selector", "mr 2027"]
        )
    assert exit_.value.code == 2
    assert "argument --selector: must be a selector such as mr2027" in capsys.readouterr().err
    assert not (settings.state_dir / "dkim").exists()
