"""The shipped systemd units and their companions, checked by Debian's systemd tools."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

UNITS = REPO / "systemd"
SERVICE = UNITS / "certdrop.service"
HTTP_SERVICE = UNITS / "certdrop-http.service"
RELOAD_PATH = UNITS / "certdrop-apache-reload.path"
RELOAD_SERVICE = UNITS / "certdrop-apache-reload.service"
SYSUSERS = UNITS / "sysusers.d" / "certdrop.conf"
TMPFILES = UNITS / "tmpfiles.d" / "certdrop.conf"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze missing: run 'make test-deps'"
)


def _entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; systemd allows a key several times."""
    out: list[tuple[str, str, str]] = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def _values(path: Path, key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in _entries(path) if s == section and k == key]


def _one(path: Path, key: str, section: str = "Service") -> str:
    values = _values(path, key, section)
    assert len(values) == 1, (key, values)
    return values[0]


def _certdrop_bin() -> str:
    exe = Path(sys.executable).with_name("certdrop")
    assert exe.exists(), exe
    return str(exe)


def _verify(folder: Path, *names: str) -> None:
    res = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--man=no", *names],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    # verify prints unknown keys and unparsable values as warnings and still exits 0:
    # a clean unit leaves stderr empty
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr.strip() == "", res.stderr


