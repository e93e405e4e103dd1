"""scripts/install-pi for real: as root, into a system root of its own, then what it installed runs.

The script runs as sudo runs it (root's PATH, none of this session's environment) with
``--root``. The fast tests use a minimal fake root: a few files of its own (passwd, group,
resolv.conf, the CA bundle) and the host's /usr bind-mounted read-only in a private mount
namespace, so that the root's python3 (the host's) builds /opt/vmc through chroot, as on a
Pi. The slow test installs into a fresh Debian made by debootstrap, cached as a tarball in
pytest's cache directory (``.pytest_cache/d/vmc-debian-root/``, see README) so that only the
first run builds it. pip fetches vmc's dependencies from the package index in both, as on a Pi.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.e2e.console import UNPRIVILEGED

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install-pi"
SYSTEMD = REPO / "systemd"
VERSION = version("vmc")
# What sudo gives the script: root's PATH and nothing of this session's environment (pip
# settings, a pyenv python), which would leak into the root through chroot.
SUDO_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}
TOOLS = (
    "unshare",
    "chroot",
    "systemctl",
    "systemd-sysusers",
    "systemd-tmpfiles",
    "systemd-analyze",
)
# The fake root's /usr is the host's, read-only; its /usr/local is a directory of its own, so
# that the link to vmctl lands in the root, not on the host.
BORROW_USR = (
    'mount --bind /usr "$0/usr" && mount -o remount,bind,ro "$0/usr"'
    ' && mount --bind "$0/.usr-local" "$0/usr/local" && exec "$@"'
)
MARK_BEGIN = "# >>> vmc: the PL011 UART on GPIO14/15 for the MDB bus (scripts/install-pi)"
# Raspberry Pi OS Bookworm's boot files, shortened: the last section is for another model and
# the last line has no newline.
CONFIG_TXT = (
    "# For more options\ndtparam=audio=on\n\n[cm4]\notg_mode=1\n\n[all]\n[cm5]\ndtoverlay=dwc2"
)
CMDLINE_TXT = (
    "console=serial0,115200 console=tty1 root=PARTUUID=1f2e3d4c-02 rootfstype=ext4"
    " fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n"
)
HCIUART = (
    "[Unit]\nDescription=Bluetooth over the UART\n[Service]\nExecStart=/bin/true\n"
    "[Install]\nWantedBy=multi-user.target\n"
)
# The Debian of the slow test: Raspberry Pi OS Bookworm's base, with what its Lite image has.
SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates", "systemd")


@dataclass(frozen=True)
class Root:
    """A system root the script installs into; ``prefix`` runs a command where it is whole."""

    path: Path
    prefix: tuple[str, ...] = ()
    usr_local: str = "usr/local"  # where the root's /usr/local is on disk

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, *argv],
            capture_output=True,
            text=True,
            env=SUDO_ENV,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )

    def install_pi(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(str(SCRIPT), "--root", str(self.path), *args)

    def chroot(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.run("chroot", str(self.path), *argv)

    def verify_unit(self) -> subprocess.CompletedProcess[str]:
        unit = self.path / "etc/systemd/system/vmcd.service"
        return self.run("systemd-analyze", f"--root={self.path}", "verify", str(unit))


def _needs_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("install-pi installs as root: run the tests as root")
    missing = [tool for tool in TOOLS if shutil.which(tool, path=SUDO_ENV["PATH"]) is None]
    if missing:
        pytest.skip(f"install-pi's test needs {', '.join(missing)}")


def _fake_root(path: Path) -> Root:
    """A root with nothing but what a Debian has before vmc, /usr borrowed from the host."""
    _needs_root_and_tools()
    if not all(Path("/", name).is_symlink() for name in ("bin", "sbin", "lib")):
        pytest.skip("the fake root borrows /usr: it needs a host with /bin, /sbin, /lib in /usr")
    probe = subprocess.run(
        ["/usr/bin/python3", "-c", "import ensurepip, venv"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip("the fake root borrows /usr/bin/python3: apt-get install python3-venv")
    for directory in ("usr", ".usr-local", "etc/ssl/certs", "root", "tmp", "var/tmp"):
        (path / directory).mkdir(parents=True)
    for name in ("tmp", "var/tmp"):
        (path / name).chmod(0o1777)
    for name in ("bin", "sbin", "lib", "lib64"):
        if Path("/", name).is_symlink():
            (path / name).symlink_to(os.readlink(Path("/", name)))
    (path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (path / "etc/group").write_text("root:x:0:\ndialout:x:20:\n")
    _network_of_the_host(path)
    borrow = ("unshare", "--mount", "--propagation", "private", "sh", "-c", BORROW_USR, str(path))
    return Root(path, borrow, ".usr-local")


def _network_of_the_host(path: Path) -> None:
    """The host's resolver, and the CAs it trusts (a TLS-inspecting proxy's, where there is one).

    Each replaces the root's file, never what a link there points at (the host's own, outside).
    """
    for name in ("etc/resolv.conf", "etc/ssl/certs/ca-certificates.crt"):
        host = Path("/", name)
        if host.exists():
            copy = path / name
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.unlink(missing_ok=True)
            shutil.copyfile(host, copy)


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry of the root but the borrowed /usr and /dev: what a run could have changed.

    Directories by mode and owner only: the script's scratch directory comes and goes in /var/tmp.
    """
    entries: dict[str, tuple[object, ...]] = {}
    for directory, dirnames, filenames in os.walk(root):
        if Path(directory) == root:
            dirnames[:] = [d for d in dirnames if d not in ("usr", "dev", "proc", "sys")]
        for name in [*dirnames, *filenames]:
            path = Path(directory, name)
            info = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                entries[key] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                entries[key] = ("dir", info.st_mode, info.st_uid, info.st_gid)
            else:
                entries[key] = (
                    "file",
                    info.st_mode,
                    info.st_uid,
                    info.st_gid,
                    info.st_size,
                    info.st_mtime_ns,
                )
    return entries


