"""First-hour mistakes with vmcd and vmctl: each is one line on stderr and exit 2, at once.

Every case runs the installed console script as a new user would. Nothing here may start a
daemon that keeps running: a mistake that slips through hits the subprocess timeout and fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

from drivers.pty import PtyPair
from tests.e2e.console import UNPRIVILEGED

BIN = Path(sys.executable).parent
# Runs a command with this user's uid but none of root's powers over files (a user namespace
# with no mapping): what the systemd unit's unprivileged user meets, even when tests run as root.
MQTTS = ("--mqtt", "mqtts://127.0.0.1:8883", "--device-id", "m1")


def _run(command: str, *args: str, unprivileged: bool = False) -> subprocess.CompletedProcess[str]:
    prefix = UNPRIVILEGED if unprivileged else ()
    return subprocess.run(
        [*prefix, str(BIN / command), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def _vmcd(state: Path, *args: str, unprivileged: bool = False) -> subprocess.CompletedProcess[str]:
    argv = ("--mdb", "loop://startup", "--state-dir", str(state), *args)
    return _run("vmcd", *argv, unprivileged=unprivileged)


def _one_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The single stderr line of a refused start, checked for ``fragments``."""
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def _usage_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    """argparse's own refusal: usage lines, then one error line; exit 2, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in result.stderr.splitlines()[-1]


# -- the configuration file --------------------------------------------------------------------


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    config = tmp_path / "vmc.toml"
    config.write_bytes(b"[mdb]\nlevel = 3 # caf\xe9\n")
    _one_line(_vmcd(tmp_path / "state", "--config", str(config)), str(config), "UTF-8")
    _one_line(_run("vmctl", "dex", "read", "--config", str(config)), str(config), "UTF-8")


@pytest.mark.parametrize(("name", "reason"), [(".", "Is a directory"), ("no.toml", "No such")])
def test_config_path_that_is_a_directory_or_missing(tmp_path: Path, name: str, reason: str) -> None:
    config = tmp_path / name
    _one_line(_vmcd(tmp_path / "state", "--config", str(config)), "config file", reason)
    _one_line(_run("vmctl", "dex", "read", "--config", str(config)), "config file", reason)


# -- the state directory -----------------------------------------------------------------------


def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("")
    _one_line(_vmcd(state), "daemon.state_dir", str(state), "not a directory")


@pytest.mark.parametrize("where", ["file/state", "/proc/vmc-state"])
def test_state_dir_that_cannot_be_created(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("")
    state = tmp_path / where
    _one_line(_vmcd(state), "daemon.state_dir", "cannot create", str(state))


def test_state_dir_is_created_when_missing(tmp_path: Path) -> None:
    state = tmp_path / "new" / "state"
    config = _tls_config(tmp_path, ca_file=tmp_path / "ca.pem")  # refused after the state dir
    _one_line(_vmcd(state, *MQTTS, "--config", config), "cloud.ca_file")
    assert state.is_dir()


@pytest.mark.usefixtures("unprivileged")
def test_state_dir_that_is_not_writable(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o555)
    result = _vmcd(state, unprivileged=True)
    _one_line(result, "daemon.state_dir", "cannot write", str(state), "Permission denied")


@pytest.mark.usefixtures("unprivileged")
def test_journal_left_by_root_is_named(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    journal = state / "journal.sqlite3"
    journal.write_bytes(b"")
    journal.chmod(0o444)  # as a journal left by one `sudo vmcd` is to the vmc user
    _one_line(_vmcd(state, unprivileged=True), "daemon.state_dir", str(journal), "not writable")


# -- TLS files ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    other_key: Path
    encrypted_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A self-signed certificate (it is its own CA), its key, a stranger's key, an encrypted one."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("tls")
    files = TlsFiles(d / "cert.pem", d / "key.pem", d / "other.pem", d / "encrypted.pem")
    new_pair = [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
    ]
    for cert, key in ((files.cert, files.key), (d / "other-cert.pem", files.other_key)):
        _openssl(*new_pair, "-subj", "/CN=vmc test", "-keyout", str(key), "-out", str(cert))
    encrypt = ["pkey", "-aes256", "-passout", "pass:secret"]
    _openssl(*encrypt, "-in", str(files.key), "-out", str(files.encrypted_key))
    for path in (files.cert, files.key, files.other_key, files.encrypted_key):
        path.chmod(0o644)
    return files


def _tls_config(tmp_path: Path, **files: Path | str) -> str:
    config = tmp_path / "vmc.toml"
    config.write_text("[cloud]\n" + "".join(f'{k} = "{v}"\n' for k, v in files.items()))
    return str(config)


@pytest.mark.usefixtures("unprivileged")
def test_tls_file_that_is_not_readable(tmp_path: Path, tls: TlsFiles) -> None:
    ca = tmp_path / "ca.pem"
    shutil.copy(tls.cert, ca)
    ca.chmod(0o000)
    config = tmp_path / "vmc.toml"
    config.write_text(f'[cloud]\nca_file = "{ca}"\n')
    result = _vmcd(tmp_path / "state", *MQTTS, "--config", str(config), unprivileged=True)
    _one_line(result, "cloud.ca_file", str(ca), "Permission denied")


def test_missing_ca_file_is_named(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    config = _tls_config(tmp_path, ca_file=ca)
    line = _one_line(_vmcd(tmp_path / "state", *MQTTS, "--config", config), "cloud.ca_file")
    assert line.endswith(f"{ca}: No such file or directory")


def test_ca_file_that_is_a_directory(tmp_path: Path) -> None:
    config = _tls_config(tmp_path, ca_file=tmp_path)
    result = _vmcd(tmp_path / "state", *MQTTS, "--config", config)
    _one_line(result, "cloud.ca_file", str(tmp_path), "Is a directory")


def test_tls_files_that_are_not_pem(tmp_path: Path, tls: TlsFiles) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_bytes(os.urandom(300))
    cases = [
        ({"ca_file": junk}, ("cloud.ca_file", str(junk), "no PEM certificate")),
        ({"ca_file": tls.key}, ("cloud.ca_file", str(tls.key), "no PEM certificate")),
        (
            {"cert_file": tls.key, "key_file": tls.key},
            ("cloud.cert_file", str(tls.key), "no PEM certificate"),
        ),
        (
            {"cert_file": tls.cert, "key_file": junk},
            ("cloud.key_file", str(junk), "no PEM private key"),
        ),
        (
            {"cert_file": tls.cert, "key_file": tls.other_key},
            ("cloud.key_file", str(tls.other_key), f"not the key of {tls.cert}"),
        ),
        (
            {"cert_file": tls.cert, "key_file": tls.encrypted_key},
            ("cloud.key_file", "encrypted"),
        ),
        ({"cert_file": tls.cert}, ("cloud.cert_file and cloud.key_file go together",)),
    ]
    for files, fragments in cases:
        config = _tls_config(tmp_path, **{"ca_file": tls.cert, **files})
        _one_line(_vmcd(tmp_path / "state", *MQTTS, "--config", config), *fragments)


def test_tls_files_without_mqtts(tmp_path: Path, tls: TlsFiles) -> None:
    config = _tls_config(tmp_path, ca_file=tls.cert)
    mqtt = ("--mqtt", "mqtt://127.0.0.1:1883", "--device-id", "m1")
    result = _vmcd(tmp_path / "state", *mqtt, "--config", config)
    _one_line(result, "cloud.ca_file", "mqtts://")


# -- port URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "url", "fragment"),
    [
        ("--mdb", "uart:///dev/ttyS0?baud=abc", "baud='abc'"),
        ("--mdb", "uart:///dev/ttyS0?foo=1", "unknown query key 'foo'; allowed: baud, low_latency"),
        ("--mdb", "uart:///dev/ttyS0?low_latency=2", "low_latency='2'; allowed: 0 or 1"),
        ("--mdb", "pty:///dev/pts/0?baud=9600", "unknown query key 'baud'"),
        ("--mdb", "/dev/ttyAMA0", "write uart:///dev/ttyAMA0"),
        ("--dex", "uart:///dev/ttyUSB0?low_latency=1", "unknown query key 'low_latency'"),
        ("--dex", "uart:///dev/ttyUSB0?baud=9601", "baud='9601'; allowed: 1200,"),
        ("--dex", "loop://x", "allowed schemes: uart://, pty://"),
    ],
)
def test_vmcd_port_url_options(tmp_path: Path, flag: str, url: str, fragment: str) -> None:
    key = "mdb.port" if flag == "--mdb" else "dex.port"
    _one_line(_vmcd(tmp_path / "state", flag, url), key, fragment)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("uart:///dev/ttyS0?baud=abc", "baud='abc'; allowed: 1200,"),
        ("uart:///dev/ttyS0?foo=1", "unknown query key 'foo'; allowed: baud"),
        ("uart:///dev/ttyS0?low_latency=2", "unknown query key 'low_latency'"),
        ("uart:///dev/vmc-no-such-tty", "cannot open: No such file or directory"),
        ("pty:///dev/null", "not a terminal"),
    ],
)
def test_vmctl_dex_read_port(url: str, fragment: str) -> None:
    _one_line(_run("vmctl", "dex", "read", "--port", url), url, fragment)


@pytest.mark.parametrize("where", ["missing/audit.dex", "."])
def test_vmctl_dex_read_refuses_an_unwritable_out_before_reading(
    tmp_path: Path, where: str
) -> None:
    pair = PtyPair()  # nobody answers: a read would fail at its first handshake instead
    try:
        result = _run(
            "vmctl", "dex", "read", "--port", pair.device_url, "--out", str(tmp_path / where)
        )
    finally:
        pair.close()
    _one_line(result, "--out", str(tmp_path / where))


# -- flags -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["vmcd", "vmctl"])
def test_version(command: str) -> None:
    result = _run(command, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{command} {version('vmc')}\n"


def test_mdb_address_that_is_not_a_number(tmp_path: Path) -> None:
    _usage_error(_vmcd(tmp_path, "--mdb-address", "abc"), "'abc' is not a number; use 0x10 or 0x60")


def test_vmctl_without_a_command() -> None:
    _usage_error(_run("vmctl"), "required: COMMAND")


def test_mqtt_url_with_credentials_is_refused_without_echoing_them(tmp_path: Path) -> None:
    mqtt = ("--mqtt", "mqtt://m1:s3cret@127.0.0.1:1883", "--device-id", "m1")
    result = _vmcd(tmp_path / "state", *mqtt)
    line = _one_line(result, "cloud.url", "cloud.username")
    assert "s3cret" not in line


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--level", "7"), "mdb.level: 7"),
        (("--mqtt", "http://127.0.0.1"), "cloud.url"),
        (("--mqtt", "mqtt://127.0.0.1:99999", "--device-id", "m1"), "bad port"),
        (("--mqtt", "mqtt://127.0.0.1:1883/vmc", "--device-id", "m1"), "just mqtt[s]://HOST"),
        (("--mqtt", "mqtt://127.0.0.1:1883", "--device-id", "a/b"), "cloud.device_id"),
        (("--mqtt", "mqtt://127.0.0.1:1883"), "--device-id"),
        (("--log-level", "DEBUG"), "daemon.log_level"),
        (("--state-dir", ""), "daemon.state_dir"),
    ],
)
def test_vmcd_bad_values(tmp_path: Path, args: tuple[str, ...], fragment: str) -> None:
    _one_line(_vmcd(tmp_path / "state", *args), fragment)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[mdb]\ncolour = 1\n", "mdb.colour: unknown key"),
        ('[mdb]\nlevel = "3"\n', "mdb.level: '3' is not allowed; expected int"),
        ('[dex]\nschedule = "02:00"\n', "dex.schedule"),
        ('[cloud]\nurl = "mqtt://h"\ndevice_id = "m1"\nkeepalive = 3.5\n', "cloud.keepalive"),
        ('[cloud]\nurl = "mqtt://h"\ndevice_id = "m1"\nmqtt_version = "3"\n', "cloud.mqtt_version"),
    ],
)
def test_vmcd_bad_config_values(tmp_path: Path, text: str, fragment: str) -> None:
    config = tmp_path / "vmc.toml"
    config.write_text(text)
    _one_line(_vmcd(tmp_path / "state", "--config", str(config)), fragment)


@pytest.mark.parametrize(
    ("name", "fragment"), [(".", "Is a directory"), ("no.dex", "No such"), ("bin", "no EVA-DTS")]
)
def test_vmctl_dex_parse_of_what_is_no_audit(tmp_path: Path, name: str, fragment: str) -> None:
    (tmp_path / "bin").write_bytes(bytes(range(256)) * 4)
    path = tmp_path / name
    _one_line(_run("vmctl", "dex", "parse", str(path)), str(path), fragment)


# -- the Executive bus -------------------------------------------------------------------------


def _vmcd_exe(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run("vmcd", "--exe", "pty:///dev/pts/0", "--state-dir", str(state), *args)


def test_exe_and_mdb_together_are_one_line(tmp_path: Path) -> None:
    result = _vmcd(tmp_path / "state", "--exe", "pty:///dev/pts/0")
    _one_line(result, "mdb.port and exe.port", "one payment bus", "--mdb or --exe")


def test_exe_no_payment_bus_is_one_line(tmp_path: Path) -> None:
    _one_line(_run("vmcd", "--state-dir", str(tmp_path / "state")), "no payment bus", "--exe URL")


@pytest.mark.parametrize(
    ("args", "text", "fragment"),
    [
        ((), '[exe]\nmode_bit = "high"\n', "exe.mode_bit: 'high' is not allowed"),
        ((), "[exe]\nreply_timeout = 0\n", "exe.reply_timeout: must be a positive"),
        ((), "[exe]\napproval_timeout = 0.5\n", "exe.approval_timeout: 0.5 leaves the cloud"),
        ((), "[exe]\npnak_retries = 1.5\n", "exe.pnak_retries: 1.5 is not allowed"),
        ((), "[exe]\ncolour = 1\n", "exe.colour: unknown key"),
        (("--exe", "uart:///dev/ttyS0?baud=9601"), "", "exe.port: uart:///dev/ttyS0?baud=9601"),
    ],
)
def test_exe_bad_values(tmp_path: Path, args: tuple[str, ...], text: str, fragment: str) -> None:
    config = tmp_path / "vmc.toml"
    config.write_text(text)
    _one_line(_vmcd_exe(tmp_path / "state", "--config", str(config), *args), fragment)


def _processes_naming(fragment: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if fragment in text:
            found.append(text)
    return found


@pytest.mark.parametrize("kind", ["directory", "not_a_database"])
def test_journal_that_cannot_be_opened_is_one_line_and_leaves_no_bus_process(
    tmp_path: Path, kind: str
) -> None:
    """Found only once the daemon runs, after its bus process was started early: still one
    line, and the bus process does not outlive the refusal."""
    state = tmp_path / "state"
    state.mkdir()
    journal = state / "journal.sqlite3"
    if kind == "directory":
        journal.mkdir()
    else:
        journal.write_bytes(b"no journal here " * 64)
    port = f"loop://early-{tmp_path.name}"
    result = _run("vmcd", "--mdb", port, "--state-dir", str(state))
    _one_line(result, "daemon.state_dir", str(journal), "move it away")
    assert _processes_naming(port) == []