def _installed_copy(tmp_path: Path) -> Path:
    """The units as installed: ExecStart finds `certdrop` on PATH (/usr/local/bin or the
    package); systemd-analyze needs it to exist, so the copy names this venv's certdrop."""
    folder = tmp_path / "units"
    folder.mkdir()
    for unit, command in ((SERVICE, "run"), (HTTP_SERVICE, "serve")):
        text = unit.read_text()
        assert f"\nExecStart=certdrop {command} --config /etc/certdrop/certdrop.toml\n" in text
        text = text.replace("\nExecStart=certdrop ", f"\nExecStart={_certdrop_bin()} ")
        (folder / unit.name).write_text(text)
    for unit in (RELOAD_PATH, RELOAD_SERVICE):
        shutil.copy(unit, folder / unit.name)
    return folder


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    folder = _installed_copy(tmp_path)
    _verify(folder, SERVICE.name, HTTP_SERVICE.name, RELOAD_PATH.name, RELOAD_SERVICE.name)


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a typo or a bad value in the unit is reported."""
    folder = _installed_copy(tmp_path)
    unit = folder / SERVICE.name
    unit.write_text(unit.read_text().replace("WatchdogSec=30s", "WatchdogSec=thirty"))
    with pytest.raises(AssertionError):
        _verify(folder, SERVICE.name)


def test_service_unit_is_what_the_spec_asks_for() -> None:
    assert _one(SERVICE, "Type") == "notify"
    assert _one(SERVICE, "ExecStart") == "certdrop run --config /etc/certdrop/certdrop.toml"
    assert _one(SERVICE, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert re.fullmatch(r"\d+s?", _one(SERVICE, "WatchdogSec"))
    assert _one(SERVICE, "Restart") == "on-failure"  # a dead thread exits 1, then a restart
    assert _one(SERVICE, "User") == "certdrop"
    assert _one(SERVICE, "StateDirectory") == "certdrop"
    assert _one(SERVICE, "StateDirectoryMode") == "0700"
    assert _one(SERVICE, "ConfigurationDirectory") == "certdrop"
    assert _one(SERVICE, "UMask") == "0077"
    assert _one(SERVICE, "ProtectSystem") == "strict"
    rw = _one(SERVICE, "ReadWritePaths").split()
    assert sorted(p.lstrip("-") for p in rw) == ["/etc/apache2/certdrop", "/var/spool/certdrop"]
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices"):
        assert _one(SERVICE, key) == "yes", key
    # the only capability: reading the 0600 key files users drop
    assert _one(SERVICE, "CapabilityBoundingSet") == "CAP_DAC_READ_SEARCH"
    assert _values(SERVICE, "SystemCallFilter") == ["@system-service"]
    assert sorted(_values(SERVICE, "LoadCredential")) == ["ca-key-passphrase", "smtp-password"]
    assert "certdrop-apache-reload.path" in _one(SERVICE, "Wants", "Unit")


def test_http_unit_reads_the_state_and_never_the_ca_key() -> None:
    """certdrop-http.service: its own unprivileged process, Type=notify like the daemon,
    a read-only file system (the state folder included), no CA key, no capability."""
    assert _one(HTTP_SERVICE, "Type") == "notify"
    assert _one(HTTP_SERVICE, "ExecStart") == "certdrop serve --config /etc/certdrop/certdrop.toml"
    assert _one(HTTP_SERVICE, "User") == "certdrop"
    assert _one(HTTP_SERVICE, "Restart") == "on-failure"
    assert re.fullmatch(r"\d+s?", _one(HTTP_SERVICE, "WatchdogSec"))
    assert _one(HTTP_SERVICE, "ProtectSystem") == "strict"
    assert _values(HTTP_SERVICE, "ReadWritePaths") == []
    assert _values(HTTP_SERVICE, "StateDirectory") == []  # that would make the state writable
    assert _one(HTTP_SERVICE, "ReadOnlyPaths") == "/var/lib/certdrop"
    hidden = " ".join(_values(HTTP_SERVICE, "InaccessiblePaths")).split()
    assert "-/var/lib/certdrop/ca.key" in hidden and "-/var/lib/certdrop/passwords" in hidden
    assert _one(HTTP_SERVICE, "CapabilityBoundingSet") == ""
    assert _values(HTTP_SERVICE, "AmbientCapabilities") == []
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices"):
        assert _one(HTTP_SERVICE, key) == "yes", key
    assert _values(HTTP_SERVICE, "LoadCredential") == []  # no passphrase: no CA key to open


def test_apache_reload_pair_watches_the_published_files() -> None:
    watched = _values(RELOAD_PATH, "PathChanged", "Path")
    assert watched == ["/etc/apache2/certdrop/ca-bundle.pem", "/etc/apache2/certdrop/crl.pem"]
    assert _one(RELOAD_PATH, "Unit", "Path") == RELOAD_SERVICE.name
    assert _one(RELOAD_SERVICE, "Type") == "oneshot"
    assert _values(RELOAD_SERVICE, "User") == []  # root: Apache's reload needs it
    script = _one(RELOAD_SERVICE, "ExecStart")
    assert script.index("apachectl configtest") < script.index("try-reload-or-restart apache2")
    # the defaults of [apache] are what the path unit watches
    from certdrop.config import ApacheSettings

    assert str(ApacheSettings().ca_file) == watched[0]
    assert str(ApacheSettings().crl_file) == watched[1]


def test_reload_script_reloads_until_the_files_are_stable(tmp_path: Path) -> None:
    """Run the path unit's shell script with stand-ins for apachectl and systemctl: a change
    that lands while Apache reloads triggers one more round (never a missed CRL)."""
    script = _one(RELOAD_SERVICE, "ExecStart").replace("$$", "$")
    assert script.startswith("/bin/sh -ec '") and script.endswith("'")
    body = script[len("/bin/sh -ec '") : -1]
    etc = tmp_path / "etc"
    (etc / "apache2" / "certdrop").mkdir(parents=True)
    crl = etc / "apache2" / "certdrop" / "crl.pem"
    crl.write_text("crl 1\n")
    calls = tmp_path / "calls"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    # configtest logs; the first reload simulates certdrop publishing a new CRL meanwhile
    (bindir / "apachectl").write_text(f"#!/bin/sh\necho apachectl $* >> {calls}\n")
    (bindir / "systemctl").write_text(
        f"#!/bin/sh\necho systemctl $* >> {calls}\n"
        f'[ -f {tmp_path}/changed ] || {{ touch {tmp_path}/changed; echo "crl 2" > {crl}; }}\n'
    )
    for f in bindir.iterdir():
        f.chmod(0o755)
    body = (
        body.replace("/etc/apache2", str(etc / "apache2"))
        .replace("/usr/sbin/apachectl", str(bindir / "apachectl"))
        .replace("/usr/bin/systemctl", str(bindir / "systemctl"))
    )
    subprocess.run(["/bin/sh", "-ec", body], check=True, timeout=30)
    assert calls.read_text().splitlines() == [
        "apachectl configtest",
        "systemctl try-reload-or-restart apache2.service",
        "apachectl configtest",
        "systemctl try-reload-or-restart apache2.service",
    ]
    # a failing configtest stops before the reload (sh -e): Apache keeps its files
    calls.unlink()
    (bindir / "apachectl").write_text(f"#!/bin/sh\necho apachectl $* >> {calls}\nexit 1\n")
    res = subprocess.run(["/bin/sh", "-ec", body], timeout=30)
    assert res.returncode != 0
    assert calls.read_text().splitlines() == ["apachectl configtest"]


@pytest.mark.parametrize("unit", [SERVICE, HTTP_SERVICE], ids=lambda u: u.name)
def test_security_exposure_is_low(tmp_path: Path, unit: Path) -> None:
    folder = _installed_copy(tmp_path)
    res = subprocess.run(
        [str(SYSTEMD_ANALYZE), "security", "--offline=yes", "--threshold=25", unit.name],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    m = re.search(rf"Overall exposure level for {re.escape(unit.name)}: ([\d.]+)", res.stdout)
    assert m and float(m.group(1)) <= 2.5, res.stdout[-500:]


def test_sysusers_and_tmpfiles_create_user_and_folders(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for src, sub in ((SYSUSERS, "sysusers.d"), (TMPFILES, "tmpfiles.d")):
        d = root / "usr" / "lib" / sub
        d.mkdir(parents=True)
        shutil.copy(src, d / src.name)
    res = subprocess.run(
        ["systemd-sysusers", f"--root={root}"], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stderr
    passwd = (root / "etc" / "passwd").read_text()
    m = re.search(r"^certdrop:x:(\d+):(\d+):[^:]*:/var/lib/certdrop:(\S+)$", passwd, re.M)
    assert m, passwd
    uid, gid, shell = int(m.group(1)), int(m.group(2)), m.group(3)
    assert uid != 0 and shell.endswith("nologin")
    res = subprocess.run(
        ["systemd-tmpfiles", f"--root={root}", "--create"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr
    from certdrop.intake.spool import FOLDER_MODES, INBOX_MODE

    expected = {
        "var/spool/certdrop": 0o755,
        "var/spool/certdrop/inbox": INBOX_MODE,  # the drop-box, as certdrop itself makes it
        **{f"var/spool/certdrop/{name}": mode for name, mode in FOLDER_MODES.items()},
        "var/lib/certdrop": 0o700,
        "etc/apache2/certdrop": 0o755,
    }
    for rel, mode in expected.items():
        st = (root / rel).stat()
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, uid, gid), rel