def _ids(root: Path, database: str, name: str) -> list[str]:
    for line in (root / "etc" / database).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    raise AssertionError(f"no {name} in {database}")


def _said(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return [line.removeprefix("install-pi: ") for line in result.stdout.splitlines()]


def _one_line(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    """A refusal: one line on stderr naming the mistake, exit 2, nothing on stdout."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert fragment in result.stderr
    assert result.stderr.startswith("install-pi: ")


def _check_first_install(root: Root, result: subprocess.CompletedProcess[str]) -> None:
    said = _said(result)
    assert f"installed vmcd {VERSION} into /opt/vmc" in said
    assert "created the user and group vmc (in dialout)" in said
    assert "enabled vmcd.service (it starts at boot; now: systemctl start vmcd)" in said
    assert said[-1].startswith(f"done (vmcd {VERSION}). Next: edit /etc/vmc/vmc.toml")
    path = root.path
    user = _ids(path, "passwd", "vmc")
    group = _ids(path, "group", "vmc")
    uid, gid = int(user[2]), int(group[2])
    assert user[3] == group[2]
    assert user[5:] == ["/var/lib/vmc", "/usr/sbin/nologin"]
    assert "vmc" in _ids(path, "group", "dialout")[3].split(",")
    for name, mode, owner in (
        ("etc/vmc", 0o750, (0, gid)),
        ("var/lib/vmc", 0o750, (uid, gid)),
        ("etc/vmc/vmc.toml", 0o640, (0, gid)),
        ("etc/vmc/vmc.example.toml", 0o644, (0, 0)),
        ("etc/systemd/system/vmcd.service", 0o644, (0, 0)),
        ("etc/sysusers.d/vmc.conf", 0o644, (0, 0)),
        ("etc/tmpfiles.d/vmc.conf", 0o644, (0, 0)),
    ):
        info = (path / name).stat()
        assert (stat.S_IMODE(info.st_mode), (info.st_uid, info.st_gid)) == (mode, owner), name
    for installed, shipped in (
        ("etc/vmc/vmc.toml", "vmc.example.toml"),
        ("etc/vmc/vmc.example.toml", "vmc.example.toml"),
        ("etc/systemd/system/vmcd.service", "vmcd.service"),
        ("etc/sysusers.d/vmc.conf", "vmc-sysusers.conf"),
        ("etc/tmpfiles.d/vmc.conf", "vmc-tmpfiles.conf"),
    ):
        assert (path / installed).read_bytes() == (SYSTEMD / shipped).read_bytes(), installed
    wants = path / "etc/systemd/system/multi-user.target.wants/vmcd.service"
    assert os.readlink(wants) == "/etc/systemd/system/vmcd.service"
    assert os.readlink(path / root.usr_local / "bin/vmctl") == "/opt/vmc/bin/vmctl"
    assert not list((path / "var/tmp").iterdir()), "install-pi left its scratch copy behind"
    # What it installed runs there: the daemon, the technician's command on PATH, the unit.
    ran = root.chroot("/opt/vmc/bin/vmcd", "--version")
    assert (ran.returncode, ran.stdout.strip()) == (0, f"vmcd {VERSION}"), ran.stderr
    ran = root.chroot("vmctl", "--help")
    assert ran.returncode == 0, ran.stderr
    verified = root.verify_unit()
    assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")


def _check_second_run_changes_nothing(root: Root, *args: str) -> None:
    before = _snapshot(root.path)
    said = _said(root.install_pi(*args))
    assert said == [
        f"nothing to change: vmcd {VERSION} is installed in {root.path}/opt/vmc and vmcd.service"
        " is enabled"
    ]
    assert _snapshot(root.path) == before


def _check_uninstall(root: Root) -> None:
    path = root.path
    (path / "var/lib/vmc/journal.sqlite3").write_bytes(b"the journal")
    said = _said(root.install_pi("--uninstall"))
    assert said[:-1] == [
        "removed /etc/systemd/system/vmcd.service",
        "removed /usr/local/bin/vmctl",
        "removed /opt/vmc",
        "removed /etc/vmc/vmc.example.toml",
        "removed /etc/sysusers.d/vmc.conf",
        "removed /etc/tmpfiles.d/vmc.conf",
    ]
    assert said[-1].startswith("kept /etc/vmc (the configuration), /var/lib/vmc (the journal)")
    assert not (path / "etc/systemd/system/multi-user.target.wants/vmcd.service").is_symlink()
    assert not (path / "opt/vmc").exists()
    # What is the operator's stays: the configuration, the journal, the user.
    assert (path / "etc/vmc/vmc.toml").exists()
    assert (path / "var/lib/vmc/journal.sqlite3").read_bytes() == b"the journal"
    assert _ids(path, "passwd", "vmc")
    said = _said(root.install_pi("--uninstall"))
    assert said[0] == f"nothing to remove: vmc is not installed in {path}"


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Root:
    """A fake root with vmc installed once, checked as a first install."""
    root = _fake_root(tmp_path_factory.mktemp("fake-root"))
    _check_first_install(root, root.install_pi())
    return root


def test_a_first_install_into_a_fake_root_runs_there(fake_root: Root) -> None:
    """The checks are the fixture's: the layout, vmcd and vmctl in the root, systemd-analyze."""


def test_a_second_run_changes_nothing_and_keeps_the_operators_config(fake_root: Root) -> None:
    config = fake_root.path / "etc/vmc/vmc.toml"
    edited = config.read_text().replace('device_id = "machine-0001"', 'device_id = "m-42"')
    config.write_text(edited)
    _check_second_run_changes_nothing(fake_root)
    assert config.read_text() == edited


def test_enable_uart_frees_the_uart_once(fake_root: Root) -> None:
    path = fake_root.path
    # No Raspberry Pi OS boot files: it says so and changes nothing else.
    result = fake_root.install_pi("--enable-uart")
    assert _said(result) == [
        f"nothing to change: vmcd {VERSION} is installed in {path}/opt/vmc and vmcd.service"
        " is enabled"
    ]
    assert result.stderr == (
        f"install-pi: --enable-uart: no config.txt and cmdline.txt in {path}/boot/firmware or"
        f" {path}/boot (not Raspberry Pi OS?): the UART and the serial console are left alone\n"
    )
    boot = path / "boot/firmware"
    boot.mkdir(parents=True)
    (boot / "config.txt").write_text(CONFIG_TXT)
    (boot / "cmdline.txt").write_text(CMDLINE_TXT)
    (path / "etc/systemd/system/hciuart.service").write_text(HCIUART)
    enabled = fake_root.run("systemctl", f"--root={path}", "enable", "hciuart.service")
    assert enabled.returncode == 0, enabled.stderr
    try:
        said = _said(fake_root.install_pi("--enable-uart"))
        assert said == [
            "/boot/firmware/config.txt: enable_uart=1, dtoverlay=disable-bt (after a reboot)",
            "/boot/firmware/cmdline.txt: the serial console is off (after a reboot)",
            "disabled hciuart.service (Bluetooth has no UART with disable-bt)",
            f"done (vmcd {VERSION}). Next: reboot for the UART, edit /etc/vmc/vmc.toml, then"
            " systemctl start vmcd (docs/raspberry-pi.md)",
        ]
        block = f"{MARK_BEGIN}\n[all]\nenable_uart=1\ndtoverlay=disable-bt\n# <<< vmc\n"
        assert (boot / "config.txt").read_text() == CONFIG_TXT + "\n" + block
        assert (boot / "cmdline.txt").read_text() == CMDLINE_TXT.removeprefix(
            "console=serial0,115200 "
        )
        assert (boot / "config.txt.vmc-orig").read_text() == CONFIG_TXT
        assert (boot / "cmdline.txt.vmc-orig").read_text() == CMDLINE_TXT
        assert not (path / "etc/systemd/system/multi-user.target.wants/hciuart.service").exists()
        _check_second_run_changes_nothing(fake_root, "--enable-uart")
        # Bluetooth kept on the mini-UART instead: vmc's one block is replaced, not added to.
        said = _said(fake_root.install_pi("--enable-uart", "--keep-bluetooth"))
        assert said[0] == (
            "/boot/firmware/config.txt: enable_uart=1, dtoverlay=miniuart-bt (after a reboot)"
        )
        assert (boot / "config.txt").read_text() == CONFIG_TXT + "\n" + block.replace(
            "disable-bt", "miniuart-bt"
        )
        assert (boot / "config.txt.vmc-orig").read_text() == CONFIG_TXT
    finally:
        shutil.rmtree(path / "boot")


@pytest.mark.slow  # three installs in a row; the default run has the first install
def test_uninstall_keeps_the_config_and_the_journal_and_a_reinstall_keeps_the_config(
    tmp_path: Path,
) -> None:
    root = _fake_root(tmp_path / "root")
    _check_first_install(root, root.install_pi())
    _check_uninstall(root)
    config = (root.path / "etc/vmc/vmc.toml").read_text()
    said = _said(root.install_pi())
    assert f"installed vmcd {VERSION} into /opt/vmc" in said
    assert not any("vmc.toml from the example" in line for line in said)
    assert (root.path / "etc/vmc/vmc.toml").read_text() == config


def test_the_shipped_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """In a root of its own with the host's systemd units and an /opt/vmc/bin/vmcd to run."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    units = next(
        (
            d
            for d in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
            if (d / "multi-user.target").exists()
        ),
        None,
    )
    if units is None:
        pytest.skip("no systemd unit directory with multi-user.target on this host")
    shutil.copytree(units, tmp_path / "usr/lib/systemd/system", symlinks=True)
    vmcd = tmp_path / "opt/vmc/bin/vmcd"
    vmcd.parent.mkdir(parents=True)
    vmcd.write_text("#!/bin/sh\n")
    vmcd.chmod(0o755)
    unit = tmp_path / "etc/systemd/system/vmcd.service"
    unit.parent.mkdir(parents=True)
    shutil.copyfile(SYSTEMD / "vmcd.service", unit)
    verified = Root(tmp_path).verify_unit()
    assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--bogus"], "unknown option --bogus (see --help)"),
        (["--keep-bluetooth"], "--keep-bluetooth goes with --enable-uart"),
        (["--uninstall", "--enable-uart"], "--uninstall does not go with --enable-uart"),
        (["--root"], "--root needs a directory"),
        (["--root="], "--root needs a directory"),
    ],
)
def test_a_wrong_option_is_one_line(args: list[str], fragment: str) -> None:
    _one_line(Root(Path("/")).run(str(SCRIPT), *args), fragment)


def test_it_must_run_as_root() -> None:
    result = Root(Path("/"), UNPRIVILEGED).run(str(SCRIPT), "--enable-uart")
    _one_line(result, f"must run as root: sudo {SCRIPT} --enable-uart")


def test_a_root_that_is_not_there_or_has_no_python_is_refused(tmp_path: Path) -> None:
    _needs_root_and_tools()
    _one_line(Root(tmp_path).install_pi(), "no python3 in ")
    assert not list(tmp_path.iterdir()), "a refused install wrote into the root"
    _one_line(Root(tmp_path / "gone").install_pi(), f"--root {tmp_path}/gone: no such directory")


@pytest.mark.parametrize(
    ("verdict", "fragment"),
    [
        ("novenv", "cannot make a venv: apt install python3-venv"),
        ("old 3.9", "is 3.9; vmc needs 3.11 or newer"),
    ],
)
def test_a_python_that_cannot_build_the_venv_is_refused_before_any_change(
    tmp_path: Path, verdict: str, fragment: str
) -> None:
    root = _fake_root(tmp_path / "root")
    # A python3 earlier on root's PATH than the borrowed one, answering the script's question.
    stub = root.path / root.usr_local / "bin/python3"
    stub.parent.mkdir(parents=True)
    stub.write_text(f"#!/bin/sh\necho '{verdict}'\n")
    stub.chmod(0o755)
    before = _snapshot(root.path)
    _one_line(root.install_pi(), fragment)
    assert _snapshot(root.path) == before


def test_uninstall_leaves_an_opt_vmc_that_is_not_a_venv_alone(tmp_path: Path) -> None:
    _needs_root_and_tools()
    (tmp_path / "opt/vmc").mkdir(parents=True)
    _one_line(Root(tmp_path).install_pi("--uninstall"), "is not a virtual environment")
    assert (tmp_path / "opt/vmc").is_dir()


def test_help_names_every_option() -> None:
    result = Root(Path("/")).run(str(SCRIPT), "--help")
    assert result.returncode == 0
    assert result.stderr == ""
    for option in ("--enable-uart", "--keep-bluetooth", "--root DIR", "--uninstall", "--help"):
        assert option in result.stdout


def _debian_tarball(cache: Path) -> Path:
    """A fresh Debian root as a tarball: made once by debootstrap, then taken from the cache."""
    key = hashlib.sha256(" ".join((SUITE, *DEBIAN_PACKAGES)).encode()).hexdigest()[:12]
    tarball = cache / f"{SUITE}-minbase-{key}.tar"
    if tarball.exists():
        return tarball
    if shutil.which("debootstrap", path=SUDO_ENV["PATH"]) is None:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
        installed = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "debootstrap"], capture_output=True, check=False
        )
        if installed.returncode != 0:
            pytest.skip("debootstrap is missing and apt-get could not install it")
    build = cache / "build"
    shutil.rmtree(build, ignore_errors=True)
    made = subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(DEBIAN_PACKAGES)}",
            SUITE,
            str(build),
        ],
        capture_output=True,
        text=True,
        env=SUDO_ENV,
        timeout=900,
        check=False,
    )
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    partial = tarball.with_suffix(".partial")
    subprocess.run(
        ["tar", "-C", str(build), "--numeric-owner", "-cf", str(partial), "."], check=True
    )
    partial.rename(tarball)
    shutil.rmtree(build)
    return tarball


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_install_into_a_fresh_debian_root(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    _needs_root_and_tools()
    # pytest's cache directory keeps the root between runs; without it (-p no:cacheprovider)
    # every run makes its own.
    cache = getattr(request.config, "cache", None)
    tarball = _debian_tarball(cache.mkdir("vmc-debian-root") if cache else tmp_path)
    path = tmp_path / "debian"
    path.mkdir()
    subprocess.run(["tar", "-C", str(path), "--numeric-owner", "-xpf", str(tarball)], check=True)
    _network_of_the_host(path)
    root = Root(path)
    # Debian is not Raspberry Pi OS: the UART is left alone, the rest installed.
    result = root.install_pi("--enable-uart")
    _check_first_install(root, result)
    assert "the UART and the serial console are left alone" in result.stderr
    ran = root.chroot("id", "-nG", "vmc")
    assert sorted(ran.stdout.split()) == ["dialout", "vmc"], ran.stderr
    _check_second_run_changes_nothing(root)
    _check_uninstall(root)
    shutil.rmtree(path)  # 300 MB: kept only when the test fails, to look into
